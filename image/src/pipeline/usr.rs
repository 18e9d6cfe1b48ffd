//! `/usr` and the initramfs as in-memory trees: herd's binaries, the kernel
//! modules with their load lists, os-release and herd's configuration, the
//! files taken from packages and the image's own files.

use std::path::Path;

use anyhow::{bail, Context, Result};

use herd_fstree::{Meta, Node, Tree};

use super::inputs::Inputs;
use super::os_release;
use crate::config::{human_bytes, ImageConfig};
use crate::progress::Progress;

/// The `/usr` tree, every mtime set to `mtime`.
pub(super) fn assemble(
    cfg: &ImageConfig,
    image_toml: &Path,
    i: &Inputs,
    mtime: u32,
    progress: &Progress,
) -> Result<Tree> {
    let step = progress.step("assembling /usr");
    let name = cfg.image.name.as_str();
    let mut usr = Tree::new();
    for (bin, data) in &i.bins {
        usr.insert_file(&format!("bin/{bin}"), data.clone(), 0o755)?;
    }
    let modules_dir = format!("lib/modules/{}", i.boot.kernel.version);
    let usr_mods = &i.boot.usr_modules;
    usr_mods.add_to(&mut usr, &modules_dir)?;
    usr.insert_file(
        &format!("{modules_dir}/herd-modules"),
        usr_mods
            .load_list(&format!("/usr/{modules_dir}/"))
            .into_bytes(),
        0o644,
    )?;
    usr.insert_file(
        "lib/os-release",
        os_release(name, &cfg.image.version).into_bytes(),
        0o644,
    )?;
    usr.insert_file(
        "lib/herd/init.toml",
        i.init_toml.clone().into_bytes(),
        0o644,
    )?;
    if let Some((config, root)) = &i.update {
        usr.insert_file("lib/herd/update.toml", config.clone().into_bytes(), 0o644)?;
        usr.insert_file("lib/herd/update-root.json", root.clone(), 0o644)?;
    }
    usr.insert_file(
        "share/factory/etc/hostname",
        format!("{name}\n").into_bytes(),
        0o644,
    )?;
    usr.insert_symlink("share/factory/etc/os-release", "../usr/lib/os-release")?;
    for (n, pkg) in cfg.usr.package.iter().enumerate() {
        let (deb, path) = i.packages.usr_package(n);
        let files = &pkg.files;
        let tree = deb.unpack(&|p: &str| files.contains_key(p))?;
        for (from, to) in files {
            match tree.get(from) {
                Some(node) => usr.insert(to, node.clone())?,
                None => bail!(
                    "package {} has no file {from:?} (usr.package files): list it with `dpkg-deb -c {}`",
                    pkg.name,
                    path.display()
                ),
            }
        }
    }
    for f in &cfg.usr.file {
        let bytes = match (&f.content, &f.source) {
            (Some(c), None) => c.clone().into_bytes(),
            (None, Some(src)) => {
                let src = image_toml.parent().unwrap_or(Path::new(".")).join(src);
                std::fs::read(&src).with_context(|| {
                    format!(
                        "[[usr.file]] {}: cannot read its source {}",
                        f.path,
                        src.display()
                    )
                })?
            }
            _ => bail!(
                "{}: [[usr.file]] {} needs exactly one of content = \"...\" or source = \"path\"",
                image_toml.display(),
                f.path
            ),
        };
        usr.insert_file(&f.path, bytes, f.mode)?;
    }
    usr.set_mtime_all(mtime);
    step.done(&format!(
        "{} entries, {}",
        usr.walk().len(),
        human_bytes(usr.file_bytes())
    ));
    Ok(usr)
}

/// The initramfs: /init (herd-init), /dev/console, the modules to reach
/// /usr and their load list.
pub(super) fn initramfs(i: &Inputs, mtime: u32, progress: &Progress) -> Result<Vec<u8>> {
    let step = progress.step("writing the initramfs");
    let (modules, kver) = (&i.boot.initrd_modules, &i.boot.kernel.version);
    let init = i
        .bins
        .iter()
        .find(|(b, _)| b == "herd-init")
        .map(|(_, d)| d.clone())
        .context("usr.binaries must include herd-init: it is the initramfs's /init")?;
    let mut t = Tree::new();
    t.insert_file("init", init, 0o755)?;
    for d in ["dev", "proc", "sys", "run", "sysroot", "etc/herd"] {
        t.mkdir_p(d)?;
    }
    t.insert(
        "dev/console",
        Node::CharDev {
            meta: Meta::new(0o600),
            major: 5,
            minor: 1,
        },
    )?;
    modules.add_to(&mut t, &format!("lib/modules/{kver}"))?;
    t.insert_file(
        "etc/herd/initrd-modules",
        modules
            .load_list(&format!("/lib/modules/{kver}/"))
            .into_bytes(),
        0o644,
    )?;
    t.set_mtime_all(mtime);
    let mut out = Vec::new();
    herd_cpio::write_newc(&t, &mut out)?;
    step.done(&human_bytes(out.len() as u64));
    Ok(out)
}
