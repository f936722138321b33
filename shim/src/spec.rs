//! The OCI runtime spec containerd gives us, rewritten for the guest: the rootfs and bind-mount
//! sources become paths in the sandbox share, and what only makes sense on the host (its
//! network namespace, LSM labels, hooks, systemd cgroup paths) is dropped. The seccomp profile
//! (`linux.seccomp`) passes through unchanged: the agent has libcontainer load it in the guest.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Where the agent mounts the sandbox share in the guest (Kata's path, so tooling that knows
/// Kata finds containers where it expects them).
pub const GUEST_SHARE: &str = "/run/kata-containers/shared/containers";

/// The network a container's spec asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecNetwork {
    /// No network namespace at all: the host's (`--net-host`, hostNetwork pods).
    Host,
    /// A new, empty namespace: the guest's loopback only.
    New,
    /// A namespace prepared beforehand (by CNI, `ip netns add`), whose interfaces the VM takes
    /// over.
    Join(PathBuf),
}

/// The network namespace `spec` asks for.
pub fn network(spec: &Value) -> SpecNetwork {
    let Some(ns) = spec["linux"]["namespaces"].as_array() else {
        return SpecNetwork::Host;
    };
    match ns.iter().find(|n| n["type"] == "network") {
        None => SpecNetwork::Host,
        Some(n) => match n["path"].as_str().filter(|p| !p.is_empty()) {
            Some(p) => SpecNetwork::Join(PathBuf::from(p)),
            None => SpecNetwork::New,
        },
    }
}

/// A host path the container needs, to be bind-mounted into the share at `share_rel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedBind {
    pub host: PathBuf,
    pub share_rel: String,
    pub read_only: bool,
}

/// The guest's spec and the bind mounts the host must provide in the share for it.
#[derive(Debug)]
pub struct GuestSpec {
    pub spec: Value,
    pub binds: Vec<SharedBind>,
    pub dropped: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{0}: not a valid OCI runtime spec: {1}")]
    Invalid(PathBuf, String),
}

/// Rewrites `spec` (the bundle's config.json) for container `id`. A container with a UTS
/// namespace of its own but no hostname gets `host_name`: under runc it would inherit the host's
/// name, and the guest has none of its own.
pub fn for_guest(id: &str, mut spec: Value, host_name: &str) -> GuestSpec {
    let mut dropped = Vec::new();
    spec["root"]["path"] = Value::String(format!("{GUEST_SHARE}/{id}/rootfs"));
    let own_uts = spec["linux"]["namespaces"]
        .as_array()
        .is_some_and(|ns| ns.iter().any(|n| n["type"] == "uts"));
    let named = spec["hostname"].as_str().is_some_and(|h| !h.is_empty());
    if own_uts && !named && !host_name.is_empty() {
        spec["hostname"] = Value::String(host_name.to_string());
    }

    if let Some(obj) = spec.as_object_mut() {
        if obj.remove("hooks").is_some() {
            dropped.push("hooks (they would run on the host)".to_string());
        }
    }
    if let Some(p) = spec.get_mut("process").and_then(Value::as_object_mut) {
        for k in ["apparmorProfile", "selinuxLabel"] {
            if p.remove(k).is_some() {
                dropped.push(format!("process.{k}"));
            }
        }
    }
    if let Some(linux) = spec.get_mut("linux").and_then(Value::as_object_mut) {
        linux.remove("mountLabel");
        // containerd's path may be systemd-style ("slice:prefix:name"); inside the guest every
        // container gets a plain cgroup of its own.
        linux.insert("cgroupsPath".into(), Value::String(format!("/husk/{id}")));
        if let Some(ns) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
            // The pod's network is the guest's: containers share it, as they would share the
            // pod's namespace on the host. Any other namespace path names a host namespace.
            ns.retain(|n| n["type"] != "network");
            for n in ns.iter_mut() {
                if let Some(o) = n.as_object_mut() {
                    o.remove("path");
                }
            }
        }
    }

    let mut binds = Vec::new();
    if let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) {
        for (i, m) in mounts.iter_mut().enumerate() {
            let options: Vec<String> = m["options"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|o| o.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let is_bind =
                m["type"] == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
            if !is_bind {
                continue;
            }
            let Some(source) = m["source"].as_str().map(PathBuf::from) else {
                continue;
            };
            let share_rel = format!("{id}/mounts/{i}");
            binds.push(SharedBind {
                host: source,
                share_rel: share_rel.clone(),
                read_only: options.iter().any(|o| o == "ro"),
            });
            m["source"] = Value::String(format!("{GUEST_SHARE}/{share_rel}"));
        }
    }
    GuestSpec {
        spec,
        binds,
        dropped,
    }
}

/// Reads `bundle/config.json`.
pub fn read_bundle_spec(bundle: &Path) -> Result<Value, SpecError> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| SpecError::Invalid(path.clone(), e.to_string()))?;
    serde_json::from_slice(&text).map_err(|e| SpecError::Invalid(path, e.to_string()))
}

/// The sandbox a container belongs to: CRI names it in an annotation; a container without one
/// (`ctr run`) is a sandbox of its own.
pub fn sandbox_id(spec: &Value, id: &str) -> String {
    for key in [
        "io.kubernetes.cri.sandbox-id",
        "io.kubernetes.cri-o.SandboxID",
    ] {
        if let Some(s) = spec["annotations"][key].as_str() {
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    id.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rewrites_root_namespaces_and_binds() {
        let spec = json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": false},
            "hooks": {"prestart": []},
            "process": {"args": ["sh"], "apparmorProfile": "x"},
            "linux": {
                "cgroupsPath": "system.slice:cri:abc",
                "seccomp": {"defaultAction": "SCMP_ACT_ERRNO"},
                "namespaces": [
                    {"type": "pid"},
                    {"type": "network", "path": "/var/run/netns/cni-1"},
                    {"type": "ipc", "path": "/proc/42/ns/ipc"}
                ]
            },
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/x/hosts",
                 "options": ["rbind", "ro"]}
            ]
        });
        let g = for_guest("c1", spec, "myhost");
        assert_eq!(g.spec["root"]["path"], format!("{GUEST_SHARE}/c1/rootfs"));
        assert!(g.spec.get("hooks").is_none());
        assert_eq!(
            g.spec["linux"]["seccomp"],
            json!({"defaultAction": "SCMP_ACT_ERRNO"})
        );
        assert!(g.spec["process"].get("apparmorProfile").is_none());
        assert_eq!(g.spec["linux"]["cgroupsPath"], "/husk/c1");
        let ns = g.spec["linux"]["namespaces"].as_array().unwrap();
        assert_eq!(ns.len(), 2);
        assert!(ns.iter().all(|n| n.get("path").is_none()));
        assert_eq!(g.spec["mounts"][0]["source"], "proc");
        assert_eq!(
            g.spec["mounts"][1]["source"],
            format!("{GUEST_SHARE}/c1/mounts/1")
        );
        assert_eq!(
            g.binds,
            vec![SharedBind {
                host: "/var/lib/x/hosts".into(),
                share_rel: "c1/mounts/1".into(),
                read_only: true
            }]
        );
        assert_eq!(g.dropped.len(), 2, "{:?}", g.dropped);
    }

    #[test]
    fn the_seccomp_profile_passes_through() {
        let profile = json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [
                {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]}
            ]
        });
        let spec = json!({
            "process": {"args": ["sh"], "noNewPrivileges": true},
            "linux": {"seccomp": profile.clone()}
        });
        let g = for_guest("c1", spec, "h");
        assert_eq!(g.spec["linux"]["seccomp"], profile);
        assert_eq!(g.spec["process"]["noNewPrivileges"], true);
        assert!(
            g.dropped.iter().all(|d| !d.contains("seccomp")),
            "{:?}",
            g.dropped
        );
    }

    #[test]
    fn hostname_only_for_an_own_uts_namespace_without_one() {
        let uts = json!({"linux": {"namespaces": [{"type": "uts"}]}});
        assert_eq!(for_guest("c", uts.clone(), "h").spec["hostname"], "h");
        let mut named = uts;
        named["hostname"] = json!("mine");
        assert_eq!(for_guest("c", named, "h").spec["hostname"], "mine");
        let shared = json!({"linux": {"namespaces": [{"type": "pid"}]}});
        assert!(for_guest("c", shared, "h").spec.get("hostname").is_none());
    }

    #[test]
    fn sandbox_from_cri_annotation() {
        let cri = json!({"annotations": {"io.kubernetes.cri.sandbox-id": "pod1"}});
        assert_eq!(sandbox_id(&cri, "c1"), "pod1");
        assert_eq!(sandbox_id(&json!({}), "c1"), "c1");
    }

    #[test]
    fn the_network_a_spec_asks_for() {
        let with = |ns: Value| json!({"linux": {"namespaces": ns}});
        assert_eq!(network(&json!({})), SpecNetwork::Host);
        assert_eq!(network(&with(json!([{"type": "pid"}]))), SpecNetwork::Host);
        assert_eq!(
            network(&with(json!([{"type": "network"}]))),
            SpecNetwork::New
        );
        assert_eq!(
            network(&with(json!([{"type": "network", "path": ""}]))),
            SpecNetwork::New
        );
        assert_eq!(
            network(&with(
                json!([{"type": "network", "path": "/var/run/netns/p1"}])
            )),
            SpecNetwork::Join("/var/run/netns/p1".into())
        );
    }
}
