//! What a sandbox is made of on the host, and its undoing: the sandbox directory and its
//! mounts (`storage`), the cgroup, the VM, and the record of all of it (`record`). The sandbox
//! state machine reaches these only through the [`Host`] trait, so that its logic is tested
//! against an in-process agent without root or KVM.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::os::fd::{AsRawFd, OwnedFd};

use crate::agent::{ctx, Agent};
use crate::cpus::{self, CpuSet};
use crate::error::{Error, Result};
use crate::network::{self, GuestInterface, NetworkModel};
use crate::record::{ProcessIdentity, Record};
use crate::spec::GUEST_SHARE;
use crate::storage::{Bind, RootfsMount, SandboxStorage, StorageError};
use crate::vm::{NetDevice, Vm, VmConfig, Volume};

/// A booted sandbox VM: its agent, and the VMM process when there is one (tests have none).
pub struct BootedVm {
    pub agent: Agent,
    pub vmm_pid: u32,
    /// The guest's memory, in MiB (0: not known).
    pub memory_mib: u64,
    /// The guest's vCPUs.
    pub vcpus: u32,
    /// The sandbox cgroup (relative to the cgroup root), when the VMM runs in one.
    cgroup: Option<String>,
    /// Port forwarding into the pod (when it has a network namespace); stops with the VM.
    _forwarder: Option<crate::forward::PortForwarder>,
    vm: Option<Vm>,
}

impl BootedVm {
    /// A VM that is only an agent (an in-process fake in tests).
    pub fn agent_only(agent: Agent, vmm_pid: u32) -> BootedVm {
        BootedVm {
            agent,
            vmm_pid,
            memory_mib: 0,
            vcpus: 1,
            cgroup: None,
            _forwarder: None,
            vm: None,
        }
    }

    pub fn console_tail(&self) -> String {
        self.vm.as_ref().map(Vm::console_tail).unwrap_or_default()
    }

    /// Runs the vCPUs on host CPUs `pod` (the union of the pod's cpusets; empty: wherever the
    /// sandbox cgroup allows): first the sandbox cgroup's cpuset, then each vCPU thread's
    /// affinity. Returns each vCPU's host CPUs, which decide the containers' guest cpusets.
    pub fn place_vcpus(&self, pod: &CpuSet) -> Result<Vec<CpuSet>> {
        let placement = cpus::vcpu_placement(pod, self.vcpus);
        let Some(vm) = &self.vm else {
            return Ok(placement);
        };
        let list = cpus::format_list(pod);
        if let Some(cgroup) = &self.cgroup {
            if !crate::cgroup::set_cpus(cgroup, &list).map_err(Error::Cgroup)? {
                tracing::info!(
                    cgroup,
                    "no cpuset controller in the sandbox cgroup: vCPU affinity only"
                );
            }
        }
        let threads = cpus::vcpu_threads(vm.guest_pid());
        if threads.len() != self.vcpus as usize {
            tracing::warn!(
                found = threads.len(),
                vcpus = self.vcpus,
                "not every vCPU thread of the VMM was found"
            );
        }
        for (index, tid) in threads {
            if let Some(cpus) = placement.get(index as usize) {
                cpus::pin_thread(tid, cpus).map_err(Error::Cpu)?;
            }
        }
        tracing::info!(cpus = %list, vcpus = self.vcpus, one_to_one = pod.len() == self.vcpus as usize, "vCPUs placed");
        Ok(placement)
    }

    /// Gives the VMM (and the jail's waiter above it) OOM score adjustment `adj` on the host:
    /// the pod's containers' own, so that a node under memory pressure picks the pod's VM as
    /// kubelet's QoS class says it would pick the pod's processes under runc.
    pub fn set_oom_score_adj(&self, adj: i32) -> Result<()> {
        let Some(vm) = &self.vm else {
            return Ok(());
        };
        let mut pids = vec![vm.vmm_pid(), vm.guest_pid()];
        pids.dedup();
        for pid in pids {
            std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string())
                .map_err(|source| Error::OomScore { pid, adj, source })?;
        }
        tracing::info!(adj, "VMM oom_score_adj set");
        Ok(())
    }

    /// Kills the VMM of a guest that stopped answering.
    pub fn kill(&self) {
        if let Some(vm) = &self.vm {
            vm.kill();
        }
    }
}

/// What the first container of a sandbox asks of its VM.
#[derive(Debug, Default, Clone, Copy)]
pub struct BootRequest<'a> {
    /// containerd's cgroup path for the sandbox (the pod's `cgroup_parent` under CRI).
    pub cgroup: Option<&'a str>,
    /// The pod's network namespace, when it has one prepared.
    pub netns: Option<&'a Path>,
    /// Guest memory on top of `default_memory`: what the pod's containers may use.
    pub extra_memory_mib: u64,
}

/// The host side of one sandbox.
pub trait Host: Send + Sync {
    /// Creates the sandbox's directory, cgroup and share, connects the pod's network namespace
    /// (when there is one) and boots its VM.
    fn boot(&self, req: BootRequest) -> Result<BootedVm>;
    /// Mounts container `id`'s rootfs and binds where the guest finds them.
    fn mount_container(
        &self,
        id: &str,
        bundle: &Path,
        rootfs: &[RootfsMount],
        binds: &[Bind],
    ) -> Result<()>;
    /// Undoes everything `mount_container` did for `id`, even if it failed halfway.
    fn unmount_container(&self, id: &str);
    /// Removes what is left of the sandbox once its VM is gone.
    fn teardown(&self);
}

/// The guest memory of a VM with `default_mib` of its own and `extra_mib` for its containers:
/// never more than the host has (the sum of a pod's limits may be), so that a typo in a limit
/// cannot ask the VMM for terabytes.
fn vm_memory_mib(default_mib: u64, extra_mib: u64, host_mib: Option<u64>) -> u64 {
    let want = default_mib.saturating_add(extra_mib);
    match host_mib {
        Some(host) if want > host.max(default_mib) => {
            tracing::warn!(
                want,
                host,
                "the pod's memory is more than the host has; the VM gets the host's"
            );
            host.max(default_mib)
        }
        _ => want,
    }
}

/// The host's memory (MemTotal), in MiB.
fn host_memory_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib / 1024)
}

/// The directory of a sandbox's host state: short, because socket paths live under it.
pub fn sandbox_dir(namespace: &str, sandbox: &str) -> PathBuf {
    // FNV-1a: stable across runs and builds, unlike std's hasher.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in namespace.bytes().chain([0]).chain(sandbox.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    PathBuf::from(format!("/run/husk/s/{h:016x}"))
}

/// The real thing: husk-vmm, cgroup v2 and mounts, from configuration.toml.
pub struct HostSandbox {
    namespace: String,
    id: String,
    config_path: Option<PathBuf>,
    /// The shim's own cgroup before it joined the sandbox's (`sandbox_cgroup_only`): where it
    /// goes back before that cgroup is emptied and removed.
    shim_cgroup: std::sync::Mutex<Option<String>>,
    dir: PathBuf,
}

impl HostSandbox {
    pub fn new(namespace: &str, id: &str, config_path: Option<PathBuf>) -> HostSandbox {
        HostSandbox {
            namespace: namespace.into(),
            id: id.into(),
            config_path,
            shim_cgroup: std::sync::Mutex::new(None),
            dir: sandbox_dir(namespace, id),
        }
    }

    fn record(&self) -> Record {
        Record::new(&self.dir)
    }

    fn storage(&self) -> Option<SandboxStorage> {
        SandboxStorage::open(&self.dir).ok()
    }

    /// The VM to boot, from `configuration.toml`, and the configured internetworking model.
    fn vm_config(
        &self,
        storage: &SandboxStorage,
        cgroup_procs: Option<PathBuf>,
    ) -> Result<(VmConfig, NetworkModel, bool)> {
        let cfg = crate::config::load(self.config_path.as_deref())?;
        for w in &cfg.warnings {
            tracing::warn!("{w}");
        }
        let hv = &cfg.hypervisor;
        let vmm = match &hv.path {
            Some(p) => p.clone(),
            None => crate::vm::find_vmm().map_err(Error::Boot)?,
        };
        let (kernel, initrd) = match (&hv.kernel, &hv.initrd) {
            (Some(k), Some(i)) => (k.clone(), i.clone()),
            _ => {
                let (k, i) = crate::vm::find_guest_image().map_err(Error::Boot)?;
                (
                    hv.kernel.clone().unwrap_or(k),
                    hv.initrd.clone().unwrap_or(i),
                )
            }
        };
        for (key, path) in [("path", &vmm), ("kernel", &kernel), ("initrd", &initrd)] {
            if !path.is_file() {
                return Err(Error::MissingFile {
                    key: format!("{}: hypervisor.husk.{key}", cfg.source.display()),
                    path: path.clone(),
                });
            }
        }
        let mut params = hv.kernel_params.clone();
        if hv.enable_debug || cfg.runtime.enable_debug {
            params.push_str(" agent.log=debug");
        }
        let config = VmConfig {
            vmm,
            kernel,
            initrd,
            vcpus: hv.default_vcpus.clamp(1, 255) as u8,
            memory_mib: hv.default_memory.into(),
            kernel_params: Some(params.trim().to_string()).filter(|p| !p.is_empty()),
            boot_timeout: Duration::from_secs(cfg.agent.dial_timeout.into()),
            volumes: vec![Volume {
                host: storage.guest_share(),
                guest: GUEST_SHARE.into(),
                read_only: false,
            }],
            runtime_dir: Some(self.dir.join("vm")),
            fs_cache: Some(hv.virtio_fs_cache.clone()),
            fs_all_xattrs: false,
            cgroup_procs,
            net: Vec::new(),
        };
        Ok((
            config,
            cfg.runtime.internetworking_model,
            cfg.runtime.sandbox_cgroup_only,
        ))
    }

    /// Connects the VM to the pod's namespace `netns`: a tap beside each CNI interface, joined
    /// to it by tc redirects (recorded before anything else can fail). Returns the open taps and
    /// what the guest must configure.
    fn attach_network(&self, netns: &Path) -> Result<Vec<(OwnedFd, GuestInterface)>> {
        let users = network::namespace_users(netns)?;
        if users.is_shared() {
            let mut what = Vec::new();
            if !users.pids.is_empty() {
                what.push(format!("processes {:?} live in it", users.pids));
            }
            if !users.taps.is_empty() {
                what.push(format!(
                    "another husk sandbox's taps {:?} are in it",
                    users.taps
                ));
            }
            return Err(Error::NetnsInUse {
                netns: netns.into(),
                users: what.join("; "),
            });
        }
        let mut taps = Vec::new();
        for (cni, guest) in network::discover(netns)? {
            let (tap, attached) = network::attach(netns, &cni)?;
            let recorded = self
                .record()
                .update(|r| r.network.push(attached.clone()))
                .map_err(StorageError::Record);
            if let Err(e) = recorded {
                let _ = network::detach(&attached);
                return Err(e.into());
            }
            tracing::info!(
                sandbox = %self.id,
                interface = %cni.name,
                tap = %attached.tap_name,
                addresses = ?guest.addresses,
                "pod interface connected to the VM"
            );
            taps.push((tap, guest));
        }
        Ok(taps)
    }

    fn boot_inner(&self, req: BootRequest) -> Result<BootedVm> {
        let (spec_cgroup, netns) = (req.cgroup, req.netns);
        // A dead shim of the same sandbox may have left things behind.
        if self.dir.exists() {
            tracing::warn!(dir = %self.dir.display(), "cleaning up after an earlier shim of this sandbox");
            self.teardown();
        }
        let storage = SandboxStorage::create(&self.dir)?;
        let cgroup = crate::cgroup::sandbox_path(spec_cgroup, &self.namespace, &self.id);
        let existed = crate::cgroup::check_unused(&cgroup).map_err(Error::Cgroup)?;
        // Recorded first, so that every cleanup (this one's failure, a crash) finds it; only a
        // cgroup we create is ours to kill and remove.
        if !existed {
            self.record()
                .update(|r| r.cgroup = Some(cgroup.clone()))
                .map_err(StorageError::Record)?;
        }
        let cgroup_procs = crate::cgroup::create(&cgroup).map_err(Error::Cgroup)?;
        if cgroup_procs.is_none() {
            tracing::warn!("no cgroup v2 hierarchy: the VMM stays in the shim's cgroup");
        }
        let (mut config, model, shim_too) = self.vm_config(&storage, cgroup_procs)?;
        // The VMM always runs in the sandbox cgroup; with sandbox_cgroup_only the shim joins it,
        // so the pod's cgroup accounts for every process of the sandbox.
        if shim_too && config.cgroup_procs.is_some() {
            let own = crate::cgroup::own_path();
            crate::cgroup::join(&cgroup).map_err(Error::Cgroup)?;
            *self.shim_cgroup.lock().expect("shim cgroup lock") = own;
            tracing::info!(%cgroup, "sandbox_cgroup_only: the shim joined the sandbox cgroup");
        }
        config.memory_mib =
            vm_memory_mib(config.memory_mib, req.extra_memory_mib, host_memory_mib());
        // The taps stay open here until the VMM holds them; then they live as long as it does.
        let taps = match (netns, model) {
            (Some(ns), NetworkModel::TcFilter) => self.attach_network(ns)?,
            _ => Vec::new(),
        };
        config.net = taps
            .iter()
            .map(|(tap, g)| NetDevice {
                tap_fd: tap.as_raw_fd(),
                mac: g.mac,
                mtu: g.mtu,
            })
            .collect();
        // A guest that resets or hangs before its agent answers gets one more boot: the failure
        // is logged with its console (and counted by the test harness); a second one fails.
        let mut attempt = 1;
        let vm = loop {
            match Vm::start(&config, Box::new(AgentLog)) {
                Ok(vm) => break vm,
                Err(e) if attempt == 1 && e.guest_failed_to_boot() => {
                    tracing::warn!(sandbox = %self.id, error = %e, "the guest did not boot; booting it again");
                    attempt += 1;
                }
                Err(e) => return Err(Error::Boot(e)),
            }
        };
        let identity = ProcessIdentity::of(vm.vmm_pid());
        self.record()
            .update(|r| r.vmm = identity)
            .map_err(StorageError::Record)?;
        // The VMM holds the taps now: they go away with it.
        let guests: Vec<GuestInterface> = taps.into_iter().map(|(_, g)| g).collect();
        configure_guest_network(&vm.agent, &guests)?;
        // Only where the guest is connected to the pod's namespace.
        let forwarder = match netns.filter(|_| model == NetworkModel::TcFilter) {
            Some(ns) => match vm.agent.process_connection() {
                Ok(conn) => Some(crate::forward::start(ns, conn, vm.vsock_path())),
                Err(e) => {
                    tracing::warn!(error = %e, "no port forwarding into the pod");
                    None
                }
            },
            None => None,
        };
        tracing::info!(sandbox = %self.id, vmm_pid = vm.vmm_pid(), "sandbox VM up");
        Ok(BootedVm {
            agent: vm.agent.clone(),
            vmm_pid: vm.vmm_pid(),
            memory_mib: config.memory_mib,
            vcpus: config.vcpus.into(),
            cgroup: config.cgroup_procs.as_ref().map(|_| cgroup.clone()),
            _forwarder: forwarder,
            vm: Some(vm),
        })
    }
}

impl Host for HostSandbox {
    fn boot(&self, req: BootRequest) -> Result<BootedVm> {
        self.boot_inner(req).inspect_err(|_| self.teardown())
    }

    fn mount_container(
        &self,
        id: &str,
        bundle: &Path,
        rootfs: &[RootfsMount],
        binds: &[Bind],
    ) -> Result<()> {
        let storage = SandboxStorage::open(&self.dir)?;
        let record = self.record();
        let mut note = |rel: &str| {
            record
                .update(|r| r.containers.entry(id.into()).or_default().push(rel.into()))
                .map_err(StorageError::Record)
        };
        storage.mount_rootfs(id, bundle, rootfs, &mut note)?;
        for b in binds {
            storage.mount_bind(b, &mut note)?;
        }
        Ok(())
    }

    fn unmount_container(&self, id: &str) {
        let Some(storage) = self.storage() else {
            return;
        };
        let record = self.record();
        let targets = record
            .load()
            .map(|r| r.containers.get(id).cloned().unwrap_or_default())
            .unwrap_or_default();
        storage.remove_container(id, &targets);
        if let Err(e) = record.update(|r| r.containers.remove(id)) {
            tracing::warn!(container = id, error = %e, "cannot update the sandbox record");
        }
    }

    fn teardown(&self) {
        let record = self.record();
        let rec = match record.load() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the sandbox record; removing what the layout names");
                Default::default()
            }
        };
        let storage = self.storage();
        if let Some(storage) = &storage {
            for (id, targets) in &rec.containers {
                storage.remove_container(id, targets);
            }
        }
        // The VMM of a crashed shim; our own is gone already.
        if let Some(vmm) = rec.vmm {
            vmm.kill();
        }
        // Only what we recorded: the CNI interfaces stay as CNI made them.
        for attached in &rec.network {
            if let Err(e) = network::detach(attached) {
                tracing::warn!(tap = %attached.tap_name, error = %e, "cannot disconnect the pod's network");
            }
        }
        if let Some(cgroup) = &rec.cgroup {
            // A shim inside would be killed with the cgroup's processes.
            if let Some(own) = self.shim_cgroup.lock().expect("shim cgroup lock").take() {
                if let Err(e) = crate::cgroup::join(&own) {
                    tracing::warn!(error = %e, "cannot leave the sandbox cgroup");
                }
            }
            crate::cgroup::remove(cgroup);
        }
        let _ = std::fs::remove_dir_all(self.dir.join("vm"));
        if let Some(storage) = storage {
            storage.teardown(&[Record::file_name()]);
        }
    }
}

/// `containerd-shim-kata-v2 delete`: the shim of `sandbox` died; remove container `id`'s
/// mounts, and the VM and sandbox directory when no other container is left.
pub fn cleanup_after_crash(namespace: &str, sandbox: &str, id: &str) {
    let host = HostSandbox::new(namespace, sandbox, None);
    if !host.dir.exists() {
        return;
    }
    host.unmount_container(id);
    let others = host
        .record()
        .load()
        .map(|r| r.containers.len())
        .unwrap_or(0);
    if others == 0 {
        host.teardown();
    }
}

/// Gives the guest the pod's interfaces (found by MAC), routes and neighbours, as CNI left
/// them in the pod's namespace.
fn configure_guest_network(agent: &Agent, guests: &[GuestInterface]) -> Result<()> {
    use husk_agent_protocol::agent as pb;
    let mut routes = Vec::new();
    let mut neighbours = Vec::new();
    for (i, g) in guests.iter().enumerate() {
        let name = format!("eth{i}");
        let interface = pb::Interface {
            name: name.clone(),
            hw_addr: mac_text(g.mac),
            mtu: g.mtu.into(),
            ip_addresses: g
                .addresses
                .iter()
                .map(|a| format!("{}/{}", a.addr, a.prefix_len))
                .collect(),
            ..Default::default()
        };
        agent
            .api()
            .update_interface(
                ctx(),
                &pb::UpdateInterfaceRequest {
                    interface: Some(interface).into(),
                    ..Default::default()
                },
            )
            .map_err(Error::agent("configure the guest's network interface"))?;
        for r in &g.routes {
            routes.push(pb::Route {
                dest: r
                    .dest
                    .map(|d| format!("{}/{}", d.addr, d.prefix_len))
                    .unwrap_or_default(),
                gateway: r.gateway.map(|a| a.to_string()).unwrap_or_default(),
                device: name.clone(),
                source: r.source.map(|a| a.to_string()).unwrap_or_default(),
                scope: r.scope.into(),
                ..Default::default()
            });
        }
        for n in &g.neighbours {
            neighbours.push(pb::ARPNeighbor {
                to_ip: n.ip.to_string(),
                lladdr: mac_text(n.mac),
                device: name.clone(),
                ..Default::default()
            });
        }
    }
    if !routes.is_empty() {
        agent
            .api()
            .update_routes(
                ctx(),
                &pb::UpdateRoutesRequest {
                    routes,
                    ..Default::default()
                },
            )
            .map_err(Error::agent("set the guest's routes"))?;
    }
    if !neighbours.is_empty() {
        agent
            .api()
            .add_arp_neighbors(
                ctx(),
                &pb::AddARPNeighborsRequest {
                    neighbors: neighbours,
                    ..Default::default()
                },
            )
            .map_err(Error::agent("add the guest's neighbour entries"))?;
    }
    Ok(())
}

fn mac_text(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Agent log lines become shim log lines.
struct AgentLog;

impl Write for AgentLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let line = text.trim_end();
        if !line.is_empty() {
            tracing::info!(target: "husk_agent", "{line}");
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_dirs_are_short_and_stable() {
        let a = sandbox_dir("k8s.io", &"f".repeat(64));
        assert_eq!(a, sandbox_dir("k8s.io", &"f".repeat(64)));
        assert_ne!(a, sandbox_dir("default", &"f".repeat(64)));
        // Room for "vm/vsock.sock_1025" within a socket path's 108 bytes.
        assert!(a.as_os_str().len() < 40);
    }

    #[test]
    fn vm_memory_adds_the_pods_and_stays_within_the_host() {
        assert_eq!(vm_memory_mib(256, 0, Some(8192)), 256);
        assert_eq!(vm_memory_mib(256, 512, Some(8192)), 768);
        assert_eq!(vm_memory_mib(256, u64::MAX, Some(8192)), 8192);
        assert_eq!(vm_memory_mib(256, 512, None), 768);
        // The administrator's default_memory is never cut.
        assert_eq!(vm_memory_mib(4096, 512, Some(1024)), 4096);
        assert!(host_memory_mib().is_some_and(|m| m > 0));
    }
}
