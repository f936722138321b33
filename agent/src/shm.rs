//! Each pod's /dev/shm in guest memory: the shim points a container's `/dev/shm` at
//! `POD_SHM_DIR/<pod id>` (see `husk_agent_protocol::POD_SHM_DIR`) with the size of the host
//! tmpfs it replaces; the first container of the pod mounts a tmpfs of that size there, and its
//! siblings bind the same one, so the pod shares it as under runc.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use husk_agent_protocol::{is_plain_name, POD_SHM_DIR, POD_SHM_SIZE};
use serde_json::Value;

use crate::process::ProcessError;

/// One mount at a time: two containers of a pod created at once must not both mount.
static MOUNTING: Mutex<()> = Mutex::new(());

/// Mounts the pod tmpfs that `spec`'s mounts name, if it is not mounted yet.
pub fn ensure_pod_shm(spec: &Value) -> Result<(), ProcessError> {
    let Some(mounts) = spec["mounts"].as_array() else {
        return Ok(());
    };
    for m in mounts {
        let Some(pod) = m["source"]
            .as_str()
            .and_then(|s| s.strip_prefix(POD_SHM_DIR))
            .and_then(|s| s.strip_prefix('/'))
        else {
            continue;
        };
        if !is_plain_name(pod, 128) {
            return Err(ProcessError::BadRequest(format!(
                "bad pod id {pod:?} in a /dev/shm source"
            )));
        }
        let size: u64 = spec["annotations"][POD_SHM_SIZE]
            .as_str()
            .and_then(|s| s.parse().ok())
            .filter(|s| *s > 0)
            .ok_or_else(|| {
                ProcessError::BadRequest(format!(
                    "a pod /dev/shm needs its size in bytes in the annotation {POD_SHM_SIZE}"
                ))
            })?;
        let _one = MOUNTING.lock().expect("shm lock");
        let dir = Path::new(POD_SHM_DIR).join(pod);
        std::fs::create_dir_all(&dir)
            .map_err(|e| ProcessError::Io(format!("cannot create {}", dir.display()), e))?;
        if is_mount_point(&dir) {
            continue;
        }
        mount_tmpfs(&dir, size).map_err(|e| {
            ProcessError::Io(
                format!("cannot mount the pod's /dev/shm at {}", dir.display()),
                e,
            )
        })?;
        crate::log::debug(&format!("pod {pod}: /dev/shm tmpfs of {size} bytes"));
    }
    Ok(())
}

/// A directory on another filesystem than its parent's is a mount point.
fn is_mount_point(dir: &Path) -> bool {
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    match (dev(dir), dir.parent().and_then(dev)) {
        (Some(a), Some(b)) => a != b,
        _ => false,
    }
}

fn mount_tmpfs(dir: &Path, size: u64) -> std::io::Result<()> {
    let target = CString::new(dir.as_os_str().as_encoded_bytes())?;
    let data = CString::new(format!("mode=1777,size={size}"))?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            c"shm".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bad_pod_ids_and_missing_sizes_are_refused_before_any_mount() {
        let climb = json!({"mounts": [{"source": "/run/husk/shm/../../etc"}]});
        assert!(ensure_pod_shm(&climb)
            .unwrap_err()
            .to_string()
            .contains("bad pod id"));
        let no_size = json!({"mounts": [{"source": "/run/husk/shm/pod1"}]});
        assert!(ensure_pod_shm(&no_size)
            .unwrap_err()
            .to_string()
            .contains(POD_SHM_SIZE));
        // Other mounts are none of its business.
        let other =
            json!({"mounts": [{"source": "/run/kata-containers/shared/containers/c/mounts/0"}]});
        ensure_pod_shm(&other).unwrap();
    }

    #[test]
    fn mount_points_are_told_from_plain_directories() {
        assert!(is_mount_point(Path::new("/proc")));
        let plain = std::env::temp_dir().join(format!("husk-shm-test-{}", std::process::id()));
        std::fs::create_dir_all(&plain).unwrap();
        assert!(!is_mount_point(&plain));
        std::fs::remove_dir(&plain).unwrap();
    }
}
