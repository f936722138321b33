//! The OCI runtime spec containerd gives us, rewritten for the guest: the rootfs and bind-mount
//! sources become paths in the sandbox share, and what only makes sense on the host (its
//! network namespace, LSM labels, hooks, systemd cgroup paths) is dropped. The seccomp profile
//! (`linux.seccomp`) passes through unchanged: the agent has libcontainer load it in the guest.

use std::path::{Path, PathBuf};

use husk_agent_protocol::{CONTAINER_NS_PREFIX, POD_SHM_DIR, POD_SHM_SIZE};

use crate::cpus::{self, CpuError, CpuSet};
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

/// The first namespace `spec` shares with the node (no entry of that kind: a hostNetwork,
/// hostPID or hostIPC pod), as the namespace kind and the pod field that asks for it.
pub fn host_namespace(spec: &Value) -> Option<(&'static str, &'static str)> {
    let ns = spec["linux"]["namespaces"].as_array();
    [
        ("network", "hostNetwork"),
        ("pid", "hostPID"),
        ("ipc", "hostIPC"),
    ]
    .into_iter()
    .find(|(kind, _)| !ns.is_some_and(|ns| ns.iter().any(|n| n["type"] == *kind)))
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
    let pod = sandbox_id(&spec, id);
    spec["root"]["path"] = Value::String(format!("{GUEST_SHARE}/{id}/rootfs"));
    let own_uts = spec["linux"]["namespaces"].as_array().is_some_and(|ns| {
        ns.iter()
            .any(|n| n["type"] == "uts" && n["path"].as_str().is_none_or(str::is_empty))
    });
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
        // The guest has one memory node; its cpuset (vCPU numbers) is set by the sandbox.
        if let Some(cpu) = linux
            .get_mut("resources")
            .and_then(|r| r.get_mut("cpu"))
            .and_then(Value::as_object_mut)
        {
            cpu.remove("mems");
        }
        // containerd's path may be systemd-style ("slice:prefix:name"); inside the guest every
        // container gets a plain cgroup of its own.
        linux.insert("cgroupsPath".into(), Value::String(format!("/husk/{id}")));
        if let Some(ns) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
            // The pod's network is the guest's: containers share it, as they would share the
            // pod's namespace on the host.
            ns.retain(|n| n["type"] != "network");
            // Any other path names a host namespace: CRI's app containers join the sandbox
            // container's UTS, IPC and (shareProcessNamespace) PID namespaces by its host pid,
            // which is the VMM's. In the guest they join the sandbox container's instead; a
            // container of no pod gets new ones.
            for n in ns.iter_mut() {
                let Some(o) = n.as_object_mut() else { continue };
                let joins = o
                    .remove("path")
                    .is_some_and(|p| p.as_str().is_some_and(|p| !p.is_empty()));
                if joins && pod != id {
                    o.insert(
                        "path".into(),
                        Value::String(format!("{CONTAINER_NS_PREFIX}{pod}")),
                    );
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

/// Moves a bind-mounted `/dev/shm` (CRI's tmpfs for the pod, or a memory-backed emptyDir) into
/// guest memory: a tmpfs of the same size that the agent keeps per pod, shared by the pod's
/// containers, instead of a host tmpfs reached through virtio-fs (slow for shared memory, and
/// its pages held twice). `tmpfs_size` gives a host path's size when it is a tmpfs; any other
/// source stays shared from the host. Returns the size given to the guest.
pub fn shm_in_guest(
    guest: &mut GuestSpec,
    pod: &str,
    tmpfs_size: impl Fn(&Path) -> Option<u64>,
) -> Option<u64> {
    let mounts = guest.spec["mounts"].as_array_mut()?;
    let m = mounts.iter_mut().find(|m| m["destination"] == "/dev/shm")?;
    let rel = m["source"]
        .as_str()?
        .strip_prefix(GUEST_SHARE)?
        .trim_start_matches('/')
        .to_string();
    let at = guest.binds.iter().position(|b| b.share_rel == rel)?;
    let size = tmpfs_size(&guest.binds[at].host)?;
    m["source"] = Value::String(format!("{POD_SHM_DIR}/{pod}"));
    guest.binds.remove(at);
    guest.spec["annotations"][POD_SHM_SIZE] = Value::String(size.to_string());
    Some(size)
}

/// The size in bytes of the tmpfs mounted at `path`, if a tmpfs is what is there.
pub fn host_tmpfs_size(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs fills a zeroed struct from a NUL-terminated path; the result is checked.
    let st = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        (libc::statfs(c.as_ptr(), &mut st) == 0).then_some(st)
    }?;
    (st.f_type == libc::TMPFS_MAGIC).then(|| st.f_blocks as u64 * st.f_bsize as u64)
}

/// Reads `bundle/config.json`.
pub fn read_bundle_spec(bundle: &Path) -> Result<Value, SpecError> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| SpecError::Invalid(path.clone(), e.to_string()))?;
    serde_json::from_slice(&text).map_err(|e| SpecError::Invalid(path, e.to_string()))
}

/// The memory, in MiB, a sandbox's VM needs for its containers beyond its own: CRI's sum of the
/// pod's container limits (containerd 1.7 and later pass it on the sandbox container), else the
/// limit of a container that is a sandbox of its own (`ctr run --memory-limit`). 0 when unknown.
pub fn memory_request_mib(spec: &Value) -> u64 {
    let pod = spec["annotations"]["io.kubernetes.cri.sandbox-memory"]
        .as_str()
        .and_then(|m| m.parse::<u64>().ok());
    let own = spec["linux"]["resources"]["memory"]["limit"]
        .as_i64()
        .and_then(|m| u64::try_from(m).ok());
    // A container of a pod is never the first to boot its VM: only the sandbox's own limit counts.
    pod.or(own).map_or(0, |bytes| bytes.div_ceil(1 << 20))
}

/// The host CPUs container `spec` asks for (`linux.resources.cpu.cpus`), if any.
pub fn cpuset(spec: &Value) -> Result<Option<CpuSet>, CpuError> {
    match spec["linux"]["resources"]["cpu"]["cpus"].as_str() {
        Some(list) if !list.trim().is_empty() => cpus::parse_list(list).map(Some),
        _ => Ok(None),
    }
}

/// Gives the guest's spec the guest cpuset `list` (vCPU numbers) in place of the host's.
pub fn set_guest_cpus(spec: &mut Value, list: &str) {
    if spec["linux"]["resources"]["cpu"].is_object() {
        set_guest_cpus_of(&mut spec["linux"]["resources"], list);
    }
}

/// The same on OCI `LinuxResources` (an update): `cpus` in guest numbers; `mems` dropped, as the
/// guest has one memory node.
pub fn set_guest_cpus_of(resources: &mut Value, list: &str) {
    if let Some(cpu) = resources["cpu"].as_object_mut() {
        cpu.remove("mems");
        if !list.is_empty() {
            cpu.insert("cpus".into(), Value::String(list.into()));
        }
    }
}

/// The OOM score adjustment of a workload container (kubelet's, from the pod's QoS class);
/// `None` for CRI's sandbox container, whose pause process kubelet always protects.
pub fn workload_oom_score_adj(spec: &Value) -> Option<i32> {
    if spec["annotations"]["io.kubernetes.cri.container-type"] == "sandbox" {
        return None;
    }
    spec["process"]["oomScoreAdj"]
        .as_i64()
        .and_then(|a| i32::try_from(a).ok())
        .filter(|a| (-1000..=1000).contains(a))
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
    fn host_namespaces_named_by_their_pod_field() {
        let ns = |kinds: &[&str]| {
            let list: Vec<Value> = kinds.iter().map(|k| json!({ "type": k })).collect();
            json!({"linux": {"namespaces": list}})
        };
        assert_eq!(host_namespace(&ns(&["pid", "ipc", "network", "uts"])), None);
        assert_eq!(
            host_namespace(&ns(&["pid", "ipc"])),
            Some(("network", "hostNetwork"))
        );
        assert_eq!(
            host_namespace(&ns(&["network", "ipc"])),
            Some(("pid", "hostPID"))
        );
        assert_eq!(
            host_namespace(&ns(&["network", "pid"])),
            Some(("ipc", "hostIPC"))
        );
        assert_eq!(host_namespace(&json!({})), Some(("network", "hostNetwork")));
    }

    #[test]
    fn pod_containers_join_the_sandbox_containers_namespaces() {
        let app = json!({
            "annotations": {"io.kubernetes.cri.sandbox-id": "pod1"},
            "linux": {"namespaces": [
                {"type": "pid"},
                {"type": "ipc", "path": "/proc/7/ns/ipc"},
                {"type": "uts", "path": "/proc/7/ns/uts"},
                {"type": "network", "path": "/var/run/netns/cni-1"},
                {"type": "mount"}
            ]}
        });
        let g = for_guest("app", app, "node");
        assert_eq!(
            g.spec["linux"]["namespaces"],
            json!([
                {"type": "pid"},
                {"type": "ipc", "path": "container:pod1"},
                {"type": "uts", "path": "container:pod1"},
                {"type": "mount"}
            ])
        );
        // It takes the pod's hostname with the pod's UTS namespace, not the node's.
        assert!(g.spec.get("hostname").is_none());
        // The sandbox container itself, and a container of no pod, get namespaces of their own.
        let sandbox = json!({
            "annotations": {"io.kubernetes.cri.sandbox-id": "pod1"},
            "hostname": "web-0",
            "linux": {"namespaces": [{"type": "uts"}, {"type": "ipc", "path": "/proc/1/ns/ipc"}]}
        });
        let g = for_guest("pod1", sandbox, "node");
        assert_eq!(
            g.spec["linux"]["namespaces"],
            json!([{"type": "uts"}, {"type": "ipc"}])
        );
        assert_eq!(g.spec["hostname"], "web-0");
    }

    #[test]
    fn memory_request_from_the_pod_sum_or_the_own_limit() {
        assert_eq!(memory_request_mib(&json!({})), 0);
        let own = json!({"linux": {"resources": {"memory": {"limit": 100663296}}}});
        assert_eq!(memory_request_mib(&own), 96);
        let pod = json!({
            "annotations": {"io.kubernetes.cri.sandbox-memory": "536870913"},
            "linux": {"resources": {"memory": {"limit": 1}}}
        });
        assert_eq!(memory_request_mib(&pod), 513);
        // No limit (-1, unlimited) and garbage ask for nothing.
        let unlimited = json!({"linux": {"resources": {"memory": {"limit": -1}}}});
        assert_eq!(memory_request_mib(&unlimited), 0);
        let bad = json!({"annotations": {"io.kubernetes.cri.sandbox-memory": "lots"}});
        assert_eq!(memory_request_mib(&bad), 0);
    }

    #[test]
    fn cpusets_are_host_cpus_rewritten_to_vcpus_for_the_guest() {
        let spec = json!({
            "linux": {"namespaces": [{"type": "pid"}],
                      "resources": {"cpu": {"cpus": "2-3", "mems": "1", "shares": 2}}}
        });
        assert_eq!(cpuset(&spec).unwrap(), Some(CpuSet::from([2, 3])));
        assert_eq!(cpuset(&json!({})).unwrap(), None);
        let empty = json!({"linux": {"resources": {"cpu": {"cpus": ""}}}});
        assert_eq!(cpuset(&empty).unwrap(), None);
        let bad = json!({"linux": {"resources": {"cpu": {"cpus": "two"}}}});
        assert!(cpuset(&bad).unwrap_err().to_string().contains("\"two\""));
        let mut guest = for_guest("c", spec, "").spec;
        assert_eq!(guest["linux"]["resources"]["cpu"]["mems"], Value::Null);
        set_guest_cpus(&mut guest, "0-1");
        assert_eq!(
            guest["linux"]["resources"]["cpu"],
            json!({"cpus": "0-1", "shares": 2})
        );
    }

    #[test]
    fn a_tmpfs_dev_shm_moves_into_the_guest_per_pod() {
        let spec = json!({
            "annotations": {"io.kubernetes.cri.sandbox-id": "pod1"},
            "mounts": [
                {"destination": "/data", "type": "bind", "source": "/host/data", "options": ["rbind"]},
                {"destination": "/dev/shm", "type": "bind", "source": "/run/cri/pod1/shm",
                 "options": ["rbind", "ro"]}
            ]
        });
        let mut guest = for_guest("c", spec.clone(), "");
        let size = shm_in_guest(&mut guest, "pod1", |p| {
            (p == Path::new("/run/cri/pod1/shm")).then_some(64 << 20)
        });
        assert_eq!(size, Some(64 << 20));
        assert_eq!(guest.spec["mounts"][1]["source"], "/run/husk/shm/pod1");
        assert_eq!(guest.spec["mounts"][1]["options"], json!(["rbind", "ro"]));
        assert_eq!(guest.spec["annotations"][POD_SHM_SIZE], "67108864");
        // Only /data is still bound from the host.
        assert_eq!(guest.binds.len(), 1);
        assert_eq!(guest.binds[0].host, PathBuf::from("/host/data"));
        // Not a tmpfs: it stays shared from the host.
        let mut guest = for_guest("c", spec, "");
        assert_eq!(shm_in_guest(&mut guest, "pod1", |_| None), None);
        assert_eq!(guest.binds.len(), 2);
        assert_eq!(host_tmpfs_size(Path::new("/surely/not/here")), None);
    }

    #[test]
    fn the_oom_score_of_workloads_not_of_the_pause_container() {
        let app = json!({"process": {"oomScoreAdj": 1000}});
        assert_eq!(workload_oom_score_adj(&app), Some(1000));
        let pause = json!({
            "process": {"oomScoreAdj": -998},
            "annotations": {"io.kubernetes.cri.container-type": "sandbox"}
        });
        assert_eq!(workload_oom_score_adj(&pause), None);
        assert_eq!(workload_oom_score_adj(&json!({"process": {}})), None);
        assert_eq!(
            workload_oom_score_adj(&json!({"process": {"oomScoreAdj": 5000}})),
            None
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
