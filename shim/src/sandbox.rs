//! One sandbox (a pod, or one `ctr run` container): a VM that is Down → Booting → Up → Stopping
//! → Down, its containers and their processes. The first Create boots the VM; deleting the last
//! container stops it. No lock is held across a boot or an agent call: a slow boot or a slow
//! agent delays only the call that waits for it.
//!
//! Each started process gets its own agent connection for its blocking reads and its wait; the
//! health check has its own too (see `agent`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use husk_agent_protocol::agent as pb;
use husk_agent_protocol::agent_ttrpc::AgentServiceClient;

use crate::agent::{ctx, unbounded, AgentError};
use crate::container::{self, harmless_before_start, Container, Exit, Phase, Process, Stdio};
use crate::cpus::{self, CpuSet};
use crate::error::{Error, Result};
pub use crate::events::{Events, TaskEvent};
use crate::host::{BootRequest, BootedVm, Host};
use crate::io::{self as pio, FifoIo};
use crate::spec;
use crate::storage::{Bind, RootfsMount};

/// How often the shim asks the agent whether it is alive, how long each answer may take, and
/// how many missed answers in a row mean the guest is gone (its VMM is then killed: its
/// processes' waits fail, their tasks stop with status 255 and containerd can delete them).
#[derive(Clone, Copy, Debug)]
pub struct HealthPolicy {
    pub period: Duration,
    pub timeout: Duration,
    pub misses: u32,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            misses: 3,
        }
    }
}

pub struct CreateRequest {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: Vec<RootfsMount>,
    pub stdio: Stdio,
}

enum VmSlot {
    Down,
    Booting,
    Up(Arc<BootedVm>),
    Stopping,
}

struct Inner {
    vm: VmSlot,
    containers: HashMap<String, Container>,
    /// Ids being created or deleted: not in `containers`, but not free either.
    busy: HashSet<String>,
    shut_down: bool,
    /// The host CPUs each container with a cpuset asked for (`linux.resources.cpu.cpus`).
    cpusets: BTreeMap<String, CpuSet>,
    /// The guest cpuset each of those containers was last given.
    guest_cpusets: HashMap<String, String>,
    /// The OOM score adjustment of each workload container (not CRI's sandbox container).
    oom_scores: HashMap<String, i32>,
}

pub struct Sandbox {
    id: String,
    host: Box<dyn Host>,
    events: Arc<dyn Events>,
    health: HealthPolicy,
    inner: Mutex<Inner>,
    changed: Condvar,
    /// Held while the vCPUs are placed, so that two containers' placements do not interleave.
    placing: Mutex<()>,
}

impl Sandbox {
    pub fn new(
        id: &str,
        host: Box<dyn Host>,
        events: Arc<dyn Events>,
        health: HealthPolicy,
    ) -> Arc<Sandbox> {
        Arc::new(Sandbox {
            id: id.into(),
            host,
            events,
            health,
            inner: Mutex::new(Inner {
                vm: VmSlot::Down,
                containers: HashMap::new(),
                busy: HashSet::new(),
                shut_down: false,
                cpusets: BTreeMap::new(),
                guest_cpusets: HashMap::new(),
                oom_scores: HashMap::new(),
            }),
            changed: Condvar::new(),
            placing: Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("sandbox lock")
    }

    fn publish(&self, event: TaskEvent) {
        self.events.publish(event);
    }

    fn publish_exit(&self, p: &Process, exit: Exit) {
        self.publish(TaskEvent::Exit {
            id: p.container.clone(),
            process: p.id().to_string(),
            pid: p.pid,
            exit,
        });
    }

    /// The VM, if it is up.
    fn vm(&self) -> Result<Arc<BootedVm>> {
        match &self.lock().vm {
            VmSlot::Up(vm) => Ok(vm.clone()),
            _ => Err(Error::VmNotRunning),
        }
    }

    /// The process `exec_id` of container `id` (its init when empty), and the bundle.
    pub fn process(&self, id: &str, exec_id: &str) -> Result<(Arc<Process>, String)> {
        let inner = self.lock();
        let c = inner
            .containers
            .get(id)
            .ok_or_else(|| Error::ContainerNotFound(id.into()))?;
        Ok((c.process(exec_id)?, c.bundle.clone()))
    }

    /// The VM, booting it if it is down; waits for a boot or a stop in progress.
    fn acquire_vm(self: &Arc<Self>, req: BootRequest) -> Result<Arc<BootedVm>> {
        let mut inner = self.lock();
        loop {
            match &inner.vm {
                VmSlot::Up(vm) => return Ok(vm.clone()),
                VmSlot::Booting | VmSlot::Stopping => {
                    inner = self.changed.wait(inner).expect("sandbox lock")
                }
                VmSlot::Down => break,
            }
        }
        inner.vm = VmSlot::Booting;
        drop(inner);
        let booted = self.host.boot(req);
        let mut inner = self.lock();
        let result = match booted {
            Ok(vm) => {
                let vm = Arc::new(vm);
                inner.vm = VmSlot::Up(vm.clone());
                Ok(vm)
            }
            Err(e) => {
                inner.vm = VmSlot::Down;
                Err(e)
            }
        };
        drop(inner);
        self.changed.notify_all();
        if let Ok(vm) = &result {
            self.watch_oom(vm);
            self.watch_health(Arc::downgrade(vm));
        }
        result
    }

    /// Stops the VM and removes the sandbox's host state when no container is left.
    fn stop_if_idle(&self) {
        let vm = {
            let mut inner = self.lock();
            if !inner.containers.is_empty() || !inner.busy.is_empty() {
                return;
            }
            match std::mem::replace(&mut inner.vm, VmSlot::Stopping) {
                VmSlot::Up(vm) => vm,
                other => {
                    inner.vm = other;
                    return;
                }
            }
        };
        vm.kill();
        drop(vm);
        self.host.teardown();
        self.lock().vm = VmSlot::Down;
        self.changed.notify_all();
        tracing::info!(sandbox = %self.id, "sandbox VM stopped");
    }

    /// Ends the shim: no container is left and none may come.
    fn finish(&self) {
        self.lock().shut_down = true;
        self.changed.notify_all();
    }

    /// Blocks until the sandbox was shut down.
    pub fn wait_shutdown(&self) {
        let mut inner = self.lock();
        while !inner.shut_down {
            inner = self.changed.wait(inner).expect("sandbox lock");
        }
    }

    /// containerd's Shutdown: ends the shim if the sandbox has no container left.
    pub fn shutdown(&self) {
        {
            let inner = self.lock();
            if !inner.containers.is_empty() || !inner.busy.is_empty() {
                return;
            }
        }
        self.stop_if_idle();
        self.finish();
    }

    pub fn create(self: &Arc<Self>, req: CreateRequest) -> Result<u32> {
        // The id names host directories: nothing that could climb out of them.
        container::check_id(&req.id)?;
        let oci = spec::read_bundle_spec(&req.bundle)?;
        {
            let mut inner = self.lock();
            if inner.shut_down {
                return Err(Error::ShuttingDown);
            }
            if inner.containers.contains_key(&req.id) || !inner.busy.insert(req.id.clone()) {
                return Err(Error::ContainerExists(req.id));
            }
        }
        let created = self.create_in_vm(&req, oci);
        let pid = created.as_ref().map(|vm| vm.vmm_pid).unwrap_or(0);
        {
            let mut inner = self.lock();
            inner.busy.remove(&req.id);
            if created.is_ok() {
                let init = Process::new(&req.id, "", pid, req.stdio.clone(), Vec::new());
                inner.containers.insert(
                    req.id.clone(),
                    Container {
                        bundle: req.bundle.display().to_string(),
                        init: Arc::new(init),
                        execs: HashMap::new(),
                    },
                );
            }
        }
        if let Err(e) = created {
            self.stop_if_idle();
            let idle = {
                let inner = self.lock();
                inner.containers.is_empty() && inner.busy.is_empty()
            };
            if idle {
                self.finish();
            }
            return Err(e);
        }
        tracing::info!(container = %req.id, "created");
        self.publish(TaskEvent::Create {
            id: req.id.clone(),
            bundle: req.bundle.display().to_string(),
            rootfs: req.rootfs.clone(),
            stdio: req.stdio.clone(),
            pid,
        });
        Ok(pid)
    }

    /// Boots the VM if needed, mounts the container's files and creates it in the guest;
    /// undoes its own part on failure.
    fn create_in_vm(
        self: &Arc<Self>,
        req: &CreateRequest,
        oci: serde_json::Value,
    ) -> Result<Arc<BootedVm>> {
        // The pod's network: the first container's (a pod's sandbox container) decides; the
        // others share the VM's, as they would share the pod's namespace under runc.
        if let Some((ns, field)) = spec::host_namespace(&oci) {
            return Err(Error::HostNamespace { ns, field });
        }
        let netns = match spec::network(&oci) {
            spec::SpecNetwork::Host => unreachable!("host_namespace refused it"),
            spec::SpecNetwork::New => None,
            spec::SpecNetwork::Join(path) => Some(path),
        };
        let vm = self.acquire_vm(BootRequest {
            cgroup: oci["linux"]["cgroupsPath"].as_str(),
            netns: netns.as_deref(),
            extra_memory_mib: spec::memory_request_mib(&oci),
        })?;
        // A limit the VM cannot give would end in an OOM of the whole guest, not of the container.
        if let Some(limit) = oci["linux"]["resources"]["memory"]["limit"].as_i64() {
            let limit_mib = limit.max(0) as u64 >> 20;
            if vm.memory_mib > 0 && limit_mib > vm.memory_mib {
                return Err(Error::MemoryBeyondVm {
                    container: req.id.clone(),
                    limit_mib,
                    vm_mib: vm.memory_mib,
                });
            }
        }
        let cpuset = spec::cpuset(&oci).map_err(Error::Cpu)?;
        let oom_score_adj = spec::workload_oom_score_adj(&oci);
        let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let pod = spec::sandbox_id(&oci, &req.id);
        let mut guest = spec::for_guest(&req.id, oci, host_name.trim());
        if let Some(bytes) = spec::shm_in_guest(&mut guest, &pod, spec::host_tmpfs_size) {
            tracing::info!(container = %req.id, bytes, "/dev/shm: the pod's tmpfs in guest memory");
        }
        if let Some(set) = cpuset.clone() {
            let list = self.place_cpus(&vm, &req.id, Some(set))?;
            spec::set_guest_cpus(&mut guest.spec, list.as_deref().unwrap_or_default());
        }
        for d in &guest.dropped {
            tracing::warn!(container = %req.id, "ignored from the spec: {d}");
        }
        let binds: Vec<Bind> = guest
            .binds
            .iter()
            .map(|b| Bind {
                source: b.host.clone(),
                target: b.share_rel.clone(),
                read_only: b.read_only,
            })
            .collect();
        let result = self
            .host
            .mount_container(&req.id, &req.bundle, &req.rootfs, &binds)
            .and_then(|_| {
                let r = pb::CreateContainerRequest {
                    container_id: req.id.clone(),
                    oci_spec: serde_json::to_vec(&guest.spec).expect("a JSON value serialises"),
                    ..Default::default()
                };
                vm.agent
                    .api()
                    .create_container(ctx(), &r)
                    .map_err(Error::agent("create the container in the VM"))
            });
        if let Err(e) = result {
            self.host.unmount_container(&req.id);
            if cpuset.is_some() {
                if let Err(e) = self.place_cpus(&vm, &req.id, None) {
                    tracing::warn!(container = %req.id, error = %e.chain(), "cannot place the vCPUs again after a failed create");
                }
            }
            return Err(e);
        }
        if let Some(adj) = oom_score_adj {
            self.lock().oom_scores.insert(req.id.clone(), adj);
            self.apply_oom_score(&vm);
        }
        Ok(vm)
    }

    /// Places the vCPUs for the pod's cpusets once container `id`'s is `set` (`None`: it has
    /// none any more) and returns its guest cpuset. Siblings whose guest cpuset this moves are
    /// updated in the guest.
    fn place_cpus(&self, vm: &BootedVm, id: &str, set: Option<CpuSet>) -> Result<Option<String>> {
        let _one_at_a_time = self.placing.lock().expect("placing lock");
        let (before, all) = {
            let mut inner = self.lock();
            let before = inner.cpusets.clone();
            match &set {
                Some(s) => inner.cpusets.insert(id.into(), s.clone()),
                None => inner.cpusets.remove(id),
            };
            if set.is_none() && before == inner.cpusets {
                return Ok(None);
            }
            (before, inner.cpusets.clone())
        };
        let pod: CpuSet = all.values().flatten().copied().collect();
        let placement = match vm.place_vcpus(&pod) {
            Ok(p) => p,
            Err(e) => {
                self.lock().cpusets = before;
                return Err(e);
            }
        };
        let mut own = None;
        for (cid, wanted) in &all {
            let guest = cpus::format_list(&cpus::guest_cpus(wanted, &placement));
            if cid == id {
                own = Some(guest);
                continue;
            }
            if self.lock().guest_cpusets.get(cid) == Some(&guest) {
                continue;
            }
            let r = pb::UpdateContainerRequest {
                container_id: cid.clone(),
                resources: serde_json::json!({ "cpu": { "cpus": guest } })
                    .to_string()
                    .into_bytes(),
                ..Default::default()
            };
            match vm.agent.api().update_container(ctx(), &r) {
                Ok(_) => {
                    self.lock().guest_cpusets.insert(cid.clone(), guest);
                }
                Err(e) => {
                    let e = AgentError::from(e);
                    tracing::warn!(container = %cid, error = %e, "cannot move the container to its new vCPUs");
                }
            }
        }
        let mut inner = self.lock();
        match &own {
            Some(g) => inner.guest_cpusets.insert(id.into(), g.clone()),
            None => inner.guest_cpusets.remove(id),
        };
        Ok(own)
    }

    /// Gives the VMM the lowest OOM score adjustment of the pod's workload containers: killing
    /// the VMM kills them all, so it is protected as their most protected one.
    fn apply_oom_score(&self, vm: &BootedVm) {
        let Some(adj) = self.lock().oom_scores.values().min().copied() else {
            return;
        };
        if let Err(e) = vm.set_oom_score_adj(adj) {
            tracing::warn!(error = %e.chain(), "cannot give the VMM the pod's OOM score");
        }
    }

    pub fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<u32> {
        let (p, _) = self.process(id, exec_id)?;
        p.begin_start()?;
        match self.start_in_vm(&p) {
            Ok((conn, io)) => {
                p.started();
                self.watch_exit(conn, p.clone(), io.outputs_done, io.outputs);
                self.publish(if exec_id.is_empty() {
                    TaskEvent::Start {
                        id: id.into(),
                        pid: p.pid,
                    }
                } else {
                    TaskEvent::ExecStarted {
                        id: id.into(),
                        exec_id: exec_id.into(),
                        pid: p.pid,
                    }
                });
                Ok(p.pid)
            }
            Err(e) => {
                if let Some(exit) = p.start_failed() {
                    self.publish_exit(&p, exit);
                }
                Err(e)
            }
        }
    }

    fn start_in_vm(&self, p: &Process) -> Result<(AgentServiceClient, FifoIo)> {
        let vm = self.vm()?;
        let conn = vm.agent.process_connection().map_err(Error::agent(
            "connect to the agent for the process's streams",
        ))?;
        let (cid, eid) = (p.container.as_str(), p.exec_id.as_str());
        if eid.is_empty() {
            // Output readers first: nothing the process writes at once is lost.
            let io = self.start_io(&conn, p);
            let r = pb::StartContainerRequest {
                container_id: cid.into(),
                ..Default::default()
            };
            vm.agent
                .api()
                .start_container(ctx(), &r)
                .map_err(Error::agent("start the container"))?;
            Ok((conn, io))
        } else {
            let mut process: serde_json::Value = serde_json::from_slice(&p.spec)
                .map_err(|e| Error::InvalidRequest(format!("exec spec: {e}")))?;
            process["terminal"] = serde_json::Value::Bool(p.stdio.terminal);
            let r = pb::ExecProcessRequest {
                container_id: cid.into(),
                exec_id: eid.into(),
                oci_process: serde_json::to_vec(&process).expect("a JSON value serialises"),
                ..Default::default()
            };
            vm.agent
                .api()
                .exec_process(ctx(), &r)
                .map_err(Error::agent("start the exec"))?;
            let io = self.start_io(&conn, p);
            Ok((conn, io))
        }
    }

    /// Starts the process's stdio copiers. The stdin copier is known to CloseIO at once:
    /// containerd may close stdin while Start is still on its way (ctr run with a short input).
    fn start_io(&self, conn: &AgentServiceClient, p: &Process) -> FifoIo {
        let mut io = pio::start_fifo_io(conn, &p.container, &p.exec_id, &p.stdio);
        *p.stdin_copier.lock().expect("stdin lock") = io.stdin.take();
        io
    }

    pub fn delete(&self, id: &str, exec_id: &str) -> Result<(u32, Exit)> {
        if !exec_id.is_empty() {
            let p = {
                let mut inner = self.lock();
                let c = inner
                    .containers
                    .get_mut(id)
                    .ok_or_else(|| Error::ContainerNotFound(id.into()))?;
                let p = c.process(exec_id)?;
                if matches!(p.phase(), Phase::Running | Phase::Starting) {
                    return Err(Error::StillRunning(format!("Exec {exec_id}")));
                }
                c.execs.remove(exec_id);
                p
            };
            if let Some(exit) = p.never_ran(libc::SIGKILL as u32) {
                self.publish_exit(&p, exit);
            }
            return Ok((p.pid, p.wait()));
        }
        let c = {
            let mut inner = self.lock();
            let c = inner
                .containers
                .get(id)
                .ok_or_else(|| Error::ContainerNotFound(id.into()))?;
            if matches!(c.init.phase(), Phase::Running | Phase::Starting) {
                return Err(Error::StillRunning(format!("Container {id}")));
            }
            inner.busy.insert(id.into());
            inner.containers.remove(id).expect("looked up above")
        };
        for p in std::iter::once(&c.init).chain(c.execs.values()) {
            if let Some(exit) = p.never_ran(libc::SIGKILL as u32) {
                self.publish_exit(p, exit);
            }
        }
        if let Ok(vm) = self.vm() {
            let r = pb::RemoveContainerRequest {
                container_id: id.into(),
                ..Default::default()
            };
            if let Err(e) = vm.agent.api().remove_container(ctx(), &r) {
                let e = AgentError::from(e);
                tracing::warn!(container = %id, error = %e, "the agent could not remove the container");
            }
        }
        self.host.unmount_container(id);
        if let Ok(vm) = self.vm() {
            if let Err(e) = self.place_cpus(&vm, id, None) {
                tracing::warn!(container = %id, error = %e.chain(), "cannot place the vCPUs for the remaining cpusets");
            }
            if self.lock().oom_scores.remove(id).is_some() {
                self.apply_oom_score(&vm);
            }
        }
        {
            let mut inner = self.lock();
            inner.cpusets.remove(id);
            inner.guest_cpusets.remove(id);
            inner.oom_scores.remove(id);
            inner.busy.remove(id);
        }
        let exit = c.init.wait();
        tracing::info!(container = %id, "deleted");
        self.publish(TaskEvent::Delete {
            id: id.into(),
            pid: c.init.pid,
            exit,
        });
        self.stop_if_idle();
        Ok((c.init.pid, exit))
    }

    pub fn kill(&self, id: &str, exec_id: &str, signal: u32) -> Result<()> {
        let (p, _) = self.process(id, exec_id)?;
        if p.phase() == Phase::Created && !harmless_before_start(signal) {
            if let Some(exit) = p.never_ran(signal) {
                self.publish_exit(&p, exit);
                return Ok(());
            }
        }
        match p.phase() {
            Phase::Stopped => return Err(Error::Finished(p.id().into())),
            Phase::Created => return Ok(()),
            Phase::Starting | Phase::Running => {}
        }
        let r = pb::SignalProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            signal,
            ..Default::default()
        };
        self.vm()?
            .agent
            .api()
            .signal_process(ctx(), &r)
            .map_err(Error::agent("signal the process"))?;
        Ok(())
    }

    pub fn exec(&self, id: &str, exec_id: &str, stdio: Stdio, spec: Vec<u8>) -> Result<()> {
        if serde_json::from_slice::<serde_json::Value>(&spec).is_err() {
            return Err(Error::InvalidRequest(
                "the exec has no valid OCI process spec".into(),
            ));
        }
        {
            let mut inner = self.lock();
            let c = inner
                .containers
                .get_mut(id)
                .ok_or_else(|| Error::ContainerNotFound(id.into()))?;
            if exec_id.is_empty() {
                return Err(Error::InvalidRequest("an exec needs an exec id".into()));
            }
            if c.execs.contains_key(exec_id) || exec_id == id {
                return Err(Error::ExecExists(exec_id.into()));
            }
            let status = c.init.status();
            if status.phase != Phase::Running {
                return Err(Error::NotRunning(id.into()));
            }
            if status.paused {
                return Err(Error::Paused(id.into()));
            }
            let p = Process::new(id, exec_id, c.init.pid, stdio, spec);
            c.execs.insert(exec_id.into(), Arc::new(p));
        }
        self.publish(TaskEvent::ExecAdded {
            id: id.into(),
            exec_id: exec_id.into(),
        });
        Ok(())
    }

    /// Wait: blocks until the process stopped, however it stops (or never starts).
    pub fn wait(&self, id: &str, exec_id: &str) -> Result<Exit> {
        let (p, _) = self.process(id, exec_id)?;
        Ok(p.wait())
    }

    /// Freezes (Pause) or thaws (Resume) every process of a running container, in the guest.
    pub fn freeze(&self, id: &str, frozen: bool) -> Result<()> {
        let (p, _) = self.process(id, "")?;
        if p.phase() != Phase::Running {
            return Err(Error::NotRunning(id.into()));
        }
        let r = pb::FreezeContainerRequest {
            container_id: id.into(),
            frozen,
            ..Default::default()
        };
        let what = if frozen {
            "pause the container"
        } else {
            "resume the container"
        };
        self.vm()?
            .agent
            .api()
            .freeze_container(ctx(), &r)
            .map_err(Error::agent(what))?;
        p.set_paused(frozen);
        self.publish(if frozen {
            TaskEvent::Paused { id: id.into() }
        } else {
            TaskEvent::Resumed { id: id.into() }
        });
        Ok(())
    }

    /// The container's processes, by guest pid (as Kata reports them).
    pub fn pids(&self, id: &str) -> Result<Vec<u32>> {
        let (p, _) = self.process(id, "")?;
        if p.phase() == Phase::Created {
            // Not started: only the init exists.
            return Ok(vec![p.pid]);
        }
        let r = pb::ListProcessesRequest {
            container_id: id.into(),
            ..Default::default()
        };
        let list = self
            .vm()?
            .agent
            .api()
            .list_processes(ctx(), &r)
            .map_err(Error::agent("list the container's processes"))?;
        Ok(list.pids)
    }

    pub fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let (p, _) = self.process(id, exec_id)?;
        if !p.stdio.terminal {
            return Err(Error::NoTerminal);
        }
        let r = pb::TtyWinResizeRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            row: height,
            column: width,
            ..Default::default()
        };
        self.vm()?
            .agent
            .api()
            .tty_win_resize(ctx(), &r)
            .map_err(Error::agent("resize the terminal"))?;
        Ok(())
    }

    /// Closes the process's stdin once what containerd already wrote to the fifo is delivered.
    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let (p, _) = self.process(id, exec_id)?;
        let vm = self.vm()?;
        let copier = p.stdin_copier.lock().expect("stdin lock").take();
        std::thread::spawn(move || {
            if let Some(h) = copier {
                for _ in 0..100 {
                    if h.is_finished() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            pio::close_stdin(vm.agent.api(), &p.container, &p.exec_id);
        });
        Ok(())
    }

    /// Applies new resources (OCI `LinuxResources` as JSON) to the container.
    /// A cpuset names host CPUs: the vCPUs are placed anew and the guest gets its own numbers.
    pub fn update(&self, id: &str, resources: Vec<u8>) -> Result<()> {
        self.process(id, "")?;
        let vm = self.vm()?;
        let mut value: serde_json::Value = serde_json::from_slice(&resources)
            .map_err(|e| Error::InvalidRequest(format!("the resources are not JSON: {e}")))?;
        let wanted = value["cpu"]["cpus"]
            .as_str()
            .filter(|c| !c.trim().is_empty());
        let resources = match wanted {
            Some(list) => {
                let set = cpus::parse_list(list).map_err(Error::Cpu)?;
                let guest = self.place_cpus(&vm, id, Some(set))?;
                spec::set_guest_cpus_of(&mut value, guest.as_deref().unwrap_or_default());
                value.to_string().into_bytes()
            }
            None => resources,
        };
        let r = pb::UpdateContainerRequest {
            container_id: id.into(),
            resources,
            ..Default::default()
        };
        vm.agent
            .api()
            .update_container(ctx(), &r)
            .map_err(Error::agent("update the container's resources"))?;
        Ok(())
    }

    pub fn stats(&self, id: &str) -> Result<pb::StatsContainerResponse> {
        self.process(id, "")?;
        let r = pb::StatsContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        self.vm()?
            .agent
            .api()
            .stats_container(ctx(), &r)
            .map_err(Error::agent("read the container's statistics"))
    }

    /// The VMM's pid, 0 while no VM runs.
    pub fn vmm_pid(&self) -> u32 {
        match &self.lock().vm {
            VmSlot::Up(vm) => vm.vmm_pid,
            _ => 0,
        }
    }

    /// Waits for the process in the guest on its own connection, lets its output drain, then
    /// records and announces its exit.
    fn watch_exit(
        self: &Arc<Self>,
        conn: AgentServiceClient,
        p: Arc<Process>,
        outputs_done: std::sync::mpsc::Receiver<()>,
        outputs: usize,
    ) {
        let this = self.clone();
        std::thread::spawn(move || {
            let req = pb::WaitProcessRequest {
                container_id: p.container.clone(),
                exec_id: p.exec_id.clone(),
                ..Default::default()
            };
            let status = match conn.wait_process(unbounded(), &req) {
                Ok(r) => r.status as u32,
                Err(e) => {
                    let console = this.vm().map(|vm| vm.console_tail()).unwrap_or_default();
                    tracing::warn!(
                        container = %p.container,
                        error = %AgentError::from(e),
                        %console,
                        "lost the process: the agent connection failed"
                    );
                    container::UNKNOWN_EXIT
                }
            };
            // Output written just before the exit is still in flight: let it reach the fifos,
            // but do not hang on a background process that keeps the streams open.
            for _ in 0..outputs {
                if outputs_done.recv_timeout(Duration::from_secs(5)).is_err() {
                    break;
                }
            }
            if let Some(exit) = p.exited(status) {
                this.publish_exit(&p, exit);
            }
        });
    }

    /// Publishes an OOM event for every out-of-memory kill the agent reports in one of this
    /// sandbox's containers, until the VM goes.
    fn watch_oom(self: &Arc<Self>, vm: &BootedVm) {
        let conn = match vm.agent.process_connection() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "no OOM events: cannot connect to the agent");
                return;
            }
        };
        let this = Arc::downgrade(self);
        std::thread::spawn(move || loop {
            let ev = match conn.get_oom_event(unbounded(), &pb::GetOOMEventRequest::default()) {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::debug!(error = %AgentError::from(e), "no more OOM events");
                    return;
                }
            };
            let Some(this) = this.upgrade() else { return };
            // The guest names the container: only one of ours gets an event.
            if this.lock().containers.contains_key(&ev.container_id) {
                tracing::info!(container = %ev.container_id, "out-of-memory kill in the guest");
                this.publish(TaskEvent::Oom {
                    id: ev.container_id,
                });
            } else {
                tracing::warn!("the guest reported an OOM kill for a container it does not have");
            }
        });
    }

    /// Kills the VMM of a guest that stopped answering (a hung kernel, a stuck agent). A dead
    /// VMM needs nothing of this: its connections close on their own. Ends with the VM.
    fn watch_health(&self, vm: Weak<BootedVm>) {
        let policy = self.health;
        let sandbox = self.id.clone();
        std::thread::spawn(move || {
            let mut missed = 0;
            loop {
                std::thread::sleep(policy.period);
                let Some(vm) = vm.upgrade() else { return };
                match vm.agent.check_health(policy.timeout) {
                    Ok(()) => missed = 0,
                    Err(e) => {
                        missed += 1;
                        tracing::warn!(%sandbox, missed, error = %e, "the agent did not answer its health check");
                    }
                }
                if missed >= policy.misses {
                    tracing::error!(%sandbox, console = %vm.console_tail(), "the guest stopped answering: killing its VM");
                    vm.kill();
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
#[path = "sandbox_tests.rs"]
mod tests;
