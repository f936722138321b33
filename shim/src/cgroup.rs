//! The sandbox's cgroup on the host. The VMM (guest memory, vCPU threads, device workers) starts
//! in the cgroup that containerd asked for in the sandbox's first spec, where runc would have put
//! the container itself, so the host accounts the pod as it would without a VM. Only the unified
//! (v2) hierarchy is handled; on a v1 host the VMM stays in the shim's cgroup.

use std::path::PathBuf;

use cgroups_rs::fs::{hierarchies, Cgroup};

const ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
#[error("cannot create the sandbox cgroup {path}: {source}")]
pub struct CgroupError {
    path: String,
    source: cgroups_rs::fs::error::Error,
}

/// The cgroup (relative to the hierarchy's root) of a sandbox whose first container's spec has
/// `linux.cgroupsPath` = `spec_path`: a cgroupfs path as it is, a systemd `slice:prefix:name`
/// expanded the way systemd lays out its slices and scopes, and `husk/<namespace>-<sandbox>`
/// when the spec has none.
pub fn sandbox_path(spec_path: Option<&str>, namespace: &str, sandbox: &str) -> String {
    let path = spec_path.unwrap_or_default();
    if path.starts_with('/') {
        return path.trim_matches('/').to_string();
    }
    let parts: Vec<&str> = path.split(':').collect();
    if let [slice, prefix, name] = parts[..] {
        let mut dirs = slice_dirs(slice);
        dirs.push(if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        });
        return dirs.join("/");
    }
    format!("husk/{namespace}-{sandbox}")
}

/// `a-b-c.slice` lives in `a.slice/a-b.slice/a-b-c.slice`; `-.slice` (or none) is the root.
fn slice_dirs(slice: &str) -> Vec<String> {
    let name = slice.strip_suffix(".slice").unwrap_or(slice);
    if name.is_empty() || name == "-" {
        return Vec::new();
    }
    let words: Vec<&str> = name.split('-').collect();
    (1..=words.len())
        .map(|n| format!("{}.slice", words[..n].join("-")))
        .collect()
}

/// Creates cgroup `path`; returns its `cgroup.procs` file, for the VMM to join at start, or
/// `None` on a host without the unified hierarchy.
pub fn create(path: &str) -> Result<Option<PathBuf>, CgroupError> {
    if !hierarchies::is_cgroup2_unified_mode() {
        return Ok(None);
    }
    Cgroup::new(hierarchies::auto(), path).map_err(|source| CgroupError {
        path: format!("{ROOT}/{path}"),
        source,
    })?;
    Ok(Some(PathBuf::from(ROOT).join(path).join("cgroup.procs")))
}

/// Kills whatever is left in cgroup `path` and removes it. Errors are logged: this is cleanup.
pub fn remove(path: &str) {
    let dir = PathBuf::from(ROOT).join(path);
    if !dir.is_dir() {
        return;
    }
    let cg = Cgroup::load(hierarchies::auto(), path);
    if !cg.tasks().is_empty() {
        let _ = cg.kill();
    }
    // The killed processes leave the cgroup asynchronously.
    for _ in 0..50 {
        if cg.delete().is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    tracing::warn!(cgroup = %dir.display(), "cannot remove the sandbox cgroup");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_systemd_and_default_paths() {
        assert_eq!(
            sandbox_path(Some("/default/c1"), "default", "c1"),
            "default/c1"
        );
        assert_eq!(
            sandbox_path(
                Some("kubepods-besteffort-pod12.slice:cri-containerd:abc"),
                "k8s.io",
                "abc"
            ),
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/cri-containerd-abc.scope"
        );
        assert_eq!(
            sandbox_path(Some("system.slice::x"), "n", "s"),
            "system.slice/x.scope"
        );
        assert_eq!(sandbox_path(None, "n", "s"), "husk/n-s");
        assert_eq!(sandbox_path(Some(""), "n", "s"), "husk/n-s");
    }
}
