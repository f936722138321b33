//! The pod's OCI containers, run with youki's `libcontainer`, which also loads the container's
//! seccomp profile (checked first in `seccomp`).
//!
//! libcontainer forks with raw `clone3` and runs Rust code in the child, which is only safe in
//! a single-threaded process. PID 1 serves ttrpc on many threads, so every libcontainer call
//! runs in a short-lived copy of this binary (`/init runtime ...`, see [`runtime_main`]). The
//! container's processes are cloned with `CLONE_PARENT`, so they are children of that helper;
//! when it exits they pass to PID 1, whose reaper reports their exit to the process table.
//! [`SPAWN_LOCK`] is held from starting a helper until its process is registered, so no exit
//! is reaped before its process is in the table.

use std::collections::HashMap;
use std::fs::File;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use husk_agent_protocol::CONTAINER_NS_PREFIX;
use libcgroups::common::{
    create_cgroup_manager, AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt,
    FreezerState,
};
use libcontainer::oci_spec::runtime::LinuxResources;

use crate::oom::OomWatcher;
use crate::process::{ProcessError, Stdio3, Table, SPAWN_LOCK};
use crate::seccomp;

/// Where libcontainer keeps its per-container state in the guest.
const STATE_ROOT: &str = "/run/husk/libcontainer";
/// Where the agent writes each container's bundle (its config.json).
const BUNDLES: &str = "/run/husk/bundles";

/// The table key of a container's process; the init process has the container's id as exec id.
pub fn key(container_id: &str, exec_id: &str) -> String {
    if container_id.is_empty() {
        exec_id.to_string()
    } else if exec_id.is_empty() {
        format!("{container_id}/{container_id}")
    } else {
        format!("{container_id}/{exec_id}")
    }
}

/// The cgroup v2 directory of cgroup path `cgroup`.
fn cgroup_dir(cgroup: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup").join(cgroup.trim_start_matches('/'))
}

/// Container and exec ids become file names: refuse anything that is not a plain name.
pub fn check_id(what: &str, id: &str) -> Result<(), ProcessError> {
    if husk_agent_protocol::is_plain_name(id, 128) {
        Ok(())
    } else {
        Err(ProcessError::BadRequest(format!(
            "bad {what} {id:?}: use 1 to 128 letters, digits, '-', '_' or '.', not starting with '.'"
        )))
    }
}

struct Container {
    cgroup: Option<String>,
}

/// The containers of this sandbox.
pub struct Containers {
    by_id: Mutex<HashMap<String, Container>>,
    /// None when the guest kernel has no inotify: no OOM events then.
    oom: Option<Arc<OomWatcher>>,
}

impl Containers {
    pub fn new() -> Containers {
        let oom = OomWatcher::start()
            .map_err(|e| crate::log::info(&format!("no OOM events: {e}")))
            .ok();
        Containers {
            by_id: Mutex::new(HashMap::new()),
            oom,
        }
    }

    /// Waits for the next out-of-memory kill in a container; its id.
    pub fn next_oom(&self) -> Result<String, ProcessError> {
        match &self.oom {
            Some(oom) => Ok(oom.next()),
            None => Err(ProcessError::Runtime(
                "the guest cannot watch for OOM kills (no inotify)".into(),
            )),
        }
    }

    /// Creates container `id` from `spec` (OCI runtime spec JSON whose root is already a path in
    /// the guest). Its init process waits for [`Containers::start`].
    pub fn create(&self, procs: &Table, id: &str, spec: &[u8]) -> Result<(), ProcessError> {
        check_id("container id", id)?;
        let mut spec: serde_json::Value = serde_json::from_slice(spec)
            .map_err(|e| ProcessError::BadRequest(format!("the OCI spec is not JSON: {e}")))?;
        seccomp::check_profile(&spec).map_err(|e| ProcessError::BadRequest(e.to_string()))?;
        if let Some(process) = spec.get_mut("process") {
            seccomp::nnp_for_libcontainer(process);
        }
        self.join_container_namespaces(procs, &mut spec)?;
        if crate::devices::is_privileged(&spec) {
            let n = crate::devices::add_to_privileged(
                &mut spec,
                crate::devices::guest_devices(Path::new("/dev")),
            );
            crate::log::debug(&format!(
                "privileged container {id}: {n} guest devices added"
            ));
        }
        crate::shm::ensure_pod_shm(&spec)?;
        let terminal = spec["process"]["terminal"].as_bool().unwrap_or(false);
        let cgroup = spec["linux"]["cgroupsPath"].as_str().map(str::to_string);
        {
            let mut all = self.by_id.lock().expect("containers lock");
            if all.contains_key(id) {
                return Err(ProcessError::Exists(format!("container {id}")));
            }
            all.insert(
                id.to_string(),
                Container {
                    cgroup: cgroup.clone(),
                },
            );
        }
        let result = (|| {
            let bundle = Path::new(BUNDLES).join(id);
            std::fs::create_dir_all(&bundle)
                .map_err(|e| ProcessError::Io(format!("cannot create {}", bundle.display()), e))?;
            let json = serde_json::to_vec(&spec).expect("a JSON value serialises");
            std::fs::write(bundle.join("config.json"), json)
                .map_err(|e| ProcessError::Io("cannot write config.json".into(), e))?;
            let bundle = bundle.to_string_lossy().into_owned();
            start_process(procs, &key(id, ""), terminal, &["create", id, &bundle])
        })();
        if result.is_err() {
            self.by_id.lock().expect("containers lock").remove(id);
            let _ = std::fs::remove_dir_all(Path::new(BUNDLES).join(id));
        } else if let (Some(oom), Some(cgroup)) = (&self.oom, &cgroup) {
            if let Err(e) = oom.watch(id, &cgroup_dir(cgroup)) {
                crate::log::info(&format!("no OOM events for container {id}: {e}"));
            }
        }
        result
    }

    pub fn start(&self, id: &str) -> Result<(), ProcessError> {
        self.known(id)?;
        run_helper(&["start", id]).map(|_| ())
    }

    /// Runs another process in container `id`, from an OCI process JSON.
    pub fn exec(
        &self,
        procs: &Table,
        id: &str,
        exec_id: &str,
        process: &[u8],
    ) -> Result<(), ProcessError> {
        self.known(id)?;
        check_id("exec id", exec_id)?;
        let key = key(id, exec_id);
        if procs.contains(&key) {
            return Err(ProcessError::Exists(format!("exec {exec_id} in {id}")));
        }
        let mut value: serde_json::Value = serde_json::from_slice(process)
            .map_err(|e| ProcessError::BadRequest(format!("the OCI process is not JSON: {e}")))?;
        let terminal = value["terminal"].as_bool().unwrap_or(false);
        // The container's profile applies to the exec too (libcontainer loads it from the
        // container's spec), at the point this process's `noNewPrivileges` picks.
        seccomp::nnp_for_libcontainer(&mut value);
        let path = Path::new(BUNDLES)
            .join(id)
            .join(format!("exec-{exec_id}.json"));
        let process = serde_json::to_vec(&value).expect("a JSON value serialises");
        std::fs::write(&path, process)
            .map_err(|e| ProcessError::Io(format!("cannot write {}", path.display()), e))?;
        let result = start_process(
            procs,
            &key,
            terminal,
            &["exec", id, &path.to_string_lossy()],
        );
        let _ = std::fs::remove_file(&path);
        result
    }

    /// Kills what is left of container `id` and removes its state, cgroup and bundle.
    pub fn remove(&self, procs: &Table, id: &str) -> Result<(), ProcessError> {
        self.known(id)?;
        if let Some(oom) = &self.oom {
            oom.forget(id);
        }
        run_helper(&["delete", id])?;
        self.by_id.lock().expect("containers lock").remove(id);
        procs.forget_prefix(&format!("{id}/"));
        let _ = std::fs::remove_dir_all(Path::new(BUNDLES).join(id));
        Ok(())
    }

    /// Memory in bytes, CPU time in ns and the number of tasks, from the container's cgroup.
    pub fn stats(&self, id: &str) -> Result<(u64, u64, u64), ProcessError> {
        let dir = cgroup_dir(&self.cgroup(id)?);
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let memory = read("memory.current").trim().parse().unwrap_or(0);
        let pids = read("pids.current").trim().parse().unwrap_or(0);
        let cpu_us: u64 = read("cpu.stat")
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Ok((memory, cpu_us * 1000, pids))
    }

    /// Applies new resource limits (OCI `LinuxResources` JSON) to container `id`'s cgroup.
    pub fn update(&self, id: &str, resources: &[u8]) -> Result<(), ProcessError> {
        let resources: LinuxResources = serde_json::from_slice(resources).map_err(|e| {
            ProcessError::BadRequest(format!("the resources are not OCI LinuxResources: {e}"))
        })?;
        let manager = self.cgroup_manager(id)?;
        let opt = ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        };
        manager
            .apply(&opt)
            .map_err(|e| ProcessError::Runtime(format!("cannot update container {id}: {e}")))
    }

    /// Freezes or thaws every process of container `id` (its cgroup's freezer).
    pub fn freeze(&self, id: &str, frozen: bool) -> Result<(), ProcessError> {
        let state = if frozen {
            FreezerState::Frozen
        } else {
            FreezerState::Thawed
        };
        self.cgroup_manager(id)?.freeze(state).map_err(|e| {
            ProcessError::Runtime(format!("cannot freeze or thaw container {id}: {e}"))
        })
    }

    /// The pids of every process in container `id`'s cgroup.
    pub fn pids(&self, id: &str) -> Result<Vec<u32>, ProcessError> {
        let pids = self
            .cgroup_manager(id)?
            .get_all_pids()
            .map_err(|e| ProcessError::Runtime(format!("cannot list container {id}: {e}")))?;
        Ok(pids.into_iter().map(|p| p.as_raw() as u32).collect())
    }

    fn cgroup_manager(&self, id: &str) -> Result<AnyCgroupManager, ProcessError> {
        let cgroup = self.cgroup(id)?;
        create_cgroup_manager(CgroupConfig {
            cgroup_path: PathBuf::from(cgroup),
            systemd_cgroup: false,
            container_name: id.to_string(),
        })
        .map_err(|e| ProcessError::Runtime(format!("container {id}'s cgroup: {e}")))
    }

    fn cgroup(&self, id: &str) -> Result<String, ProcessError> {
        let all = self.by_id.lock().expect("containers lock");
        let c = all
            .get(id)
            .ok_or_else(|| ProcessError::NotFound(format!("container {id}")))?;
        Ok(c.cgroup.clone().unwrap_or_default())
    }

    /// Points each `container:ID` namespace path of `spec` at that namespace of container ID's
    /// init process (the pod's sandbox container, whose namespaces the app containers share).
    fn join_container_namespaces(
        &self,
        procs: &Table,
        spec: &mut serde_json::Value,
    ) -> Result<(), ProcessError> {
        let Some(list) = spec["linux"]["namespaces"].as_array_mut() else {
            return Ok(());
        };
        for ns in list {
            let Some(other) = ns["path"]
                .as_str()
                .and_then(|p| p.strip_prefix(CONTAINER_NS_PREFIX))
            else {
                continue;
            };
            let kind = match ns["type"].as_str() {
                Some(k @ ("uts" | "ipc" | "pid")) => k,
                k => {
                    return Err(ProcessError::BadRequest(format!(
                        "namespace {k:?} cannot be joined from container {other}"
                    )))
                }
            };
            self.known(other)?;
            let init = procs.get(&key(other, ""))?;
            ns["path"] = format!("/proc/{}/ns/{kind}", init.pid).into();
        }
        Ok(())
    }

    fn known(&self, id: &str) -> Result<(), ProcessError> {
        if self.by_id.lock().expect("containers lock").contains_key(id) {
            Ok(())
        } else {
            Err(ProcessError::NotFound(format!("container {id}")))
        }
    }
}

/// Starts a container process through the helper and registers it under `key`.
fn start_process(
    procs: &Table,
    key: &str,
    terminal: bool,
    args: &[&str],
) -> Result<(), ProcessError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |e| ProcessError::Io(what, e)
    };
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let _spawning = SPAWN_LOCK.lock().expect("spawn lock");
    if terminal {
        let sock = PathBuf::from(format!("/run/husk/console-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock).map_err(io("cannot bind a console socket"))?;
        args.push(sock.to_string_lossy().into_owned());
        let out = run_helper_with(&args, None);
        let _ = std::fs::remove_file(&sock);
        let pid = out?;
        let master = receive_pty(&listener).map_err(io("no terminal from the container"))?;
        let stdio = Stdio3 {
            stdin: Some(master.try_clone().map_err(io("dup"))?),
            stdout: Some(master.try_clone().map_err(io("dup"))?),
            stderr: None,
            pty: Some(master),
        };
        procs.register(key, pid, stdio)?;
    } else {
        let (in_r, in_w) = pipe().map_err(io("pipe"))?;
        let (out_r, out_w) = pipe().map_err(io("pipe"))?;
        let (err_r, err_w) = pipe().map_err(io("pipe"))?;
        let err_r = File::from(err_r);
        let pid = run_helper_with(&args, Some([in_r, out_w, err_w])).map_err(|e| {
            // The container's process reports why it could not start on its own stderr.
            match (e, early_output(&err_r)) {
                (ProcessError::Runtime(m), Some(out)) => {
                    ProcessError::Runtime(format!("{m}: {out}"))
                }
                (e, _) => e,
            }
        })?;
        let stdio = Stdio3 {
            stdin: Some(File::from(in_w)),
            stdout: Some(File::from(out_r)),
            stderr: Some(err_r),
            pty: None,
        };
        procs.register(key, pid, stdio)?;
    }
    Ok(())
}

fn run_helper(args: &[&str]) -> Result<i32, ProcessError> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let _spawning = SPAWN_LOCK.lock().expect("spawn lock");
    run_helper_with(&args, None)
}

/// Runs `/init runtime ARGS` with `stdio` as its fds 3, 4 and 5; returns the pid it prints.
/// The caller holds [`SPAWN_LOCK`], so PID 1's reaper leaves the helper to us.
fn run_helper_with(args: &[String], stdio: Option<[OwnedFd; 3]>) -> Result<i32, ProcessError> {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/init"));
    let mut cmd = Command::new(exe);
    cmd.arg("runtime")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Keep the fds above 5 so that moving them to 3..=5 cannot overwrite one another.
    let raw: Option<[RawFd; 3]> = match &stdio {
        Some(fds) => {
            let mut raw = [0; 3];
            for (i, fd) in fds.iter().enumerate() {
                // SAFETY: F_DUPFD_CLOEXEC on a valid fd returns a new fd we close below.
                let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
                if r < 0 {
                    return Err(ProcessError::Io(
                        "dup".into(),
                        std::io::Error::last_os_error(),
                    ));
                }
                raw[i] = r;
            }
            Some(raw)
        }
        None => None,
    };
    // SAFETY: between fork and exec only async-signal-safe calls: sigprocmask and dup2.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            if let Some(raw) = raw {
                for (i, fd) in raw.iter().enumerate() {
                    if libc::dup2(*fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            Ok(())
        });
    }
    let out = cmd.output();
    if let Some(raw) = raw {
        for fd in raw {
            // SAFETY: these fds were duplicated above for the child and are ours to close.
            unsafe { libc::close(fd) };
        }
    }
    drop(stdio);
    let out = out.map_err(|e| ProcessError::Io("cannot run the container runtime".into(), e))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(ProcessError::Runtime(if msg.is_empty() {
            format!("the container runtime failed ({})", out.status)
        } else {
            msg
        }));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0))
}

/// What a failed process already wrote to `pipe`, without waiting for more.
fn early_output(pipe: &File) -> Option<String> {
    use std::io::Read;
    // SAFETY: F_SETFL on a valid fd we own.
    unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut buf = vec![0u8; 4096];
    let n = (&*pipe).read(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into a valid array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Takes the terminal master that the container's process sent to the console socket. It was
/// sent before the helper returned, so it waits in the socket's queue already.
fn receive_pty(listener: &UnixListener) -> std::io::Result<File> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    listener.set_nonblocking(true)?;
    let (conn, _) = listener.accept()?;
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut name = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                for extra in &fds[1..] {
                    // SAFETY: extra fds we were sent are ours and unused.
                    unsafe { libc::close(*extra) };
                }
                // SAFETY: the kernel just gave us this fd; nothing else owns it.
                return Ok(unsafe { File::from_raw_fd(fd) });
            }
        }
    }
    Err(std::io::Error::other("the console socket carried no fd"))
}

/// `/init runtime create|start|exec|delete ...`: one libcontainer call in a single-threaded
/// process. Prints the new process's pid; errors go to stderr with exit status 1.
pub fn runtime_main(args: &[String]) -> ! {
    let debug = std::fs::read_to_string("/proc/cmdline")
        .map(|c| c.split_whitespace().any(|w| w == "agent.log=debug"))
        .unwrap_or(false);
    let _ = tracing_subscriber::fmt()
        .with_writer(HelperLog {
            pid: std::process::id(),
        })
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_env_filter(if debug { "debug" } else { "warn" })
        .try_init();
    let result = runtime(args);
    match result {
        Ok(Some(pid)) => {
            println!("{pid}");
            std::process::exit(0)
        }
        Ok(None) => std::process::exit(0),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1)
        }
    }
}

/// libcontainer's log: everything asked for from the helper itself, to its stderr (the agent
/// reads it). The container's processes are clones of the helper whose stderr soon becomes the
/// container's: from them only errors pass, which explain a failed start to the user.
struct HelperLog {
    pid: u32,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for HelperLog {
    type Writer = Box<dyn std::io::Write>;

    fn make_writer(&'a self) -> Self::Writer {
        Box::new(std::io::stderr())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        if std::process::id() == self.pid || *meta.level() == tracing::Level::ERROR {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::sink())
        }
    }
}

fn runtime(args: &[String]) -> Result<Option<i32>, String> {
    use libcontainer::container::builder::ContainerBuilder;
    use libcontainer::container::Container;
    use libcontainer::syscall::syscall::SyscallType;

    let arg = |i: usize| args.get(i).cloned().ok_or("missing argument".to_string());
    std::fs::create_dir_all(STATE_ROOT).map_err(|e| format!("cannot create {STATE_ROOT}: {e}"))?;
    let builder = |id: &str, console: Option<&String>| {
        let b = ContainerBuilder::new(id.to_string(), SyscallType::Linux)
            .with_root_path(STATE_ROOT)
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(match console {
            Some(sock) => b.with_console_socket(Some(sock)),
            // SAFETY: the agent put the container's stdin, stdout and stderr at fds 3, 4 and 5
            // of this process, and nothing else here uses them.
            None => unsafe {
                b.with_stdin(OwnedFd::from_raw_fd(3))
                    .with_stdout(OwnedFd::from_raw_fd(4))
                    .with_stderr(OwnedFd::from_raw_fd(5))
            },
        })
    };
    let load = |id: &str| {
        Container::load(Path::new(STATE_ROOT).join(id)).map_err(|e| format!("container {id}: {e}"))
    };
    match arg(0)?.as_str() {
        "create" => {
            let (id, bundle) = (arg(1)?, arg(2)?);
            let container = builder(&id, args.get(3))?
                .as_init(&bundle)
                .with_systemd(false)
                // The guest's root is the initramfs (rootfs), which pivot_root refuses to
                // leave: move the container's root over / and chroot instead, as runc
                // --no-pivot does.
                .with_no_pivot(true)
                .with_detach(true)
                .build()
                .map_err(|e| format!("cannot create container {id}: {e}"))?;
            Ok(container.pid().map(|p| p.as_raw()))
        }
        "exec" => {
            let (id, process) = (arg(1)?, arg(2)?);
            let pid = builder(&id, args.get(3))?
                .as_tenant()
                .with_process(Some(&process))
                .with_detach(true)
                .build()
                .map_err(|e| format!("cannot exec in container {id}: {e}"))?;
            Ok(Some(pid.as_raw()))
        }
        "start" => {
            let id = arg(1)?;
            load(&id)?
                .start()
                .map_err(|e| format!("cannot start container {id}: {e}"))?;
            Ok(None)
        }
        "delete" => {
            let id = arg(1)?;
            load(&id)?
                .delete(true)
                .map_err(|e| format!("cannot delete container {id}: {e}"))?;
            Ok(None)
        }
        other => Err(format!("unknown runtime command {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_ids() {
        assert_eq!(key("", "e1"), "e1");
        assert_eq!(key("c1", ""), "c1/c1");
        assert_eq!(key("c1", "e1"), "c1/e1");
        assert!(check_id("container id", "abc-1_2.3").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(129)] {
            assert!(check_id("container id", bad).is_err(), "{bad:?}");
        }
    }
}
