//! containerd's Task API, thin: each call decodes its request, calls the sandbox and maps the
//! result; the only module that touches containerd's protos. Also the shim's logging and the
//! publisher of task events.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
use containerd_shim::protos::ttrpc::{self, TtrpcContext};
use containerd_shim::protos::types::mount::Mount;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::publisher::RemotePublisher;

use crate::container::{Phase, Stdio};
use crate::error::Error;
use crate::host::HostSandbox;
use crate::sandbox::{CreateRequest, Events, HealthPolicy, Sandbox, TaskEvent};
use crate::storage::RootfsMount;

type TResult<T> = ttrpc::Result<T>;

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

pub fn now() -> Timestamp {
    timestamp(SystemTime::now())
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

/// Publishes task events to containerd, connecting again once if containerd restarted.
pub struct RemoteEvents {
    namespace: String,
    address: String,
    publisher: Mutex<RemotePublisher>,
}

impl RemoteEvents {
    pub fn new(namespace: &str, address: &str, publisher: RemotePublisher) -> RemoteEvents {
        RemoteEvents {
            namespace: namespace.into(),
            address: address.into(),
            publisher: Mutex::new(publisher),
        }
    }

    fn send<E: Event + Message + MessageDyn + Clone>(&self, event: E) {
        let topic = event.topic();
        let ctx = || ttrpc::context::with_timeout(Duration::from_secs(5).as_nanos() as i64);
        let mut publisher = self.publisher.lock().expect("publisher lock");
        let Err(e) = publisher.publish(ctx(), &topic, &self.namespace, Box::new(event.clone()))
        else {
            return;
        };
        let retried = RemotePublisher::new(&self.address)
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
}

impl Events for RemoteEvents {
    fn publish(&self, event: TaskEvent) {
        match event {
            TaskEvent::Create {
                id,
                bundle,
                rootfs,
                stdio,
                pid,
            } => self.send(TaskCreate {
                container_id: id,
                bundle,
                rootfs: rootfs
                    .into_iter()
                    .map(|m| Mount {
                        type_: m.fstype,
                        source: m.source,
                        options: m.options,
                        ..Default::default()
                    })
                    .collect(),
                io: Some(TaskIO {
                    stdin: stdio.stdin,
                    stdout: stdio.stdout,
                    stderr: stdio.stderr,
                    terminal: stdio.terminal,
                    ..Default::default()
                })
                .into(),
                pid,
                ..Default::default()
            }),
            TaskEvent::Start { id, pid } => self.send(TaskStart {
                container_id: id,
                pid,
                ..Default::default()
            }),
            TaskEvent::ExecAdded { id, exec_id } => self.send(TaskExecAdded {
                container_id: id,
                exec_id,
                ..Default::default()
            }),
            TaskEvent::ExecStarted { id, exec_id, pid } => self.send(TaskExecStarted {
                container_id: id,
                exec_id,
                pid,
                ..Default::default()
            }),
            TaskEvent::Exit {
                id,
                process,
                pid,
                exit,
            } => self.send(TaskExit {
                container_id: id,
                id: process,
                pid,
                exit_status: exit.status,
                exited_at: Some(timestamp(exit.at)).into(),
                ..Default::default()
            }),
            TaskEvent::Delete { id, pid, exit } => self.send(TaskDelete {
                container_id: id.clone(),
                id,
                pid,
                exit_status: exit.status,
                exited_at: Some(timestamp(exit.at)).into(),
                ..Default::default()
            }),
            TaskEvent::Paused { id } => self.send(TaskPaused {
                container_id: id,
                ..Default::default()
            }),
            TaskEvent::Resumed { id } => self.send(TaskResumed {
                container_id: id,
                ..Default::default()
            }),
            TaskEvent::Oom { id } => self.send(TaskOOM {
                container_id: id,
                ..Default::default()
            }),
        }
    }
}

/// The Task service of one sandbox, as ttrpc serves it.
#[derive(Clone)]
pub struct TaskService {
    sandbox: Arc<Sandbox>,
}

impl TaskService {
    /// The service of the real sandbox `id` (husk-vmm, mounts, cgroup).
    pub fn new(
        namespace: &str,
        id: &str,
        config_path: Option<PathBuf>,
        events: RemoteEvents,
    ) -> TaskService {
        let host = HostSandbox::new(namespace, id, config_path);
        TaskService::with_sandbox(Sandbox::new(
            id,
            Box::new(host),
            Arc::new(events),
            HealthPolicy::default(),
        ))
    }

    pub fn with_sandbox(sandbox: Arc<Sandbox>) -> TaskService {
        TaskService { sandbox }
    }

    /// Blocks until containerd shut the shim down (or the last container went away).
    pub fn wait_shutdown(&self) {
        self.sandbox.wait_shutdown();
    }
}

fn stdio(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Stdio {
    Stdio {
        stdin: stdin.into(),
        stdout: stdout.into(),
        stderr: stderr.into(),
        terminal,
    }
}

impl Task for TaskService {
    fn state(&self, _: &TtrpcContext, req: StateRequest) -> TResult<StateResponse> {
        let (p, bundle) = self.sandbox.process(&req.id, &req.exec_id)?;
        let st = p.status();
        Ok(StateResponse {
            id: p.container.clone(),
            exec_id: p.exec_id.clone(),
            bundle,
            pid: p.pid,
            status: match st.phase {
                Phase::Created | Phase::Starting => Status::CREATED,
                Phase::Running if st.paused => Status::PAUSED,
                Phase::Running => Status::RUNNING,
                Phase::Stopped => Status::STOPPED,
            }
            .into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: st.exit_status,
            exited_at: st.exited_at.map(timestamp).into(),
            ..Default::default()
        })
    }

    fn create(&self, _: &TtrpcContext, req: CreateTaskRequest) -> TResult<CreateTaskResponse> {
        if !req.checkpoint.is_empty() {
            return Err(Error::Unsupported("restore checkpoints").into());
        }
        let pid = self.sandbox.create(CreateRequest {
            id: req.id.clone(),
            bundle: PathBuf::from(&req.bundle),
            rootfs: req
                .rootfs
                .iter()
                .map(|m| RootfsMount {
                    fstype: m.type_.clone(),
                    source: m.source.clone(),
                    options: m.options.clone(),
                })
                .collect(),
            stdio: stdio(&req.stdin, &req.stdout, &req.stderr, req.terminal),
        })?;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(&self, _: &TtrpcContext, req: StartRequest) -> TResult<StartResponse> {
        let pid = self.sandbox.start(&req.id, &req.exec_id)?;
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> TResult<DeleteResponse> {
        let (pid, exit) = self.sandbox.delete(&req.id, &req.exec_id)?;
        Ok(DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }

    fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> TResult<PidsResponse> {
        let pids = self.sandbox.pids(&req.id)?;
        Ok(PidsResponse {
            processes: pids
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
        self.sandbox.freeze(&req.id, true)?;
        Ok(Empty::new())
    }

    fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> TResult<Empty> {
        self.sandbox.freeze(&req.id, false)?;
        Ok(Empty::new())
    }

    fn checkpoint(&self, _: &TtrpcContext, _: CheckpointTaskRequest) -> TResult<Empty> {
        Err(Error::Unsupported("checkpoint containers").into())
    }

    fn kill(&self, _: &TtrpcContext, req: KillRequest) -> TResult<Empty> {
        self.sandbox.kill(&req.id, &req.exec_id, req.signal)?;
        Ok(Empty::new())
    }

    fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> TResult<Empty> {
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        self.sandbox.exec(
            &req.id,
            &req.exec_id,
            stdio(&req.stdin, &req.stdout, &req.stderr, req.terminal),
            spec,
        )?;
        Ok(Empty::new())
    }

    fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> TResult<Empty> {
        self.sandbox
            .resize_pty(&req.id, &req.exec_id, req.width, req.height)?;
        Ok(Empty::new())
    }

    fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> TResult<Empty> {
        if req.stdin {
            self.sandbox.close_stdin(&req.id, &req.exec_id)?;
        }
        Ok(Empty::new())
    }

    fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> TResult<Empty> {
        // containerd sends the OCI LinuxResources as JSON, the agent's format too.
        let Some(any) = req.resources.as_ref() else {
            return Err(Error::InvalidRequest("update without resources".into()).into());
        };
        if !any.type_url.ends_with("LinuxResources") {
            let e = format!("husk updates Linux resources only, not {}", any.type_url);
            return Err(Error::InvalidRequest(e).into());
        }
        self.sandbox.update(&req.id, any.value.clone())?;
        Ok(Empty::new())
    }

    fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> TResult<WaitResponse> {
        let exit = self.sandbox.wait(&req.id, &req.exec_id)?;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }

    fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> TResult<StatsResponse> {
        let s = self.sandbox.stats(&req.id)?;
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
            value: metrics.write_to_bytes().expect("metrics serialise"),
            ..Default::default()
        };
        Ok(StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    fn connect(&self, _: &TtrpcContext, _: ConnectRequest) -> TResult<ConnectResponse> {
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.sandbox.vmm_pid(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> TResult<Empty> {
        self.sandbox.shutdown();
        Ok(Empty::new())
    }
}
