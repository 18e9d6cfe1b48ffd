//! Which host paths a pod may mount: under `/var`, never the node's own
//! state, anything under it or anything holding it. A lexical rule, checked
//! when a manifest is read; the agent also resolves the path without
//! following symlinks when it mounts it.

use std::path::{Path, PathBuf};

/// The node's own state — keys, trust, update and agent state, logs, the
/// agent's socket: no hostPath may be one of them, under one, or hold one.
pub const NODE_STATE: [&str; 4] = ["/var/lib/herd", "/var/log/herd", "/etc/herd", "/run/herd"];

/// The hostPath `path` normalised lexically (`//`, `.`, trailing `/`, and
/// `..` taken back), relative to `/`, if a pod may have it: under `/var`
/// and clear of [`NODE_STATE`]; else why not.
pub fn host_path_rule(path: &str) -> Result<PathBuf, String> {
    use std::path::Component;
    if !path.starts_with('/') {
        return Err(format!("{path:?} is not an absolute path"));
    }
    let mut norm = PathBuf::from("/");
    for c in Path::new(path).components() {
        match c {
            Component::Normal(x) => norm.push(x),
            Component::ParentDir => {
                norm.pop();
            }
            _ => {}
        }
    }
    let rule = "the node's own state is never given to a pod";
    let shown = norm.display();
    if let Some(s) = NODE_STATE.iter().find(|s| norm.starts_with(s)) {
        return Err(format!(
            "{path:?} is {shown}, which is {s} or under it: {rule}"
        ));
    }
    if !norm.starts_with("/var") {
        return Err(format!(
            "{path:?} is {shown}: hostPath volumes must be under /var"
        ));
    }
    if let Some(s) = NODE_STATE.iter().find(|s| Path::new(s).starts_with(&norm)) {
        return Err(format!("{path:?} is {shown}, which holds {s}: {rule}"));
    }
    Ok(norm.strip_prefix("/").expect("absolute").to_path_buf())
}
