//! A privileged container's devices are the guest's. Under runc a privileged container gets
//! every device of the host; a VM runtime's must not (containerd's
//! `privileged_without_host_devices` leaves them out of the spec, and they would name the
//! host's device numbers anyway). So a privileged container gets every device node of the
//! guest instead, and a device rule that lets it use them, as a privileged container expects.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use serde_json::{json, Value};

/// Nodes the runtime makes itself (the terminal), and the agent's own transport.
const SKIPPED: &[&str] = &["/dev/console", "/dev/tty", "/dev/ptmx", "/dev/vsock"];

/// Whether `spec` is a privileged container's, as containerd writes one (`oci.WithPrivileged`):
/// CAP_SYS_ADMIN among its bounding capabilities and no masked or read-only paths.
pub fn is_privileged(spec: &Value) -> bool {
    let empty = |v: &Value| v.as_array().is_none_or(Vec::is_empty);
    let admin = spec["process"]["capabilities"]["bounding"]
        .as_array()
        .is_some_and(|caps| caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
    admin && empty(&spec["linux"]["maskedPaths"]) && empty(&spec["linux"]["readonlyPaths"])
}

/// The device nodes under `dev` (and one directory level below it, e.g. /dev/net/tun) as
/// OCI `linux.devices` entries, sorted by path.
pub fn guest_devices(dev: &Path) -> Vec<Value> {
    let mut found = Vec::new();
    let mut dirs = vec![(dev.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            // symlink_metadata: /dev's links (fd, stdin, core) are not devices of their own.
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let kind = meta.file_type();
            if kind.is_dir() && depth == 0 && e.file_name() != "pts" {
                dirs.push((path, 1));
                continue;
            }
            let ty = if kind.is_char_device() {
                "c"
            } else if kind.is_block_device() {
                "b"
            } else {
                continue;
            };
            let guest_path = Path::new("/dev").join(path.strip_prefix(dev).unwrap_or(&path));
            let guest_path = guest_path.to_string_lossy().into_owned();
            if SKIPPED.contains(&guest_path.as_str()) {
                continue;
            }
            found.push(json!({
                "path": guest_path,
                "type": ty,
                "major": libc::major(meta.rdev()),
                "minor": libc::minor(meta.rdev()),
                "fileMode": meta.permissions().mode() & 0o777,
                "uid": meta.uid(),
                "gid": meta.gid(),
            }));
        }
    }
    found.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    found
}

/// Gives a privileged `spec` the devices `devices` (those it does not name already) and lets it
/// use every device. Returns how many were added; a spec that is not privileged is left alone.
pub fn add_to_privileged(spec: &mut Value, devices: Vec<Value>) -> usize {
    if !is_privileged(spec) {
        return 0;
    }
    let linux = &mut spec["linux"];
    if !linux["devices"].is_array() {
        linux["devices"] = json!([]);
    }
    let list = linux["devices"]
        .as_array_mut()
        .expect("made an array above");
    let mut added = 0;
    for d in devices {
        if !list.iter().any(|x| x["path"] == d["path"]) {
            list.push(d);
            added += 1;
        }
    }
    let rules = &mut linux["resources"]["devices"];
    if !rules.is_array() {
        *rules = json!([]);
    }
    rules
        .as_array_mut()
        .expect("made an array above")
        .push(json!({"allow": true, "access": "rwm"}));
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    fn privileged() -> Value {
        json!({
            "process": {"capabilities": {"bounding": ["CAP_CHOWN", "CAP_SYS_ADMIN"]}},
            "linux": {"devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]}
        })
    }

    #[test]
    fn only_privileged_specs_are_recognised() {
        assert!(is_privileged(&privileged()));
        let mut masked = privileged();
        masked["linux"]["maskedPaths"] = json!(["/proc/kcore"]);
        assert!(!is_privileged(&masked));
        let plain = json!({"process": {"capabilities": {"bounding": ["CAP_CHOWN"]}}});
        assert!(!is_privileged(&plain));
    }

    #[test]
    fn the_guests_devices_are_added_once_with_a_rule_for_them() {
        let devs = vec![
            json!({"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}),
            json!({"path": "/dev/ttyS0", "type": "c", "major": 4, "minor": 64}),
        ];
        let mut spec = privileged();
        assert_eq!(add_to_privileged(&mut spec, devs.clone()), 1);
        assert_eq!(spec["linux"]["devices"].as_array().unwrap().len(), 2);
        assert_eq!(
            spec["linux"]["resources"]["devices"],
            json!([{"allow": true, "access": "rwm"}])
        );
        let mut plain = json!({"linux": {"maskedPaths": ["/proc/kcore"]}});
        assert_eq!(add_to_privileged(&mut plain, devs), 0);
        assert_eq!(plain["linux"]["devices"], Value::Null);
    }

    #[test]
    fn device_nodes_are_found_and_links_skipped() {
        // The test's own /dev: null is a character device; /dev/fd is a link.
        let devs = guest_devices(Path::new("/dev"));
        let null = devs.iter().find(|d| d["path"] == "/dev/null").unwrap();
        assert_eq!(
            (null["type"].as_str(), null["major"].as_u64()),
            (Some("c"), Some(1))
        );
        assert!(devs
            .iter()
            .all(|d| d["path"] != "/dev/fd" && d["path"] != "/dev/console"));
    }
}
