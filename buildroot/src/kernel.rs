//! The kernel package: vmlinuz, config, and modules chosen by name with
//! their dependencies (read from each module's `.modinfo`, because Debian's
//! package ships no `modules.dep`; depmod runs at install time).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use herd_fstree::{Node, Tree};

use crate::deb::{Archive, Entry};
use crate::{elf, Deb, Error};

/// One module file.
#[derive(Debug, Clone)]
pub struct ModuleFile {
    /// Canonical name (`-` written as `_`).
    pub name: String,
    /// Path below the modules directory, e.g. `kernel/drivers/md/dm-mod.ko`.
    pub path: String,
    /// The module.
    pub data: Arc<[u8]>,
    /// Canonical names of the modules it needs loaded first (built-in ones
    /// left out).
    pub deps: Vec<String>,
}

/// Modules in load order (dependencies first).
#[derive(Debug, Clone, Default)]
pub struct ModuleSet {
    /// Modules to load, in order.
    pub load_order: Vec<ModuleFile>,
    /// Requested names that are built into the kernel.
    pub builtin: Vec<String>,
}

/// A kernel package's parts.
pub struct KernelPackage {
    /// Kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub version: String,
    /// The kernel image.
    pub vmlinuz: Arc<[u8]>,
    /// The kernel's build configuration.
    pub config: String,
    /// Module name → (path below the modules directory, bytes in `tar`).
    modules: BTreeMap<String, (String, std::ops::Range<usize>)>,
    tar: Arc<Archive>,
    builtin: BTreeSet<String>,
}

fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

impl KernelPackage {
    /// Reads a `linux-image-*` package.
    pub fn from_deb(deb: &Deb) -> Result<Self, Error> {
        let entries = deb.entries()?;
        let vmlinuz = entries.iter().find_map(|(p, e)| match e {
            Entry::File { data, .. } if p.starts_with("boot/vmlinuz-") => Some((p, *data)),
            _ => None,
        });
        let (vpath, vmlinuz) = vmlinuz.ok_or_else(|| {
            Error::Kernel(format!("{} has no boot/vmlinuz-*", deb.path().display()))
        })?;
        let version = vpath.trim_start_matches("boot/vmlinuz-").to_string();
        let file = |want: &str| {
            entries.iter().find_map(|(p, e)| match e {
                Entry::File { data, .. } if p == want => Some(*data),
                _ => None,
            })
        };
        let config =
            String::from_utf8_lossy(file(&format!("boot/config-{version}")).unwrap_or_default())
                .into_owned();
        let mod_dir = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|d| format!("{d}/{version}/"))
            .find(|d| entries.iter().any(|(p, _)| p.starts_with(d.as_str())))
            .ok_or_else(|| Error::Kernel(format!("no modules directory for {version}")))?;
        let builtin = file(&format!("{mod_dir}modules.builtin"))
            .map(|b| {
                String::from_utf8_lossy(b)
                    .lines()
                    .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko").map(canonical))
                    .collect()
            })
            .unwrap_or_default();
        let tar = deb.shared_tar();
        let base_ptr = tar.as_ptr() as usize;
        let mut modules = BTreeMap::new();
        for (p, e) in &entries {
            if let (Some(rel), Entry::File { data, .. }) = (p.strip_prefix(mod_dir.as_str()), e) {
                if let Some(base) = rel.rsplit('/').next().and_then(|b| b.strip_suffix(".ko")) {
                    let name = canonical(base);
                    // Entry data are slices of the package's archive.
                    let start = data.as_ptr() as usize - base_ptr;
                    modules.insert(name, (rel.to_string(), start..start + data.len()));
                }
            }
        }
        Ok(KernelPackage {
            version,
            vmlinuz: Arc::from(vmlinuz),
            config,
            modules,
            tar,
            builtin,
        })
    }

    fn depends(&self, path: &str, data: &[u8]) -> Result<Vec<String>, Error> {
        let info = elf::modinfo(data)
            .ok_or_else(|| Error::Kernel(format!("{path} has no readable .modinfo section")))?;
        Ok(elf::modinfo_value(info, "depends")
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(canonical)
            .collect())
    }

    /// The named modules and everything they depend on, dependencies
    /// first; names built into the kernel are reported, not loaded.
    pub fn resolve(&self, names: &[String]) -> Result<ModuleSet, Error> {
        let mut set = ModuleSet::default();
        let mut done = BTreeSet::new();
        for n in names {
            let c = canonical(n);
            if self.builtin.contains(&c) && !self.modules.contains_key(&c) {
                set.builtin.push(n.clone());
                continue;
            }
            if !self.modules.contains_key(&c) {
                let close = self
                    .modules
                    .keys()
                    .map(|k| (edit_distance(k, &c), k))
                    .filter(|(d, _)| *d <= 2)
                    .min();
                return Err(Error::UnknownModule {
                    name: n.clone(),
                    version: self.version.clone(),
                    hint: close
                        .map(|(_, k)| format!("; did you mean {k:?}?"))
                        .unwrap_or_default(),
                });
            }
            self.visit(&c, &mut done, &mut Vec::new(), &mut set)?;
        }
        Ok(set)
    }

    fn visit(
        &self,
        name: &str,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
        set: &mut ModuleSet,
    ) -> Result<(), Error> {
        if done.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            return Err(Error::Kernel(format!(
                "module dependency cycle: {} -> {name}",
                path.join(" -> ")
            )));
        }
        let Some((mpath, range)) = self.modules.get(name) else {
            if self.builtin.contains(name) {
                return Ok(());
            }
            return Err(Error::Kernel(format!(
                "module {} depends on {name}, which the package lacks",
                path.join(" -> ")
            )));
        };
        path.push(name.to_string());
        let data = &self.tar[range.clone()];
        let mut deps = Vec::new();
        for d in self.depends(mpath, data)? {
            self.visit(&d, done, path, set)?;
            if self.modules.contains_key(&d) {
                deps.push(d);
            }
        }
        path.pop();
        done.insert(name.to_string());
        set.load_order.push(ModuleFile {
            name: name.to_string(),
            path: mpath.clone(),
            data: Arc::from(data),
            deps,
        });
        Ok(())
    }
}

impl ModuleSet {
    /// Adds the module files under `modules_root` (e.g. `lib/modules/<kver>`).
    pub fn add_to(&self, tree: &mut Tree, modules_root: &str) -> Result<(), Error> {
        for m in &self.load_order {
            tree.insert(
                &format!("{}/{}", modules_root.trim_end_matches('/'), m.path),
                Node::File {
                    meta: herd_fstree::Meta::new(0o644),
                    data: m.data.clone(),
                },
            )?;
        }
        Ok(())
    }

    /// The modules in independent groups: no module of a group needs one
    /// of another group, so groups may load side by side. Each group keeps
    /// the load order (dependencies first); groups come in the order of
    /// their first module.
    pub fn groups(&self) -> Vec<Vec<&ModuleFile>> {
        // Union-find over positions in the load order.
        let n = self.load_order.len();
        let mut parent: Vec<usize> = (0..n).collect();
        fn find(parent: &mut [usize], mut i: usize) -> usize {
            while parent[i] != i {
                parent[i] = parent[parent[i]];
                i = parent[i];
            }
            i
        }
        let at: BTreeMap<&str, usize> = self
            .load_order
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.as_str(), i))
            .collect();
        for (i, m) in self.load_order.iter().enumerate() {
            for d in &m.deps {
                if let Some(&j) = at.get(d.as_str()) {
                    let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                    parent[a.max(b)] = a.min(b);
                }
            }
        }
        let mut groups: Vec<(usize, Vec<&ModuleFile>)> = Vec::new();
        for (i, m) in self.load_order.iter().enumerate() {
            let root = find(&mut parent, i);
            match groups.iter_mut().find(|(r, _)| *r == root) {
                Some((_, g)) => g.push(m),
                None => groups.push((root, vec![m])),
            }
        }
        groups.into_iter().map(|(_, g)| g).collect()
    }

    /// One module path per line, in load order, each prefixed by `prefix`
    /// (e.g. `/lib/modules/<kver>/`); an empty line separates independent
    /// groups ([`ModuleSet::groups`]), which herd-init loads side by side.
    pub fn load_list(&self, prefix: &str) -> String {
        self.groups()
            .iter()
            .map(|g| {
                g.iter()
                    .map(|m| format!("{prefix}{}\n", m.path))
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn distance() {
        assert_eq!(super::edit_distance("dm_verity", "dm_verty"), 1);
        assert_eq!(super::edit_distance("abc", "abc"), 0);
    }
}
