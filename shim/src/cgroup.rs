//! The sandbox's cgroup on the host. The VMM (guest memory, vCPU threads, device workers) starts
//! in the cgroup that containerd asked for in the sandbox's first spec, where runc would have put
//! the container itself, so the host accounts the pod as it would without a VM. Only the unified
//! (v2) hierarchy is handled; on a v1 host the VMM stays in the shim's cgroup.

use std::path::PathBuf;

use cgroups_rs::fs::{hierarchies, Cgroup};

const ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("Cannot create the sandbox cgroup {path}: {source}")]
    Create {
        path: String,
        source: cgroups_rs::fs::error::Error,
    },
    #[error("The sandbox cgroup {0:?} is not a plain path below the cgroup root (no '.', '..' or empty parts)")]
    BadPath(String),
    #[error("The sandbox cgroup {0} already holds processes that husk did not start: use a cgroupsPath of its own")]
    InUse(String),
    #[error("Cannot move the shim into cgroup {path}: {source}")]
    Join {
        path: String,
        source: std::io::Error,
    },
    #[error("Cannot set cpuset.cpus {cpus:?} of the sandbox cgroup {path}: {source} (are the CPUs in the parent cgroup's cpuset?)")]
    Cpuset {
        path: String,
        cpus: String,
        source: std::io::Error,
    },
}

impl CgroupError {
    /// The spec asked for something we refuse, as opposed to a host that failed us.
    pub fn is_bad_request(&self) -> bool {
        !matches!(
            self,
            CgroupError::Create { .. } | CgroupError::Cpuset { .. } | CgroupError::Join { .. }
        )
    }
}

/// Checks that cgroup `path` (relative to the root) may become a sandbox's: a plain path, and
/// either new or without processes. Returns whether it exists already (then it is not ours to
/// remove). A spec must not aim the sandbox, and its teardown's kill, at other workloads.
pub fn check_unused(path: &str) -> Result<bool, CgroupError> {
    if path.is_empty()
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(CgroupError::BadPath(path.into()));
    }
    let dir = PathBuf::from(ROOT).join(path);
    if !dir.is_dir() {
        return Ok(false);
    }
    // `populated 1`: a process in it or in a cgroup below it.
    let events = std::fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    if events.lines().any(|l| l == "populated 1") || !procs.trim().is_empty() {
        return Err(CgroupError::InUse(dir.display().to_string()));
    }
    Ok(true)
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
    Cgroup::new(hierarchies::auto(), path).map_err(|source| CgroupError::Create {
        path: format!("{ROOT}/{path}"),
        source,
    })?;
    Ok(Some(PathBuf::from(ROOT).join(path).join("cgroup.procs")))
}

/// This process's cgroup (relative to the root) in the unified hierarchy.
pub fn own_path() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_matches('/').to_string())
}

/// Moves this whole process (every thread) into cgroup `path` (relative to the root).
pub fn join(path: &str) -> Result<(), CgroupError> {
    let dir = PathBuf::from(ROOT).join(path);
    std::fs::write(dir.join("cgroup.procs"), "0\n").map_err(|source| CgroupError::Join {
        path: dir.display().to_string(),
        source,
    })
}

/// Sets the `cpuset.cpus` of cgroup `path` (an empty list: the parent's CPUs). Returns false,
/// changing nothing, where the cgroup has no cpuset controller (a v1 host, a parent that does
/// not delegate it): the vCPU threads' own affinity then confines the VM alone.
pub fn set_cpus(path: &str, cpus: &str) -> Result<bool, CgroupError> {
    let file = PathBuf::from(ROOT).join(path).join("cpuset.cpus");
    if !file.is_file() {
        return Ok(false);
    }
    // cgroupfs takes the list in one write; a newline ends it.
    std::fs::write(&file, format!("{cpus}\n")).map_err(|source| CgroupError::Cpuset {
        path: format!("{ROOT}/{path}"),
        cpus: cpus.to_string(),
        source,
    })?;
    Ok(true)
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
    fn sandbox_cgroups_stay_below_the_root_and_unused() {
        for bad in ["", "a/../b", "../x", "a//b", "./a", "a/."] {
            assert!(
                matches!(check_unused(bad), Err(CgroupError::BadPath(_))),
                "{bad:?}"
            );
        }
        assert!(!check_unused("husk-test-surely-absent/x").unwrap());
    }

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
