//! The sandbox's Task logic against an in-process agent (the generated `AgentService` served
//! over a Unix socket) and a host that only records what it was asked: no root, KVM or VM.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use husk_agent_protocol::agent as pb;
use husk_agent_protocol::agent_ttrpc::{create_agent_service, AgentService};
use husk_agent_protocol::health::{health_check_response, CheckRequest, HealthCheckResponse};
use husk_agent_protocol::health_ttrpc::{create_health, Health};
use husk_agent_protocol::ttrpc::{self, get_status, Code, TtrpcContext};

use super::*;
use crate::agent::Agent;
use crate::host::{BootedVm, Host};

type TtResult<T> = ttrpc::Result<T>;

fn status<T>(code: Code, msg: &str) -> TtResult<T> {
    Err(ttrpc::Error::RpcStatus(get_status(code, msg.to_string())))
}

/// One process in the fake guest: `None` while it runs.
#[derive(Default)]
struct FakeState {
    containers: HashMap<String, bool>,
    exits: HashMap<(String, String), Option<i32>>,
    signals: Vec<(String, String, u32)>,
}

#[derive(Default)]
struct FakeAgent {
    state: Mutex<FakeState>,
    changed: Condvar,
    oom: Mutex<Option<mpsc::Receiver<String>>>,
}

impl FakeAgent {
    fn key(c: &str, e: &str) -> (String, String) {
        (c.to_string(), e.to_string())
    }

    /// Blocks until process (`c`, `e`) has exited (or is unknown), returns its status.
    fn wait_exit(&self, c: &str, e: &str) -> Option<i32> {
        let mut st = self.state.lock().unwrap();
        loop {
            match st.exits.get(&Self::key(c, e)) {
                Some(None) => st = self.changed.wait(st).unwrap(),
                Some(Some(code)) => return Some(*code),
                None => return None,
            }
        }
    }
}

impl AgentService for FakeAgent {
    fn create_container(
        &self,
        _: &TtrpcContext,
        r: pb::CreateContainerRequest,
    ) -> TtResult<pb::Empty> {
        let mut st = self.state.lock().unwrap();
        if st.containers.contains_key(&r.container_id) {
            return status(Code::ALREADY_EXISTS, "exists");
        }
        st.containers.insert(r.container_id, false);
        Ok(pb::Empty::new())
    }

    fn start_container(
        &self,
        _: &TtrpcContext,
        r: pb::StartContainerRequest,
    ) -> TtResult<pb::Empty> {
        if r.container_id.starts_with("bad-start") {
            return status(Code::INTERNAL, "exec: \"nope\": executable file not found");
        }
        let mut st = self.state.lock().unwrap();
        match st.containers.get_mut(&r.container_id) {
            Some(started) => *started = true,
            None => return status(Code::NOT_FOUND, "no such container"),
        }
        st.exits.insert(Self::key(&r.container_id, ""), None);
        Ok(pb::Empty::new())
    }

    fn exec_process(&self, _: &TtrpcContext, r: pb::ExecProcessRequest) -> TtResult<pb::Empty> {
        let mut st = self.state.lock().unwrap();
        if st.containers.get(&r.container_id) != Some(&true) {
            return status(Code::FAILED_PRECONDITION, "container not running");
        }
        st.exits
            .insert(Self::key(&r.container_id, &r.exec_id), None);
        Ok(pb::Empty::new())
    }

    fn signal_process(&self, _: &TtrpcContext, r: pb::SignalProcessRequest) -> TtResult<pb::Empty> {
        let mut st = self.state.lock().unwrap();
        st.signals
            .push((r.container_id.clone(), r.exec_id.clone(), r.signal));
        match st.exits.get_mut(&Self::key(&r.container_id, &r.exec_id)) {
            Some(exit @ None) => *exit = Some(128 + r.signal as i32),
            Some(Some(_)) => return status(Code::NOT_FOUND, "process already exited"),
            None => return status(Code::NOT_FOUND, "no such process"),
        }
        self.changed.notify_all();
        Ok(pb::Empty::new())
    }

    fn wait_process(
        &self,
        _: &TtrpcContext,
        r: pb::WaitProcessRequest,
    ) -> TtResult<pb::WaitProcessResponse> {
        match self.wait_exit(&r.container_id, &r.exec_id) {
            Some(code) => Ok(pb::WaitProcessResponse {
                status: code,
                ..Default::default()
            }),
            None => status(Code::NOT_FOUND, "no such process"),
        }
    }

    fn read_stdout(
        &self,
        _: &TtrpcContext,
        r: pb::ReadStreamRequest,
    ) -> TtResult<pb::ReadStreamResponse> {
        // Nothing to say; the stream ends when the process does.
        self.wait_exit(&r.container_id, &r.exec_id);
        Ok(pb::ReadStreamResponse::default())
    }

    fn read_stderr(
        &self,
        ctx: &TtrpcContext,
        r: pb::ReadStreamRequest,
    ) -> TtResult<pb::ReadStreamResponse> {
        self.read_stdout(ctx, r)
    }

    fn close_stdin(&self, _: &TtrpcContext, _: pb::CloseStdinRequest) -> TtResult<pb::Empty> {
        Ok(pb::Empty::new())
    }

    fn remove_container(
        &self,
        _: &TtrpcContext,
        r: pb::RemoveContainerRequest,
    ) -> TtResult<pb::Empty> {
        let mut st = self.state.lock().unwrap();
        st.containers.remove(&r.container_id);
        for ((c, _), exit) in st.exits.iter_mut() {
            if *c == r.container_id && exit.is_none() {
                *exit = Some(137);
            }
        }
        self.changed.notify_all();
        Ok(pb::Empty::new())
    }

    fn freeze_container(
        &self,
        _: &TtrpcContext,
        _: pb::FreezeContainerRequest,
    ) -> TtResult<pb::Empty> {
        Ok(pb::Empty::new())
    }

    fn list_processes(
        &self,
        _: &TtrpcContext,
        _: pb::ListProcessesRequest,
    ) -> TtResult<pb::ListProcessesResponse> {
        Ok(pb::ListProcessesResponse {
            pids: vec![1],
            ..Default::default()
        })
    }

    fn get_oom_event(&self, _: &TtrpcContext, _: pb::GetOOMEventRequest) -> TtResult<pb::OOMEvent> {
        let rx = self.oom.lock().unwrap().take();
        let Some(rx) = rx else {
            return status(Code::UNAVAILABLE, "one OOM reader only");
        };
        let id = rx.recv().unwrap_or_default();
        *self.oom.lock().unwrap() = Some(rx);
        Ok(pb::OOMEvent {
            container_id: id,
            ..Default::default()
        })
    }
}

impl Health for FakeAgent {
    fn check(&self, _: &TtrpcContext, _: CheckRequest) -> TtResult<HealthCheckResponse> {
        Ok(HealthCheckResponse {
            status: health_check_response::ServingStatus::SERVING.into(),
            ..Default::default()
        })
    }
}

/// What the sandbox asked of the host, in order.
#[derive(Default)]
struct Calls(Mutex<Vec<String>>);

impl Calls {
    fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

struct FakeHost {
    socket: PathBuf,
    calls: Arc<Calls>,
    agent: Arc<Mutex<Option<Agent>>>,
}

impl Host for FakeHost {
    fn boot(&self, _: BootRequest) -> crate::error::Result<BootedVm> {
        self.calls.push("boot".into());
        let sock = self.socket.clone();
        let dial: crate::agent::Dialer = Arc::new(move || UnixStream::connect(&sock));
        let agent =
            Agent::connect(dial, Duration::from_secs(5)).map_err(Error::agent("connect"))?;
        *self.agent.lock().unwrap() = Some(agent.clone());
        Ok(BootedVm::agent_only(agent, 4242))
    }
    fn mount_container(
        &self,
        id: &str,
        _: &Path,
        _: &[RootfsMount],
        binds: &[Bind],
    ) -> crate::error::Result<()> {
        self.calls.push(format!("mount {id} {}", binds.len()));
        Ok(())
    }
    fn unmount_container(&self, id: &str) {
        self.calls.push(format!("unmount {id}"));
    }
    fn teardown(&self) {
        self.calls.push("teardown".into());
    }
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<TaskEvent>>,
    changed: Condvar,
}

impl Events for Recorder {
    fn publish(&self, e: TaskEvent) {
        self.events.lock().unwrap().push(e);
        self.changed.notify_all();
    }
}

impl Recorder {
    /// The exit statuses published for `process` (a container id or an exec id).
    fn exits(&self, process: &str) -> Vec<u32> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                TaskEvent::Exit {
                    process: p, exit, ..
                } if p == process => Some(exit.status),
                _ => None,
            })
            .collect()
    }

    fn wait_for_exit(&self, process: &str) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut ev = self.events.lock().unwrap();
        loop {
            drop(ev);
            let found = self.exits(process);
            if !found.is_empty() || Instant::now() > deadline {
                return found;
            }
            ev = self.events.lock().unwrap();
            ev = self
                .changed
                .wait_timeout(ev, Duration::from_millis(100))
                .unwrap()
                .0;
        }
    }

    fn ooms(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                TaskEvent::Oom { id } => Some(id.clone()),
                _ => None,
            })
            .collect()
    }
}

struct World {
    sandbox: Arc<Sandbox>,
    fake: Arc<FakeAgent>,
    calls: Arc<Calls>,
    events: Arc<Recorder>,
    agent: Arc<Mutex<Option<Agent>>>,
    oom: mpsc::Sender<String>,
    dir: PathBuf,
    _server: ttrpc::Server,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn world(name: &str) -> World {
    let dir = std::env::temp_dir().join(format!("husk-sbx-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("bundle")).unwrap();
    std::fs::write(dir.join("bundle/config.json"), r#"{"ociVersion":"1.0.2","process":{"args":["sh"]},"linux":{"namespaces":[{"type":"pid"},{"type":"ipc"},{"type":"network"}]},"mounts":[{"destination":"/data","type":"bind","source":"/tmp","options":["rbind"]}]}"#).unwrap();
    let socket = dir.join("agent.sock");
    let (oom_tx, oom_rx) = mpsc::channel();
    let fake = Arc::new(FakeAgent {
        oom: Mutex::new(Some(oom_rx)),
        ..Default::default()
    });
    let mut services = create_agent_service(fake.clone());
    services.extend(create_health(fake.clone()));
    let mut server = ttrpc::Server::new()
        .bind(&format!("unix://{}", socket.display()))
        .unwrap()
        .register_service(services);
    server.start().unwrap();
    let calls = Arc::new(Calls::default());
    let agent = Arc::new(Mutex::new(None));
    let host = FakeHost {
        socket,
        calls: calls.clone(),
        agent: agent.clone(),
    };
    let events = Arc::new(Recorder::default());
    let sandbox = Sandbox::new(
        name,
        Box::new(host),
        events.clone(),
        HealthPolicy::default(),
    );
    World {
        sandbox,
        fake,
        calls,
        events,
        agent,
        oom: oom_tx,
        dir,
        _server: server,
    }
}

impl World {
    fn create(&self, id: &str) -> crate::error::Result<u32> {
        self.sandbox.create(CreateRequest {
            id: id.into(),
            bundle: self.dir.join("bundle"),
            rootfs: Vec::new(),
            stdio: Stdio::default(),
        })
    }

    fn exec(&self, id: &str, exec: &str) -> crate::error::Result<()> {
        self.sandbox
            .exec(id, exec, Stdio::default(), br#"{"args":["true"]}"#.to_vec())
    }
}

fn code(e: Error) -> ttrpc::Code {
    match ttrpc::Error::from(e) {
        ttrpc::Error::RpcStatus(s) => s.code(),
        other => panic!("not a status: {other:?}"),
    }
}

#[test]
fn create_start_kill_wait_delete() {
    let w = world("life");
    assert_eq!(w.create("c1").unwrap(), 4242);
    assert_eq!(w.calls.all(), ["boot", "mount c1 1"]);
    assert_eq!(w.sandbox.start("c1", "").unwrap(), 4242);
    // Start twice is refused, delete while running too.
    assert_eq!(
        code(w.sandbox.start("c1", "").unwrap_err()),
        Code::FAILED_PRECONDITION
    );
    assert_eq!(
        code(w.sandbox.delete("c1", "").unwrap_err()),
        Code::FAILED_PRECONDITION
    );
    w.sandbox.kill("c1", "", 15).unwrap();
    assert_eq!(w.sandbox.wait("c1", "").unwrap().status, 143);
    assert_eq!(w.events.wait_for_exit("c1"), [143]);
    let (_, exit) = w.sandbox.delete("c1", "").unwrap();
    assert_eq!(exit.status, 143);
    // The last container took the VM and the host's state with it.
    assert_eq!(
        w.calls.all(),
        ["boot", "mount c1 1", "unmount c1", "teardown"]
    );
    assert_eq!(w.events.exits("c1"), [143], "one TaskExit per process");
    assert_eq!(w.sandbox.vmm_pid(), 0);
}

#[test]
fn unknown_ids_are_not_found_and_duplicates_already_exist() {
    let w = world("ids");
    assert_eq!(
        code(w.sandbox.start("nope", "").unwrap_err()),
        Code::NOT_FOUND
    );
    assert_eq!(
        code(w.sandbox.kill("nope", "", 9).unwrap_err()),
        Code::NOT_FOUND
    );
    assert_eq!(
        code(w.sandbox.wait("nope", "").unwrap_err()),
        Code::NOT_FOUND
    );
    w.create("c1").unwrap();
    assert_eq!(code(w.create("c1").unwrap_err()), Code::ALREADY_EXISTS);
    assert_eq!(
        code(w.sandbox.delete("c1", "x").unwrap_err()),
        Code::NOT_FOUND
    );
    assert_eq!(
        code(w.create("../etc").unwrap_err()),
        Code::INVALID_ARGUMENT
    );
    w.sandbox.start("c1", "").unwrap();
    w.exec("c1", "e1").unwrap();
    assert_eq!(code(w.exec("c1", "e1").unwrap_err()), Code::ALREADY_EXISTS);
}

#[test]
fn wait_returns_for_processes_that_never_run() {
    let w = world("never");
    // Killed before start: no signal reaches the guest, the waiter wakes with 128+signal.
    w.create("killed").unwrap();
    let waiter = {
        let s = w.sandbox.clone();
        std::thread::spawn(move || s.wait("killed", "").unwrap().status)
    };
    std::thread::sleep(Duration::from_millis(50));
    w.sandbox.kill("killed", "", 0).unwrap();
    w.sandbox.kill("killed", "", 15).unwrap();
    assert_eq!(waiter.join().unwrap(), 143);
    assert_eq!(w.events.exits("killed"), [143]);
    assert!(w.fake.state.lock().unwrap().signals.is_empty());
    assert_eq!(
        code(w.sandbox.kill("killed", "", 9).unwrap_err()),
        Code::NOT_FOUND
    );

    // Deleted while created.
    w.create("deleted").unwrap();
    let (_, exit) = w.sandbox.delete("deleted", "").unwrap();
    assert_eq!(exit.status, 137);
    assert_eq!(w.events.exits("deleted"), [137]);

    // A start that failed in the guest.
    w.create("bad-start").unwrap();
    let err = w.sandbox.start("bad-start", "").unwrap_err();
    assert!(
        err.chain().contains("executable file not found"),
        "{}",
        err.chain()
    );
    assert_eq!(w.sandbox.wait("bad-start", "").unwrap().status, 255);
    assert_eq!(w.events.exits("bad-start"), [255]);
    assert_eq!(
        code(w.sandbox.start("bad-start", "").unwrap_err()),
        Code::FAILED_PRECONDITION
    );
}

#[test]
fn execs_need_a_running_unpaused_container() {
    let w = world("exec");
    w.create("c1").unwrap();
    assert_eq!(
        code(w.exec("c1", "e1").unwrap_err()),
        Code::FAILED_PRECONDITION
    );
    w.sandbox.start("c1", "").unwrap();
    w.sandbox.freeze("c1", true).unwrap();
    let err = w.exec("c1", "e1").unwrap_err();
    assert!(matches!(err, Error::Paused(_)), "{err}");
    w.sandbox.freeze("c1", false).unwrap();
    w.exec("c1", "e1").unwrap();
    // An exec deleted before it started still ends its waiters.
    let (_, exit) = w.sandbox.delete("c1", "e1").unwrap();
    assert_eq!(exit.status, 137);
    w.exec("c1", "e2").unwrap();
    w.sandbox.start("c1", "e2").unwrap();
    w.sandbox.kill("c1", "e2", 9).unwrap();
    assert_eq!(w.sandbox.wait("c1", "e2").unwrap().status, 137);
}

#[test]
fn sixty_blocked_execs_leave_the_health_check_answering() {
    let w = world("many");
    w.create("c1").unwrap();
    w.sandbox.start("c1", "").unwrap();
    for i in 0..60 {
        let id = format!("e{i}");
        w.exec("c1", &id).unwrap();
        w.sandbox.start("c1", &id).unwrap();
    }
    // Every exec now has a wait and two reads blocked in the agent.
    let agent = w.agent.lock().unwrap().clone().unwrap();
    let t = Instant::now();
    agent.check_health(Duration::from_secs(5)).unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    let pids = w.sandbox.pids("c1");
    assert!(pids.is_ok(), "short calls still answer: {pids:?}");
    for i in 0..60 {
        w.sandbox.kill("c1", &format!("e{i}"), 9).unwrap();
    }
    for i in 0..60 {
        assert_eq!(w.sandbox.wait("c1", &format!("e{i}")).unwrap().status, 137);
    }
}

#[test]
fn oom_events_only_for_our_containers() {
    let w = world("oom");
    w.create("c1").unwrap();
    w.oom.send("someone-else".into()).unwrap();
    w.oom.send("c1".into()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.events.ooms().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(w.events.ooms(), ["c1"]);
}

#[test]
fn the_vm_boots_once_for_concurrent_creates() {
    let w = Arc::new(world("concurrent"));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let w = w.clone();
            std::thread::spawn(move || w.create(&format!("c{i}")).unwrap())
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let boots = w.calls.all().iter().filter(|c| *c == "boot").count();
    assert_eq!(boots, 1);
}

#[test]
fn host_namespaces_are_refused_by_field_before_anything_boots() {
    for (namespaces, field) in [
        (r#"[{"type":"pid"},{"type":"ipc"}]"#, "hostNetwork"),
        (r#"[{"type":"network"},{"type":"ipc"}]"#, "hostPID"),
        (r#"[{"type":"network"},{"type":"pid"}]"#, "hostIPC"),
    ] {
        // A sandbox whose first create failed shuts down: a new one each time.
        let w = world(field);
        std::fs::write(
            w.dir.join("bundle/config.json"),
            format!(r#"{{"ociVersion":"1.0.2","process":{{"args":["sh"]}},"linux":{{"namespaces":{namespaces}}}}}"#),
        )
        .unwrap();
        let e = w.create("h1").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&format!("{field}: true")), "{msg}");
        assert!(msg.contains("runc"), "{msg}");
        assert_eq!(code(e), Code::INVALID_ARGUMENT);
        assert!(w.calls.all().is_empty(), "{:?}", w.calls.all());
    }
}
