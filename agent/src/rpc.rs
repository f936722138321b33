//! The ttrpc services the agent serves on vsock: thin handlers that check the request, call the
//! process, container or network module and map its errors to ttrpc status codes.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use husk_agent_protocol::agent::*;
use husk_agent_protocol::agent_ttrpc::{create_agent_service, AgentService};
use husk_agent_protocol::health::*;
use husk_agent_protocol::health_ttrpc::{create_health, Health};
use husk_agent_protocol::ttrpc::security_extension::{AcceptHook, HookError, HookOutput};
use husk_agent_protocol::ttrpc::{self, error::get_rpc_status, Code, TtrpcContext};

use crate::container::{key, Containers};
use crate::network::{self, NetworkError};
use crate::process::{ProcessError, Spec, Table};

type Result<T> = ttrpc::Result<T>;

/// An error of a domain module, with the ttrpc status code the host gets for it. The
/// implementations below are the one place where the agent picks a status code.
pub(crate) trait StatusCode: std::error::Error {
    fn code(&self) -> Code;
}

impl StatusCode for ProcessError {
    fn code(&self) -> Code {
        match self {
            ProcessError::Exists(_) => Code::ALREADY_EXISTS,
            ProcessError::NotFound(_) => Code::NOT_FOUND,
            ProcessError::BadRequest(_) => Code::INVALID_ARGUMENT,
            ProcessError::Io(..) => Code::INTERNAL,
            ProcessError::Runtime(_) => Code::FAILED_PRECONDITION,
        }
    }
}

impl StatusCode for NetworkError {
    fn code(&self) -> Code {
        match self {
            NetworkError::NoSuchMac(_) | NetworkError::NoSuchDevice(_) => Code::NOT_FOUND,
            NetworkError::Invalid { .. } | NetworkError::TooMany { .. } => Code::INVALID_ARGUMENT,
            NetworkError::Kernel { .. } => Code::INTERNAL,
        }
    }
}

/// The status the host gets: the error's code, and its message with its causes (the kernel's
/// text, for a refused network change).
pub(crate) fn rpc_error(e: impl StatusCode) -> ttrpc::Error {
    get_rpc_status(e.code(), crate::chain(&e))
}

pub struct Agent {
    pub procs: Arc<Table>,
    pub containers: Containers,
}

impl AgentService for Agent {
    fn exec_process(&self, _: &TtrpcContext, req: ExecProcessRequest) -> Result<Empty> {
        if !req.container_id.is_empty() {
            self.containers
                .exec(
                    &self.procs,
                    &req.container_id,
                    &req.exec_id,
                    &req.oci_process,
                )
                .map_err(rpc_error)?;
            crate::log::debug(&format!(
                "exec {} started in container {}",
                req.exec_id, req.container_id
            ));
            return Ok(Empty::new());
        }
        let p = req.process.into_option().unwrap_or_default();
        let spec = Spec {
            args: p.args,
            env: p.env,
            cwd: p.cwd,
            terminal: p.terminal,
            uid: p.uid,
            gid: p.gid,
            rows: p.rows.min(u16::MAX.into()) as u16,
            columns: p.columns.min(u16::MAX.into()) as u16,
        };
        let proc = self.procs.spawn(&req.exec_id, spec).map_err(rpc_error)?;
        crate::log::debug(&format!("exec {} started as pid {}", req.exec_id, proc.pid));
        Ok(Empty::new())
    }

    fn wait_process(
        &self,
        _: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> Result<WaitProcessResponse> {
        let id = key(&req.container_id, &req.exec_id);
        let p = self.procs.get(&id).map_err(rpc_error)?;
        let status = p.wait();
        self.procs.forget_if_collected(&id);
        Ok(WaitProcessResponse {
            status,
            ..Default::default()
        })
    }

    fn signal_process(&self, _: &TtrpcContext, req: SignalProcessRequest) -> Result<Empty> {
        let p = self
            .procs
            .get(&key(&req.container_id, &req.exec_id))
            .map_err(rpc_error)?;
        let sig = i32::try_from(req.signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| {
                rpc_error(ProcessError::BadRequest(format!(
                    "bad signal {}",
                    req.signal
                )))
            })?;
        // SAFETY: kill has no memory preconditions; a stale pid only yields ESRCH.
        unsafe { libc::kill(p.pid, sig) };
        Ok(Empty::new())
    }

    fn write_stdin(
        &self,
        _: &TtrpcContext,
        req: WriteStreamRequest,
    ) -> Result<WriteStreamResponse> {
        let p = self
            .procs
            .get(&key(&req.container_id, &req.exec_id))
            .map_err(rpc_error)?;
        let len = p
            .write_stdin(&req.data)
            .map_err(|e| rpc_error(ProcessError::Runtime(format!("stdin: {e}"))))?;
        Ok(WriteStreamResponse {
            len: len as u32,
            ..Default::default()
        })
    }

    fn read_stdout(&self, _: &TtrpcContext, req: ReadStreamRequest) -> Result<ReadStreamResponse> {
        self.read(req, false)
    }

    fn read_stderr(&self, _: &TtrpcContext, req: ReadStreamRequest) -> Result<ReadStreamResponse> {
        self.read(req, true)
    }

    fn close_stdin(&self, _: &TtrpcContext, req: CloseStdinRequest) -> Result<Empty> {
        self.procs
            .get(&key(&req.container_id, &req.exec_id))
            .map_err(rpc_error)?
            .close_stdin();
        Ok(Empty::new())
    }

    fn tty_win_resize(&self, _: &TtrpcContext, req: TtyWinResizeRequest) -> Result<Empty> {
        let p = self
            .procs
            .get(&key(&req.container_id, &req.exec_id))
            .map_err(rpc_error)?;
        let clamp = |v: u32| v.min(u16::MAX.into()) as u16;
        p.resize(clamp(req.row), clamp(req.column))
            .map_err(|e| rpc_error(ProcessError::Runtime(format!("terminal size: {e}"))))?;
        Ok(Empty::new())
    }

    fn create_container(&self, _: &TtrpcContext, req: CreateContainerRequest) -> Result<Empty> {
        self.containers
            .create(&self.procs, &req.container_id, &req.oci_spec)
            .map_err(rpc_error)?;
        crate::log::debug(&format!("container {} created", req.container_id));
        Ok(Empty::new())
    }

    fn start_container(&self, _: &TtrpcContext, req: StartContainerRequest) -> Result<Empty> {
        self.containers
            .start(&req.container_id)
            .map_err(rpc_error)?;
        crate::log::debug(&format!("container {} started", req.container_id));
        Ok(Empty::new())
    }

    fn remove_container(&self, _: &TtrpcContext, req: RemoveContainerRequest) -> Result<Empty> {
        self.containers
            .remove(&self.procs, &req.container_id)
            .map_err(rpc_error)?;
        crate::log::debug(&format!("container {} removed", req.container_id));
        Ok(Empty::new())
    }

    fn update_container(&self, _: &TtrpcContext, req: UpdateContainerRequest) -> Result<Empty> {
        self.containers
            .update(&req.container_id, &req.resources)
            .map_err(rpc_error)?;
        Ok(Empty::new())
    }

    fn freeze_container(&self, _: &TtrpcContext, req: FreezeContainerRequest) -> Result<Empty> {
        self.containers
            .freeze(&req.container_id, req.frozen)
            .map_err(rpc_error)?;
        Ok(Empty::new())
    }

    fn list_processes(
        &self,
        _: &TtrpcContext,
        req: ListProcessesRequest,
    ) -> Result<ListProcessesResponse> {
        let pids = self.containers.pids(&req.container_id).map_err(rpc_error)?;
        Ok(ListProcessesResponse {
            pids,
            ..Default::default()
        })
    }

    fn get_oom_event(&self, _: &TtrpcContext, _: GetOOMEventRequest) -> Result<OOMEvent> {
        let container_id = self.containers.next_oom().map_err(rpc_error)?;
        Ok(OOMEvent {
            container_id,
            ..Default::default()
        })
    }

    fn stats_container(
        &self,
        _: &TtrpcContext,
        req: StatsContainerRequest,
    ) -> Result<StatsContainerResponse> {
        let (memory_usage, cpu_usage_ns, pids) = self
            .containers
            .stats(&req.container_id)
            .map_err(rpc_error)?;
        Ok(StatsContainerResponse {
            memory_usage,
            cpu_usage_ns,
            pids,
            ..Default::default()
        })
    }

    fn update_interface(&self, _: &TtrpcContext, req: UpdateInterfaceRequest) -> Result<Interface> {
        let interface = req.interface.into_option().unwrap_or_default();
        network::update_interface(&interface).map_err(rpc_error)
    }

    fn update_routes(&self, _: &TtrpcContext, req: UpdateRoutesRequest) -> Result<Routes> {
        let routes = network::update_routes(&req.routes).map_err(rpc_error)?;
        Ok(Routes {
            routes,
            ..Default::default()
        })
    }

    fn add_arp_neighbors(&self, _: &TtrpcContext, req: AddARPNeighborsRequest) -> Result<Empty> {
        network::add_neighbours(&req.neighbors).map_err(rpc_error)?;
        Ok(Empty::new())
    }

    fn watch_listeners(&self, _: &TtrpcContext, req: WatchListenersRequest) -> Result<Listeners> {
        Ok(Listeners {
            ports: crate::forward::watch_listeners(&req.known),
            ..Default::default()
        })
    }
}

impl Agent {
    fn read(&self, req: ReadStreamRequest, stderr: bool) -> Result<ReadStreamResponse> {
        let p = self
            .procs
            .get(&key(&req.container_id, &req.exec_id))
            .map_err(rpc_error)?;
        let data = p
            .read_output(stderr, req.len as usize)
            .map_err(|e| rpc_error(ProcessError::Io("cannot read the output".into(), e)))?;
        if data.is_empty() {
            self.procs
                .forget_if_collected(&key(&req.container_id, &req.exec_id));
        }
        Ok(ReadStreamResponse {
            data,
            ..Default::default()
        })
    }
}

pub struct HealthService;

impl Health for HealthService {
    fn check(&self, _: &TtrpcContext, _: CheckRequest) -> Result<HealthCheckResponse> {
        Ok(HealthCheckResponse {
            status: health_check_response::ServingStatus::SERVING.into(),
            ..Default::default()
        })
    }

    fn version(&self, _: &TtrpcContext, _: CheckRequest) -> Result<VersionCheckResponse> {
        Ok(VersionCheckResponse {
            grpc_version: "ttrpc".into(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }
}

/// The vsock CID of the host: the only peer the agent serves.
const HOST_CID: u32 = 2;

/// Refuses every connection whose peer is not the host. A container (or anything else in the
/// guest) that reaches the agent's port over vsock loopback, as CID 1 or as the guest's own CID,
/// must not get an API that runs processes as root outside every container.
#[derive(Debug)]
struct HostOnly;

static REFUSED: AtomicU32 = AtomicU32::new(0);
const REFUSALS_LOGGED: u32 = 10;

impl AcceptHook for HostOnly {
    fn on_accept(&self, fd: RawFd) -> std::result::Result<HookOutput, HookError> {
        let cid = peer_cid(fd).map_err(HookError::Io)?;
        if cid != HOST_CID {
            // Logged a few times only: a guest that keeps trying must not flood the host's log.
            let n = REFUSED.fetch_add(1, Ordering::Relaxed);
            if n < REFUSALS_LOGGED {
                crate::log::info(&format!(
                    "refused a connection from vsock CID {cid}: only the host may connect"
                ));
            }
            return Err(HookError::Rejected(format!(
                "peer CID {cid} is not the host"
            )));
        }
        Ok(HookOutput {
            data: Default::default(),
            payload_transform: None,
        })
    }
}

/// The CID of a vsock connection's peer.
pub fn peer_cid(fd: RawFd) -> std::io::Result<u32> {
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` and `len` are valid for writes of `len` bytes; fd is borrowed for the call.
    let rc =
        unsafe { libc::getpeername(fd, (&mut addr as *mut libc::sockaddr_vm).cast(), &mut len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if i32::from(addr.svm_family) != libc::AF_VSOCK {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a vsock connection",
        ));
    }
    Ok(addr.svm_cid)
}

/// Binds vsock port `port` for the agent API and health service; nothing is accepted before
/// [`ttrpc::Server::start`]. The listener is the last vsock socket the agent opens: see
/// `seccomp::deny_vsock`.
pub fn bind(procs: Arc<Table>, port: u32) -> std::result::Result<ttrpc::Server, ttrpc::Error> {
    // Reads of process output block until there is some: keep enough workers for several
    // processes' stdout, stderr and wait calls at once.
    let server = ttrpc::Server::new()
        .set_thread_count_min(2)
        .set_thread_count_default(8)
        .set_thread_count_max(128)
        .set_accept_hook(HostOnly)
        .bind(&format!("vsock://-1:{port}"))?
        .register_service(create_agent_service(Arc::new(Agent {
            procs,
            containers: Containers::new(),
        })))
        .register_service(create_health(Arc::new(HealthService)));
    Ok(server)
}
