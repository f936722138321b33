//! containerd's Task API for one sandbox: every container of the sandbox runs in the same husk
//! VM. The first Create boots the VM; deleting the last container stops it.
//!
//! On the host, each container's rootfs (the mounts containerd gives in Create) and the host
//! paths it bind-mounts are mounted under the sandbox's share directory, which the VM sees over
//! virtio-fs at [`GUEST_SHARE`]. The agent runs the container from the rewritten OCI spec.
//! Container IO goes through the agent's stream RPCs to containerd's fifos.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use containerd_shim::api::*;
use containerd_shim::event::Event;
use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::events::task::*;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::empty::Empty;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageDyn};
use containerd_shim::protos::shim::shim_ttrpc::Task;
use containerd_shim::protos::ttrpc::{self, get_status, Code, TtrpcContext};
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::publisher::RemotePublisher;
use husk_agent_protocol::agent as pb;
use husk_agent_protocol::agent_ttrpc::AgentServiceClient;
use husk_agent_protocol::health::CheckRequest;
use husk_agent_protocol::ttrpc as attrpc;

use crate::config;
use crate::sandbox::{rpc_message, Sandbox, SandboxConfig, Volume};
use crate::spec::{self, GUEST_SHARE};

type TResult<T> = ttrpc::Result<T>;

fn status(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(get_status(code, msg.into()))
}

/// Maps an agent error to the code containerd expects, keeping the agent's message.
fn agent_error(what: &str, e: attrpc::Error) -> ttrpc::Error {
    let code = match &e {
        attrpc::Error::RpcStatus(s) => match s.code() {
            attrpc::Code::NOT_FOUND => Code::NOT_FOUND,
            attrpc::Code::ALREADY_EXISTS => Code::ALREADY_EXISTS,
            attrpc::Code::INVALID_ARGUMENT => Code::INVALID_ARGUMENT,
            attrpc::Code::FAILED_PRECONDITION => Code::FAILED_PRECONDITION,
            attrpc::Code::UNIMPLEMENTED => Code::UNIMPLEMENTED,
            _ => Code::INTERNAL,
        },
        _ => Code::UNAVAILABLE,
    };
    status(code, format!("{what}: {}", rpc_message(&e)))
}

/// A bounded agent call context; blocking calls (reads, waits) use [`unbounded`].
fn ctx() -> attrpc::context::Context {
    attrpc::context::with_timeout(Duration::from_secs(30).as_nanos() as i64)
}

fn unbounded() -> attrpc::context::Context {
    attrpc::context::Context::default()
}

pub fn now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
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

/// Logs to containerd's `log` fifo in the bundle directory (containerd reads it into its own
/// log), or to stderr when there is none.
pub fn init_logging(fifo: &Path, debug: bool) {
    let level = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HUSK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
    {
        Ok(f) => {
            let _ = builder.with_writer(Mutex::new(f)).try_init();
        }
        Err(_) => {
            let _ = builder.with_writer(std::io::stderr).try_init();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Created,
    Running,
    Stopped,
}

struct ProcState {
    phase: Phase,
    /// Frozen by Pause (a running container's init only).
    paused: bool,
    exit_status: u32,
    exited_at: Option<Timestamp>,
}

/// One process of a container: its init (exec id empty) or an exec.
struct Proc {
    container: String,
    exec_id: String,
    pid: u32,
    stdin: String,
    stdout: String,
    stderr: String,
    terminal: bool,
    /// An exec's OCI process, as JSON.
    spec: Vec<u8>,
    state: Mutex<ProcState>,
    changed: Condvar,
    stdin_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Proc {
    fn new(container: &str, exec_id: &str, pid: u32, io: [&str; 3], terminal: bool) -> Proc {
        Proc {
            container: container.into(),
            exec_id: exec_id.into(),
            pid,
            stdin: io[0].into(),
            stdout: io[1].into(),
            stderr: io[2].into(),
            terminal,
            spec: Vec::new(),
            state: Mutex::new(ProcState {
                phase: Phase::Created,
                paused: false,
                exit_status: 0,
                exited_at: None,
            }),
            changed: Condvar::new(),
            stdin_thread: Mutex::new(None),
        }
    }

    fn phase(&self) -> Phase {
        self.state.lock().expect("proc lock").phase
    }

    fn wait(&self) -> (u32, Timestamp) {
        let mut st = self.state.lock().expect("proc lock");
        while st.phase != Phase::Stopped {
            st = self.changed.wait(st).expect("proc lock");
        }
        (st.exit_status, st.exited_at.clone().unwrap_or_default())
    }

    fn state_response(&self, bundle: &str) -> StateResponse {
        let st = self.state.lock().expect("proc lock");
        StateResponse {
            id: self.container.clone(),
            exec_id: self.exec_id.clone(),
            bundle: bundle.into(),
            pid: self.pid,
            status: match st.phase {
                Phase::Created => Status::CREATED,
                Phase::Running if st.paused => Status::PAUSED,
                Phase::Running => Status::RUNNING,
                Phase::Stopped => Status::STOPPED,
            }
            .into(),
            stdin: self.stdin.clone(),
            stdout: self.stdout.clone(),
            stderr: self.stderr.clone(),
            terminal: self.terminal,
            exit_status: st.exit_status,
            exited_at: st.exited_at.clone().into(),
            ..Default::default()
        }
    }
}

struct Container {
    bundle: String,
    /// Host mount points under the share, innermost last (unmounted in reverse).
    mounts: Vec<PathBuf>,
    init: Arc<Proc>,
    execs: HashMap<String, Arc<Proc>>,
}

/// The running VM of the sandbox and where its share is.
struct Vm {
    sandbox: Sandbox,
    share: PathBuf,
}

#[derive(Default)]
struct State {
    vm: Option<Arc<Vm>>,
    containers: HashMap<String, Container>,
}

pub struct TaskService {
    namespace: String,
    sandbox_id: String,
    config_path: Option<PathBuf>,
    /// containerd's ttrpc address (TTRPC_ADDRESS) and our connection to it; a containerd that
    /// restarted gets a new one.
    events_address: String,
    publisher: Mutex<RemotePublisher>,
    state: Mutex<State>,
    shutdown: (Mutex<bool>, Condvar),
}

impl TaskService {
    pub fn new(
        namespace: &str,
        sandbox_id: &str,
        config_path: Option<PathBuf>,
        events_address: &str,
        publisher: RemotePublisher,
    ) -> TaskService {
        TaskService {
            namespace: namespace.into(),
            sandbox_id: sandbox_id.into(),
            config_path,
            events_address: events_address.into(),
            publisher: Mutex::new(publisher),
            state: Mutex::new(State::default()),
            shutdown: (Mutex::new(false), Condvar::new()),
        }
    }

    /// Blocks until containerd shut the shim down (or the last container went away).
    pub fn wait_shutdown(&self) {
        let mut done = self.shutdown.0.lock().expect("shutdown lock");
        while !*done {
            done = self.shutdown.1.wait(done).expect("shutdown lock");
        }
    }

    fn publish<E: Event + Message + MessageDyn + Clone>(&self, event: E) {
        let topic = event.topic();
        let ctx = || ttrpc::context::with_timeout(Duration::from_secs(5).as_nanos() as i64);
        let mut publisher = self.publisher.lock().expect("publisher lock");
        let Err(e) = publisher.publish(ctx(), &topic, &self.namespace, Box::new(event.clone()))
        else {
            return;
        };
        // containerd may have restarted: connect again, once.
        let retried = RemotePublisher::new(&self.events_address)
            .map_err(|e| e.to_string())
            .and_then(|p| {
                *publisher = p;
                publisher
                    .publish(ctx(), &topic, &self.namespace, Box::new(event))
                    .map_err(|e| e.to_string())
            });
        match retried {
            Ok(()) => tracing::info!(topic, "reconnected to containerd to publish events"),
            Err(again) => {
                tracing::warn!(topic, error = %e, retry = %again, "cannot publish event")
            }
        }
    }

    fn dir(&self) -> PathBuf {
        sandbox_dir(&self.namespace, &self.sandbox_id)
    }

    /// Boots the sandbox VM from configuration.toml, in the cgroup the first container's spec
    /// names (`spec_cgroup`).
    fn boot(&self, spec_cgroup: Option<&str>) -> TResult<Arc<Vm>> {
        let cfg = config::load(self.config_path.as_deref())
            .map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?;
        for w in &cfg.warnings {
            tracing::warn!("{w}");
        }
        let source = cfg.source.display().to_string();
        let hv = &cfg.hypervisor;
        let vmm = match &hv.path {
            Some(p) => p.clone(),
            None => crate::sandbox::find_vmm()
                .map_err(|e| status(Code::FAILED_PRECONDITION, e.to_string()))?,
        };
        let (kernel, initrd) = match (&hv.kernel, &hv.initrd) {
            (Some(k), Some(i)) => (k.clone(), i.clone()),
            _ => {
                let (k, i) = crate::sandbox::find_guest_image()
                    .map_err(|e| status(Code::FAILED_PRECONDITION, e.to_string()))?;
                (
                    hv.kernel.clone().unwrap_or(k),
                    hv.initrd.clone().unwrap_or(i),
                )
            }
        };
        for (key, path) in [("path", &vmm), ("kernel", &kernel), ("initrd", &initrd)] {
            if !path.is_file() {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!(
                        "{}: hypervisor.husk.{key}: {} does not exist; install husk's guest \
                         image and VMM (make install) or fix the path",
                        source,
                        path.display()
                    ),
                ));
            }
        }
        let dir = self.dir();
        let share = dir.join("shared");
        std::fs::create_dir_all(&share)
            .map_err(|e| status(Code::INTERNAL, format!("{}: {e}", share.display())))?;
        let cgroup = crate::cgroup::sandbox_path(spec_cgroup, &self.namespace, &self.sandbox_id);
        // Recorded first, so that every cleanup (this one's failure, a crash) finds it.
        let _ = std::fs::write(dir.join("cgroup"), &cgroup);
        let cgroup_procs = crate::cgroup::create(&cgroup).map_err(|e| {
            remove_sandbox_dir(&dir);
            status(Code::FAILED_PRECONDITION, e.to_string())
        })?;
        if cgroup_procs.is_none() {
            tracing::warn!("no cgroup v2 hierarchy: the VMM stays in the shim's cgroup");
        }
        if cfg.runtime.sandbox_cgroup_only {
            tracing::info!(%cgroup, "sandbox_cgroup_only: the VMM is in the sandbox cgroup; the shim stays in its own");
        }
        let mut params = hv.kernel_params.clone();
        if hv.enable_debug || cfg.runtime.enable_debug {
            params.push_str(" agent.log=debug");
        }
        let sb_config = SandboxConfig {
            vmm,
            kernel,
            initrd,
            vcpus: hv.default_vcpus.clamp(1, 255) as u8,
            memory_mib: hv.default_memory.into(),
            kernel_params: Some(params.trim().to_string()).filter(|p| !p.is_empty()),
            boot_timeout: Duration::from_secs(cfg.agent.dial_timeout.into()),
            volumes: vec![Volume {
                host: share.clone(),
                guest: GUEST_SHARE.into(),
                read_only: false,
            }],
            runtime_dir: Some(dir.join("vm")),
            fs_cache: Some(hv.virtio_fs_cache.clone()),
            cgroup_procs,
        };
        // A guest that resets or hangs before its agent answers gets one more boot: the failure
        // is logged with its console, and a second one fails the create.
        let mut attempt = 1;
        let sandbox = loop {
            let log: Box<dyn Write + Send> = Box::new(AgentLog);
            match Sandbox::start(&sb_config, log) {
                Ok(sandbox) => break sandbox,
                Err(e) if attempt == 1 && e.guest_failed_to_boot() => {
                    tracing::warn!(sandbox = %self.sandbox_id, error = %e, "the guest did not boot; booting it again");
                    attempt += 1;
                }
                Err(e) => {
                    remove_sandbox_dir(&dir);
                    return Err(status(
                        Code::FAILED_PRECONDITION,
                        format!("cannot start the sandbox VM: {e}"),
                    ));
                }
            }
        };
        let _ = std::fs::write(dir.join("vmm.pid"), sandbox.vmm_pid().to_string());
        tracing::info!(sandbox = %self.sandbox_id, vmm_pid = sandbox.vmm_pid(), "sandbox VM up");
        Ok(Arc::new(Vm { sandbox, share }))
    }

    /// Stops the VM when no container is left; with `exit`, also ends the shim.
    fn stop_vm_if_idle(&self, st: &mut State) {
        if st.containers.is_empty() {
            if let Some(vm) = st.vm.take() {
                drop(vm);
                remove_sandbox_dir(&self.dir());
                tracing::info!(sandbox = %self.sandbox_id, "sandbox VM stopped");
            }
        }
    }

    /// Freezes (Pause) or thaws (Resume) every process of a running container, in the guest.
    fn freeze(&self, id: &str, frozen: bool) -> TResult<()> {
        let (p, _) = self.proc(id, "")?;
        if p.phase() != Phase::Running {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("container {id} is not running"),
            ));
        }
        let vm = self.vm()?;
        let r = pb::FreezeContainerRequest {
            container_id: id.into(),
            frozen,
            ..Default::default()
        };
        vm.sandbox.agent.freeze_container(ctx(), &r).map_err(|e| {
            agent_error(
                if frozen {
                    "cannot pause the container"
                } else {
                    "cannot resume the container"
                },
                e,
            )
        })?;
        p.state.lock().expect("proc lock").paused = frozen;
        Ok(())
    }

    fn vm(&self) -> TResult<Arc<Vm>> {
        self.state
            .lock()
            .expect("state lock")
            .vm
            .clone()
            .ok_or_else(|| status(Code::FAILED_PRECONDITION, "the sandbox VM is not running"))
    }

    fn proc(&self, id: &str, exec_id: &str) -> TResult<(Arc<Proc>, String)> {
        let st = self.state.lock().expect("state lock");
        let c = st
            .containers
            .get(id)
            .ok_or_else(|| status(Code::NOT_FOUND, format!("container {id} not found")))?;
        let p = if exec_id.is_empty() {
            c.init.clone()
        } else {
            c.execs.get(exec_id).cloned().ok_or_else(|| {
                status(
                    Code::NOT_FOUND,
                    format!("exec {exec_id} not found in container {id}"),
                )
            })?
        };
        Ok((p, c.bundle.clone()))
    }

    /// Mounts the rootfs and the shared binds of container `id`, and creates it in the guest.
    fn create_in_vm(
        &self,
        vm: &Vm,
        req: &CreateTaskRequest,
        oci: serde_json::Value,
        mounts: &mut Vec<PathBuf>,
    ) -> TResult<()> {
        let bundle = Path::new(&req.bundle);
        let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let guest = spec::for_guest(&req.id, oci, host_name.trim());
        for d in &guest.dropped {
            tracing::warn!(container = %req.id, "ignored from the spec: {d}");
        }
        let rootfs = vm.share.join(&req.id).join("rootfs");
        std::fs::create_dir_all(&rootfs)
            .map_err(|e| status(Code::INTERNAL, format!("{}: {e}", rootfs.display())))?;
        if req.rootfs.is_empty() {
            bind_mount(&bundle.join("rootfs"), &rootfs, false)?;
            mounts.push(rootfs.clone());
        }
        for m in &req.rootfs {
            mount_fs(&m.type_, &m.source, &m.options, &rootfs)?;
            mounts.push(rootfs.clone());
        }
        for b in &guest.binds {
            let target = vm.share.join(&b.share_rel);
            let meta = std::fs::metadata(&b.host).map_err(|e| {
                status(
                    Code::INVALID_ARGUMENT,
                    format!("bind mount source {}: {e}", b.host.display()),
                )
            })?;
            let made = if meta.is_dir() {
                std::fs::create_dir_all(&target)
            } else {
                std::fs::create_dir_all(target.parent().expect("share path has a parent"))
                    .and_then(|_| File::create(&target).map(|_| ()))
            };
            made.map_err(|e| status(Code::INTERNAL, format!("{}: {e}", target.display())))?;
            bind_mount(&b.host, &target, b.read_only)?;
            mounts.push(target);
        }
        let json = serde_json::to_vec(&guest.spec).expect("a JSON value serialises");
        let req_agent = pb::CreateContainerRequest {
            container_id: req.id.clone(),
            oci_spec: json,
            ..Default::default()
        };
        vm.sandbox
            .agent
            .create_container(ctx(), &req_agent)
            .map_err(|e| agent_error("cannot create the container in the VM", e))?;
        Ok(())
    }

    /// Copies the process's output to containerd's fifos and containerd's input to it. Returns
    /// a receiver that yields once per output stream finished.
    fn start_io(&self, agent: &AgentServiceClient, p: &Arc<Proc>) -> mpsc::Receiver<()> {
        let (done_tx, done_rx) = mpsc::channel();
        let streams: Vec<(bool, String)> = if p.terminal {
            vec![(false, p.stdout.clone())]
        } else {
            vec![(false, p.stdout.clone()), (true, p.stderr.clone())]
        };
        for (is_err, path) in streams {
            let agent = agent.clone();
            let (cid, eid) = (p.container.clone(), p.exec_id.clone());
            let tx = done_tx.clone();
            std::thread::spawn(move || {
                copy_output(&agent, &cid, &eid, is_err, &path);
                let _ = tx.send(());
            });
        }
        if p.stdin.is_empty() {
            if !p.terminal {
                // No input: the process reads EOF, as it would from /dev/null.
                let req = pb::CloseStdinRequest {
                    container_id: p.container.clone(),
                    exec_id: p.exec_id.clone(),
                    ..Default::default()
                };
                let _ = agent.close_stdin(ctx(), &req);
            }
        } else {
            let agent = agent.clone();
            let (cid, eid, path) = (p.container.clone(), p.exec_id.clone(), p.stdin.clone());
            let h = std::thread::spawn(move || copy_input(&agent, &cid, &eid, &path));
            *p.stdin_thread.lock().expect("stdin lock") = Some(h);
        }
        done_rx
    }

    /// Publishes TaskOOM for every out-of-memory kill the agent reports, until the VM goes.
    fn watch_oom(self: &Arc<Self>, vm: &Vm) {
        let this = self.clone();
        let agent = vm.sandbox.agent.clone();
        std::thread::spawn(move || loop {
            match agent.get_oom_event(unbounded(), &pb::GetOOMEventRequest::default()) {
                Ok(ev) => {
                    tracing::info!(container = %ev.container_id, "out-of-memory kill in the guest");
                    this.publish(TaskOOM {
                        container_id: ev.container_id,
                        ..Default::default()
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %rpc_message(&e), "no more OOM events");
                    return;
                }
            }
        });
    }

    /// Waits for the process in the guest, lets its output drain, then records and announces
    /// its exit.
    fn watch_exit(self: &Arc<Self>, vm: Arc<Vm>, p: Arc<Proc>, io: mpsc::Receiver<()>) {
        let this = self.clone();
        let agent = vm.sandbox.agent.clone();
        std::thread::spawn(move || {
            let req = pb::WaitProcessRequest {
                container_id: p.container.clone(),
                exec_id: p.exec_id.clone(),
                ..Default::default()
            };
            let code = match agent.wait_process(unbounded(), &req) {
                Ok(r) => r.status as u32,
                Err(e) => {
                    tracing::warn!(
                        container = %p.container,
                        error = %rpc_message(&e),
                        console = %vm.sandbox.console_tail(),
                        "lost the process: the agent connection failed"
                    );
                    255
                }
            };
            // Output written just before the exit is still in flight: let it reach the fifos,
            // but do not hang on a background process that keeps the streams open.
            let streams = if p.terminal { 1 } else { 2 };
            for _ in 0..streams {
                if io.recv_timeout(Duration::from_secs(5)).is_err() {
                    break;
                }
            }
            let ts = now();
            {
                let mut st = p.state.lock().expect("proc lock");
                st.phase = Phase::Stopped;
                st.exit_status = code;
                st.exited_at = Some(ts.clone());
            }
            this.publish(TaskExit {
                container_id: p.container.clone(),
                id: if p.exec_id.is_empty() {
                    p.container.clone()
                } else {
                    p.exec_id.clone()
                },
                pid: p.pid,
                exit_status: code,
                exited_at: Some(ts).into(),
                ..Default::default()
            });
            p.changed.notify_all();
        });
    }
}

/// How often the shim asks a sandbox's agent whether it is alive, how long each answer may
/// take, and how many missed answers in a row mean the guest is gone.
const HEALTH_PERIOD: Duration = Duration::from_secs(10);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
const HEALTH_MISSES: u32 = 3;

/// Kills the VMM of a guest that stopped answering (a hung kernel, a stuck agent): its
/// processes' waits then fail, their tasks stop with status 255, and containerd can delete them.
/// A dead VMM needs nothing of this: its connection closes on its own. Ends with the VM.
fn watch_health(vm: std::sync::Weak<Vm>, sandbox: String) {
    std::thread::spawn(move || {
        let mut missed = 0;
        loop {
            std::thread::sleep(HEALTH_PERIOD);
            let Some(vm) = vm.upgrade() else { return };
            let ctx = attrpc::context::with_timeout(HEALTH_TIMEOUT.as_nanos() as i64);
            match vm.sandbox.health.check(ctx, &CheckRequest::default()) {
                Ok(_) => missed = 0,
                Err(e) => {
                    missed += 1;
                    tracing::warn!(%sandbox, missed, error = %rpc_message(&e), "the agent did not answer its health check");
                }
            }
            if missed >= HEALTH_MISSES {
                tracing::error!(
                    %sandbox,
                    console = %vm.sandbox.console_tail(),
                    "the guest stopped answering: killing its VM"
                );
                // SAFETY: kill has no memory preconditions; the pid is our own child's, which is
                // not reaped before the Vm is dropped, so it cannot name another process.
                unsafe { libc::kill(vm.sandbox.vmm_pid() as i32, libc::SIGKILL) };
                return;
            }
        }
    });
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

fn copy_output(agent: &AgentServiceClient, cid: &str, eid: &str, stderr: bool, path: &str) {
    // Read-write, as containerd's own shims hold a reader too: the open does not wait for
    // containerd's side, and output survives a client that detaches (`ctr run -d`) for the
    // next one that attaches.
    let mut out = if path.is_empty() {
        None
    } else {
        OpenOptions::new().read(true).write(true).open(path).ok()
    };
    let req = pb::ReadStreamRequest {
        container_id: cid.into(),
        exec_id: eid.into(),
        len: 64 * 1024,
        ..Default::default()
    };
    loop {
        let r = if stderr {
            agent.read_stderr(unbounded(), &req)
        } else {
            agent.read_stdout(unbounded(), &req)
        };
        let data = match r {
            Ok(r) if !r.data.is_empty() => r.data,
            _ => return,
        };
        // A reader that went away (ctr detached) must not stall the process: keep draining.
        if let Some(f) = out.as_mut() {
            if f.write_all(&data).is_err() {
                out = None;
            }
        }
    }
}

/// Container ids become file names in the sandbox share: only containerd's own id alphabet.
fn check_id(id: &str) -> TResult<()> {
    // 76 is containerd's own limit.
    if husk_agent_protocol::is_plain_name(id, 76) {
        Ok(())
    } else {
        Err(status(
            Code::INVALID_ARGUMENT,
            format!("bad container id {id:?}: use 1 to 76 letters, digits, '-', '_' or '.', not starting with '.'"),
        ))
    }
}

fn copy_input(agent: &AgentServiceClient, cid: &str, eid: &str, path: &str) {
    let close = pb::CloseStdinRequest {
        container_id: cid.into(),
        exec_id: eid.into(),
        ..Default::default()
    };
    if let Ok(mut f) = File::open(path) {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let req = pb::WriteStreamRequest {
                container_id: cid.into(),
                exec_id: eid.into(),
                data: buf[..n].to_vec(),
                ..Default::default()
            };
            if agent.write_stdin(ctx(), &req).is_err() {
                return;
            }
        }
    }
    let _ = agent.close_stdin(ctx(), &close);
}

fn bind_mount(src: &Path, target: &Path, read_only: bool) -> TResult<()> {
    let flags = libc::MS_BIND | libc::MS_REC;
    mount(src, target, flags)?;
    if read_only {
        if let Err(e) = mount(src, target, flags | libc::MS_REMOUNT | libc::MS_RDONLY) {
            unmount(target);
            return Err(e);
        }
    }
    Ok(())
}

/// Splits mount(8)-style options into mount flags and the file system's data string.
fn mount_options(options: &[String]) -> (libc::c_ulong, String) {
    let mut flags: libc::c_ulong = 0;
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" => flags &= !libc::MS_RDONLY,
            "bind" => flags |= libc::MS_BIND,
            "rbind" => flags |= libc::MS_BIND | libc::MS_REC,
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "relatime" => flags |= libc::MS_RELATIME,
            "noatime" => flags |= libc::MS_NOATIME,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "suid" | "dev" | "exec" | "async" | "defaults" => {}
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// Mounts one of containerd's rootfs mounts on `target`, in this process (the shim crate's
/// helper forks and waits for a reaper we do not run).
fn mount_fs(fstype: &str, source: &str, options: &[String], target: &Path) -> TResult<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let (flags, data) = mount_options(options);
    let err = |what: String| status(Code::INTERNAL, what);
    let c = |s: &[u8]| CString::new(s).map_err(|_| err(format!("NUL byte in mount {fstype}")));
    let (src, tgt, ty, dat) = (
        c(source.as_bytes())?,
        c(target.as_os_str().as_bytes())?,
        c(fstype.as_bytes())?,
        c(data.as_bytes())?,
    );
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            if fstype.is_empty() {
                std::ptr::null()
            } else {
                ty.as_ptr()
            },
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                dat.as_ptr().cast()
            },
        )
    };
    if rc != 0 {
        return Err(err(format!(
            "cannot mount the rootfs ({fstype} {source}) on {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

fn mount(src: &Path, target: &Path, flags: libc::c_ulong) -> TResult<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).expect("no NUL in path");
    let (s, t) = (c(src), c(target));
    // SAFETY: valid NUL-terminated strings; a bind mount takes no fs type or data.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(status(
            Code::INTERNAL,
            format!(
                "cannot bind-mount {} on {}: {}",
                src.display(),
                target.display(),
                std::io::Error::last_os_error()
            ),
        ));
    }
    Ok(())
}

fn unmount(target: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(t) = std::ffi::CString::new(target.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a valid NUL-terminated path; MNT_DETACH has no other preconditions.
    let rc = unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT) {
            tracing::warn!(path = %target.display(), error = %e, "cannot unmount");
        }
    }
}

/// Unmounts and removes what container `id` had under `share`. Directories are removed one by
/// one and only when empty: nothing is ever deleted through a mount that is still there.
fn remove_container_files(share: &Path, id: &str, mounts: &[PathBuf]) {
    for m in mounts.iter().rev() {
        unmount(m);
    }
    let dir = share.join(id);
    if let Ok(entries) = std::fs::read_dir(dir.join("mounts")) {
        for e in entries.flatten() {
            unmount(&e.path());
            let _ = std::fs::remove_dir(e.path()).or_else(|_| std::fs::remove_file(e.path()));
        }
    }
    let _ = std::fs::remove_dir(dir.join("mounts"));
    unmount(&dir.join("rootfs"));
    let _ = std::fs::remove_dir(dir.join("rootfs"));
    let _ = std::fs::remove_dir(&dir);
}

/// `containerd-shim-kata-v2 delete`: the shim of `sandbox` died; remove container `id`'s
/// mounts, and the VM and sandbox directory when no other container is left.
pub fn cleanup_after_crash(namespace: &str, sandbox: &str, id: &str) {
    let dir = sandbox_dir(namespace, sandbox);
    let share = dir.join("shared");
    remove_container_files(&share, id, &[]);
    let others = std::fs::read_dir(&share).map(|d| d.count()).unwrap_or(0);
    if others > 0 {
        return;
    }
    if let Some(pid) = std::fs::read_to_string(dir.join("vmm.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "husk-vmm" {
            // SAFETY: kill has no memory preconditions; the pid was checked to be a husk-vmm.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    remove_sandbox_dir(&dir);
}

/// Removes a sandbox's host directory once its VM is gone and its containers' mounts are
/// undone. The share is removed only if empty: nothing is deleted through a mount.
fn remove_sandbox_dir(dir: &Path) {
    // The VM directory holds only sockets and the console log.
    let _ = std::fs::remove_dir_all(dir.join("vm"));
    let _ = std::fs::remove_dir(dir.join("shared"));
    let _ = std::fs::remove_file(dir.join("vmm.pid"));
    if let Ok(cgroup) = std::fs::read_to_string(dir.join("cgroup")) {
        crate::cgroup::remove(cgroup.trim());
        let _ = std::fs::remove_file(dir.join("cgroup"));
    }
    let _ = std::fs::remove_dir(dir);
}

/// The Task service as ttrpc serves it: a shared handle on the sandbox's state.
pub struct TaskHandle(pub Arc<TaskService>);

impl std::ops::Deref for TaskHandle {
    type Target = TaskService;
    fn deref(&self) -> &TaskService {
        &self.0
    }
}

impl Task for TaskHandle {
    fn state(&self, _: &TtrpcContext, req: StateRequest) -> TResult<StateResponse> {
        let (p, bundle) = self.proc(&req.id, &req.exec_id)?;
        Ok(p.state_response(&bundle))
    }

    fn create(&self, _: &TtrpcContext, req: CreateTaskRequest) -> TResult<CreateTaskResponse> {
        if !req.checkpoint.is_empty() {
            return Err(status(
                Code::UNIMPLEMENTED,
                "husk cannot restore checkpoints",
            ));
        }
        // The id names directories of the share: nothing that could climb out of it.
        check_id(&req.id)?;
        let mut st = self.state.lock().expect("state lock");
        if st.containers.contains_key(&req.id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {} already exists", req.id),
            ));
        }
        let oci = spec::read_bundle_spec(Path::new(&req.bundle))
            .map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?;
        let vm = match &st.vm {
            Some(vm) => vm.clone(),
            None => {
                let vm = self.boot(oci["linux"]["cgroupsPath"].as_str())?;
                st.vm = Some(vm.clone());
                self.0.watch_oom(&vm);
                watch_health(Arc::downgrade(&vm), self.sandbox_id.clone());
                vm
            }
        };
        let mut mounts = Vec::new();
        if let Err(e) = self.create_in_vm(&vm, &req, oci, &mut mounts) {
            remove_container_files(&vm.share, &req.id, &mounts);
            drop(vm);
            self.stop_vm_if_idle(&mut st);
            if st.containers.is_empty() {
                self.signal_shutdown();
            }
            return Err(e);
        }
        let pid = vm.sandbox.vmm_pid();
        let init = Arc::new(Proc::new(
            &req.id,
            "",
            pid,
            [&req.stdin, &req.stdout, &req.stderr],
            req.terminal,
        ));
        st.containers.insert(
            req.id.clone(),
            Container {
                bundle: req.bundle.clone(),
                mounts,
                init: init.clone(),
                execs: HashMap::new(),
            },
        );
        drop(st);
        tracing::info!(container = %req.id, "created");
        self.publish(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(containerd_shim::protos::events::task::TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            })
            .into(),
            pid,
            ..Default::default()
        });
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(&self, _: &TtrpcContext, req: StartRequest) -> TResult<StartResponse> {
        let (p, _) = self.proc(&req.id, &req.exec_id)?;
        if p.phase() != Phase::Created {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!(
                    "{} {} was already started",
                    if req.exec_id.is_empty() {
                        "container"
                    } else {
                        "exec"
                    },
                    if req.exec_id.is_empty() {
                        &req.id
                    } else {
                        &req.exec_id
                    }
                ),
            ));
        }
        let vm = self.vm()?;
        let agent = vm.sandbox.agent.clone();
        let io;
        if req.exec_id.is_empty() {
            io = self.start_io(&agent, &p);
            let r = pb::StartContainerRequest {
                container_id: req.id.clone(),
                ..Default::default()
            };
            agent
                .start_container(ctx(), &r)
                .map_err(|e| agent_error("cannot start the container", e))?;
        } else {
            let mut process: serde_json::Value = serde_json::from_slice(&p.spec)
                .map_err(|e| status(Code::INVALID_ARGUMENT, format!("exec spec: {e}")))?;
            process["terminal"] = serde_json::Value::Bool(p.terminal);
            let r = pb::ExecProcessRequest {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                oci_process: serde_json::to_vec(&process).expect("a JSON value serialises"),
                ..Default::default()
            };
            agent
                .exec_process(ctx(), &r)
                .map_err(|e| agent_error("cannot start the exec", e))?;
            io = self.start_io(&agent, &p);
        }
        p.state.lock().expect("proc lock").phase = Phase::Running;
        self.0.watch_exit(vm.clone(), p.clone(), io);
        if req.exec_id.is_empty() {
            self.publish(TaskStart {
                container_id: req.id.clone(),
                pid: p.pid,
                ..Default::default()
            });
        } else {
            self.publish(TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid: p.pid,
                ..Default::default()
            });
        }
        Ok(StartResponse {
            pid: p.pid,
            ..Default::default()
        })
    }

    fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> TResult<DeleteResponse> {
        let (p, _) = self.proc(&req.id, &req.exec_id)?;
        if p.phase() == Phase::Running {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!(
                    "{} is still running: kill it first",
                    if req.exec_id.is_empty() {
                        &req.id
                    } else {
                        &req.exec_id
                    }
                ),
            ));
        }
        let (exit_status, exited_at) = {
            let s = p.state.lock().expect("proc lock");
            (s.exit_status, s.exited_at.clone().unwrap_or_else(now))
        };
        let mut st = self.state.lock().expect("state lock");
        if !req.exec_id.is_empty() {
            if let Some(c) = st.containers.get_mut(&req.id) {
                c.execs.remove(&req.exec_id);
            }
        } else {
            if let Some(vm) = st.vm.clone() {
                let r = pb::RemoveContainerRequest {
                    container_id: req.id.clone(),
                    ..Default::default()
                };
                if let Err(e) = vm.sandbox.agent.remove_container(ctx(), &r) {
                    tracing::warn!(container = %req.id, error = %rpc_message(&e), "agent could not remove the container");
                }
                if let Some(c) = st.containers.get(&req.id) {
                    remove_container_files(&vm.share, &req.id, &c.mounts);
                }
            }
            st.containers.remove(&req.id);
            self.stop_vm_if_idle(&mut st);
            drop(st);
            tracing::info!(container = %req.id, "deleted");
            self.publish(TaskDelete {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid: p.pid,
                exit_status,
                exited_at: Some(exited_at.clone()).into(),
                ..Default::default()
            });
        }
        Ok(DeleteResponse {
            pid: p.pid,
            exit_status,
            exited_at: Some(exited_at).into(),
            ..Default::default()
        })
    }

    fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> TResult<PidsResponse> {
        let st = self.state.lock().expect("state lock");
        let c = st
            .containers
            .get(&req.id)
            .ok_or_else(|| status(Code::NOT_FOUND, format!("container {} not found", req.id)))?;
        if c.init.phase() == Phase::Created {
            // Not started: only the init exists.
            return Ok(PidsResponse {
                processes: vec![ProcessInfo {
                    pid: c.init.pid,
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        let vm = st
            .vm
            .clone()
            .ok_or_else(|| status(Code::FAILED_PRECONDITION, "the sandbox VM is not running"))?;
        drop(st);
        let r = pb::ListProcessesRequest {
            container_id: req.id.clone(),
            ..Default::default()
        };
        let list = vm
            .sandbox
            .agent
            .list_processes(ctx(), &r)
            .map_err(|e| agent_error("cannot list the container's processes", e))?;
        // Guest pids, as Kata reports them.
        Ok(PidsResponse {
            processes: list
                .pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> TResult<Empty> {
        self.freeze(&req.id, true)?;
        self.publish(TaskPaused {
            container_id: req.id,
            ..Default::default()
        });
        Ok(Empty::new())
    }

    fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> TResult<Empty> {
        self.freeze(&req.id, false)?;
        self.publish(TaskResumed {
            container_id: req.id,
            ..Default::default()
        });
        Ok(Empty::new())
    }

    fn checkpoint(&self, _: &TtrpcContext, _: CheckpointTaskRequest) -> TResult<Empty> {
        Err(status(
            Code::UNIMPLEMENTED,
            "husk cannot checkpoint containers",
        ))
    }

    fn kill(&self, _: &TtrpcContext, req: KillRequest) -> TResult<Empty> {
        let (p, _) = self.proc(&req.id, &req.exec_id)?;
        if p.phase() == Phase::Stopped {
            return Err(status(
                Code::NOT_FOUND,
                format!(
                    "process {} already finished",
                    if req.exec_id.is_empty() {
                        &req.id
                    } else {
                        &req.exec_id
                    }
                ),
            ));
        }
        let vm = self.vm()?;
        let r = pb::SignalProcessRequest {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            signal: req.signal,
            ..Default::default()
        };
        vm.sandbox
            .agent
            .signal_process(ctx(), &r)
            .map_err(|e| agent_error("cannot signal the process", e))?;
        Ok(Empty::new())
    }

    fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> TResult<Empty> {
        let mut st = self.state.lock().expect("state lock");
        let c = st
            .containers
            .get_mut(&req.id)
            .ok_or_else(|| status(Code::NOT_FOUND, format!("container {} not found", req.id)))?;
        if c.execs.contains_key(&req.exec_id) || req.exec_id == req.id {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("exec {} already exists", req.exec_id),
            ));
        }
        if c.init.phase() != Phase::Running {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("container {} is not running", req.id),
            ));
        }
        if c.init.state.lock().expect("proc lock").paused {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("container {} is paused: resume it first", req.id),
            ));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        if serde_json::from_slice::<serde_json::Value>(&spec).is_err() {
            return Err(status(
                Code::INVALID_ARGUMENT,
                "the exec has no valid OCI process spec",
            ));
        }
        let mut p = Proc::new(
            &req.id,
            &req.exec_id,
            c.init.pid,
            [&req.stdin, &req.stdout, &req.stderr],
            req.terminal,
        );
        p.spec = spec;
        c.execs.insert(req.exec_id.clone(), Arc::new(p));
        drop(st);
        self.publish(TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        });
        Ok(Empty::new())
    }

    fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> TResult<Empty> {
        let (p, _) = self.proc(&req.id, &req.exec_id)?;
        if !p.terminal {
            return Err(status(
                Code::FAILED_PRECONDITION,
                "the process has no terminal",
            ));
        }
        let vm = self.vm()?;
        let r = pb::TtyWinResizeRequest {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            row: req.height,
            column: req.width,
            ..Default::default()
        };
        vm.sandbox
            .agent
            .tty_win_resize(ctx(), &r)
            .map_err(|e| agent_error("cannot resize the terminal", e))?;
        Ok(Empty::new())
    }

    fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> TResult<Empty> {
        if !req.stdin {
            return Ok(Empty::new());
        }
        let (p, _) = self.proc(&req.id, &req.exec_id)?;
        let vm = self.vm()?;
        let agent = vm.sandbox.agent.clone();
        let copier = p.stdin_thread.lock().expect("stdin lock").take();
        // Let the copier deliver what containerd already wrote into the fifo, then close.
        std::thread::spawn(move || {
            if let Some(h) = copier {
                for _ in 0..100 {
                    if h.is_finished() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let r = pb::CloseStdinRequest {
                container_id: p.container.clone(),
                exec_id: p.exec_id.clone(),
                ..Default::default()
            };
            let _ = agent.close_stdin(ctx(), &r);
        });
        Ok(Empty::new())
    }

    fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> TResult<Empty> {
        self.proc(&req.id, "")?;
        let vm = self.vm()?;
        // containerd sends the OCI LinuxResources as JSON, the agent's format too.
        let Some(any) = req.resources.as_ref() else {
            return Err(status(Code::INVALID_ARGUMENT, "update without resources"));
        };
        if !any.type_url.ends_with("LinuxResources") {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!("husk updates Linux resources only, not {}", any.type_url),
            ));
        }
        let r = pb::UpdateContainerRequest {
            container_id: req.id.clone(),
            resources: any.value.clone(),
            ..Default::default()
        };
        vm.sandbox
            .agent
            .update_container(ctx(), &r)
            .map_err(|e| agent_error("cannot update the container's resources", e))?;
        Ok(Empty::new())
    }

    fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> TResult<WaitResponse> {
        let (p, _) = self.proc(&req.id, &req.exec_id)?;
        let (exit_status, exited_at) = p.wait();
        Ok(WaitResponse {
            exit_status,
            exited_at: Some(exited_at).into(),
            ..Default::default()
        })
    }

    fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> TResult<StatsResponse> {
        self.proc(&req.id, "")?;
        let vm = self.vm()?;
        let r = pb::StatsContainerRequest {
            container_id: req.id.clone(),
            ..Default::default()
        };
        let s = vm
            .sandbox
            .agent
            .stats_container(ctx(), &r)
            .map_err(|e| agent_error("cannot read the container's statistics", e))?;
        let metrics = Metrics {
            pids: Some(PidsStat {
                current: s.pids,
                ..Default::default()
            })
            .into(),
            cpu: Some(CPUStat {
                usage: Some(CPUUsage {
                    total: s.cpu_usage_ns,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            memory: Some(MemoryStat {
                usage: Some(MemoryEntry {
                    usage: s.memory_usage,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let any = Any {
            type_url: "io.containerd.cgroups.v1.Metrics".into(),
            value: metrics
                .write_to_bytes()
                .map_err(|e| status(Code::INTERNAL, e.to_string()))?,
            ..Default::default()
        };
        Ok(StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    fn connect(&self, _: &TtrpcContext, _: ConnectRequest) -> TResult<ConnectResponse> {
        let task_pid = self
            .state
            .lock()
            .expect("state lock")
            .vm
            .as_ref()
            .map(|vm| vm.sandbox.vmm_pid())
            .unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> TResult<Empty> {
        let mut st = self.state.lock().expect("state lock");
        if !st.containers.is_empty() {
            return Ok(Empty::new());
        }
        self.stop_vm_if_idle(&mut st);
        drop(st);
        self.signal_shutdown();
        Ok(Empty::new())
    }
}

impl TaskService {
    fn signal_shutdown(&self) {
        *self.shutdown.0.lock().expect("shutdown lock") = true;
        self.shutdown.1.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_split() {
        let o = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (f, d) = mount_options(&o(&["ro", "lowerdir=/a:/b", "upperdir=/u", "nosuid"]));
        assert_eq!(f, libc::MS_RDONLY | libc::MS_NOSUID);
        assert_eq!(d, "lowerdir=/a:/b,upperdir=/u");
        let (f, d) = mount_options(&o(&["rbind", "rw"]));
        assert_eq!(f, libc::MS_BIND | libc::MS_REC);
        assert!(d.is_empty());
    }

    #[test]
    fn container_ids_cannot_leave_the_share() {
        for good in ["c1", "a.b-c_d", &"x".repeat(76)] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "a b",
            &"x".repeat(77),
        ] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sandbox_dirs_are_short_and_stable() {
        let a = sandbox_dir("k8s.io", &"f".repeat(64));
        assert_eq!(a, sandbox_dir("k8s.io", &"f".repeat(64)));
        assert_ne!(a, sandbox_dir("default", &"f".repeat(64)));
        // Room for "vm/vsock.sock_1025" within a socket path's 108 bytes.
        assert!(a.as_os_str().len() < 40);
    }
}
