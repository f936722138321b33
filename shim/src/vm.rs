//! A VM: `husk-vmm` as a child process with a hybrid-vsock socket in a private runtime
//! directory, and the [`Agent`] inside it. Dropping a [`Vm`] kills the VMM and removes the
//! runtime directory.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent::{self, Agent, AgentError};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("Cannot find {what}: looked in {tried}")]
    NotFound { what: &'static str, tried: String },
    #[error("Cannot create the runtime directory {0}")]
    RuntimeDir(PathBuf, #[source] std::io::Error),
    #[error("Cannot start husk-vmm ({0})")]
    Spawn(PathBuf, #[source] std::io::Error),
    #[error("husk-vmm exited ({status}) before the agent answered; guest console:\n{console}")]
    VmmExited {
        status: String,
        console: String,
        /// The guest reset or crashed (husk-vmm's exit statuses 3 and 4), as opposed to a VMM
        /// that could not start it.
        guest_failed: bool,
    },
    #[error("The agent did not answer within {0:?} (last attempt: {1}); guest console:\n{2}")]
    Timeout(Duration, String, String),
}

impl VmError {
    /// The guest itself did not come up (it reset or crashed before its agent answered, or its
    /// agent never answered), although the VMM ran: a fresh boot may well succeed.
    pub fn guest_failed_to_boot(&self) -> bool {
        matches!(
            self,
            VmError::Timeout(..)
                | VmError::VmmExited {
                    guest_failed: true,
                    ..
                }
        )
    }
}

/// The hybrid-vsock socket in the VM's runtime directory.
const VSOCK_SOCKET: &str = "vsock.sock";

/// What the VM gets: husk-vmm's configuration as a value, turned into its command line in
/// one place ([`VmConfig::vmm_args`]).
#[derive(Clone, Debug)]
pub struct VmConfig {
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u64,
    /// Extra kernel parameters (e.g. `agent.log=debug`).
    pub kernel_params: Option<String>,
    /// How long to wait for the agent's first answer.
    pub boot_timeout: Duration,
    /// Host directories shared with the guest (virtio-fs), mounted by the agent at boot.
    pub volumes: Vec<Volume>,
    /// The VM's runtime directory (sockets, console log); a fresh one when `None`. It is
    /// removed with the VM.
    pub runtime_dir: Option<PathBuf>,
    /// virtio-fs cache mode of the volumes (`never`, `auto`, `always`); husk-vmm's default
    /// when `None`.
    pub fs_cache: Option<String>,
    /// Let the guest set `security.*` and `trusted.*` xattrs on the volumes (refused by
    /// default).
    pub fs_all_xattrs: bool,
    /// A cgroup's `cgroup.procs`: the VMM joins that cgroup before it runs, so that everything
    /// it allocates is charged there.
    pub cgroup_procs: Option<PathBuf>,
    /// virtio-net cards, each on a tap the caller opened (the VMM inherits the descriptor).
    pub net: Vec<NetDevice>,
}

/// A virtio-net card of the VM: an open tap, and the MAC and MTU the guest's interface gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetDevice {
    /// Open in the caller for as long as the VMM is being started; inherited by the VMM.
    pub tap_fd: RawFd,
    pub mac: [u8; 6],
    pub mtu: u32,
}

impl VmConfig {
    /// husk-vmm's arguments for a VM whose runtime directory is `dir`.
    pub fn vmm_args(&self, dir: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut arg = |k: &str, v: &OsString| {
            args.push(k.into());
            args.push(v.clone());
        };
        arg("--kernel", &self.kernel.clone().into());
        arg("--initrd", &self.initrd.clone().into());
        arg("--vcpus", &self.vcpus.to_string().into());
        arg("--memory", &self.memory_mib.to_string().into());
        arg("--console", &dir.join("console.log").into());
        arg("--vsock-uds", &dir.join(VSOCK_SOCKET).into());
        let mut params: Vec<String> = self.kernel_params.iter().cloned().collect();
        for (i, v) in self.volumes.iter().enumerate() {
            let tag = format!("vol{i}");
            let mut fs = OsString::from(format!("tag={tag},path="));
            fs.push(&v.host);
            if let Some(c) = &self.fs_cache {
                fs.push(format!(",cache={c}"));
            }
            if v.read_only {
                fs.push(",ro");
            }
            if self.fs_all_xattrs {
                fs.push(",xattr=all");
            }
            arg("--fs", &fs);
            let ro = if v.read_only { ":ro" } else { "" };
            params.push(format!("agent.mount={tag}:{}{ro}", v.guest));
        }
        for n in &self.net {
            let m = n.mac;
            let mac = format!(
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            );
            arg(
                "--net",
                &format!("fd={},mac={mac},mtu={}", n.tap_fd, n.mtu).into(),
            );
        }
        if !params.is_empty() {
            arg("--append", &params.join(" ").into());
        }
        args
    }
}

/// `HOSTDIR:GUESTDIR[:ro]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

impl std::str::FromStr for Volume {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let (host, guest, read_only) = match parts.as_slice() {
            [h, g] => (h, g, false),
            [h, g, "ro"] => (h, g, true),
            [h, g, "rw"] => (h, g, false),
            _ => return Err(format!("volume {s:?} is not HOSTDIR:GUESTDIR[:ro]")),
        };
        if !guest.starts_with('/') || guest.contains(char::is_whitespace) {
            return Err(format!(
                "guest directory {guest:?} must be an absolute path without spaces"
            ));
        }
        let host = std::fs::canonicalize(host).map_err(|e| format!("volume {host}: {e}"))?;
        if !host.is_dir() {
            return Err(format!("volume {}: not a directory", host.display()));
        }
        Ok(Volume {
            host,
            guest: guest.to_string(),
            read_only,
        })
    }
}

/// Where the guest image may be: installed, beside the binary (a build tree), or in the
/// current directory's build tree.
pub fn guest_image_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("/usr/share/kata-containers/husk")];
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir.join("../guest"));
    }
    dirs.push(PathBuf::from("target/guest"));
    dirs
}

/// `husk-vmm`: beside the running binary, else on PATH.
pub fn find_vmm() -> Result<PathBuf, VmError> {
    let mut tried = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let p = dir.join("husk-vmm");
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p.display().to_string());
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("husk-vmm");
        if p.is_file() {
            return Ok(p);
        }
    }
    tried.push("$PATH".into());
    Err(VmError::NotFound {
        what: "husk-vmm",
        tried: tried.join(", "),
    })
}

pub fn find_guest_image() -> Result<(PathBuf, PathBuf), VmError> {
    let dirs = guest_image_dirs();
    dirs.iter()
        .find(|d| d.join("vmlinux").is_file() && d.join("initramfs.img").is_file())
        .map(|d| (d.join("vmlinux"), d.join("initramfs.img")))
        .ok_or_else(|| VmError::NotFound {
            what: "the guest image (vmlinux + initramfs.img)",
            tried: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The lines of husk-vmm's stderr kept for error messages.
const STDERR_TAIL: usize = 20;
/// The longest stderr line kept; the VMM is ours, but its messages quote guest values.
const STDERR_LINE_MAX: u64 = 4096;

/// The `husk-vmm` child and its runtime directory; dropping it kills the VMM and removes the
/// directory (sockets, console log).
struct VmProcess {
    child: Child,
    dir: PathBuf,
    /// The last lines of the VMM's stderr, which a thread logs for the VM's whole life.
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    stderr_done: Mutex<mpsc::Receiver<()>>,
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl VmProcess {
    /// The VMM's last stderr lines, once it has exited and they are all read.
    fn stderr_after_exit(&self) -> String {
        let _ = self
            .stderr_done
            .lock()
            .expect("stderr lock")
            .recv_timeout(Duration::from_secs(2));
        let tail = self.stderr_tail.lock().expect("stderr lock");
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// Reads the VMM's stderr into the shim's log until the VMM exits, keeping the last lines.
fn drain_stderr(
    stderr: impl Read + Send + 'static,
    pid: u32,
) -> (Arc<Mutex<VecDeque<String>>>, mpsc::Receiver<()>) {
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let (done_tx, done_rx) = mpsc::channel();
    let keep = tail.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut line = Vec::new();
        loop {
            line.clear();
            match (&mut reader)
                .take(STDERR_LINE_MAX)
                .read_until(b'\n', &mut line)
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            if text.is_empty() {
                continue;
            }
            tracing::warn!(target: "husk_vmm", vmm_pid = pid, "{text}");
            let mut t = keep.lock().expect("stderr lock");
            if t.len() == STDERR_TAIL {
                t.pop_front();
            }
            t.push_back(text);
        }
        let _ = done_tx.send(());
    });
    (tail, done_rx)
}

pub struct Vm {
    pub agent: Agent,
    process: VmProcess,
}

impl Vm {
    /// Boots the VM and connects to its agent. Agent log lines go to `log` as they arrive.
    pub fn start(config: &VmConfig, log: Box<dyn Write + Send>) -> Result<Vm, VmError> {
        let dir = match &config.runtime_dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|e| VmError::RuntimeDir(d.clone(), e))?;
                d.clone()
            }
            None => make_runtime_dir()?,
        };
        let sock = dir.join(VSOCK_SOCKET);
        // The agent connects to the host's port 1025 for its log: listen before it boots.
        let log_path = format!("{}_{}", sock.display(), husk_agent_protocol::LOG_PORT);
        let log_listener = match UnixListener::bind(&log_path) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(VmError::RuntimeDir(dir, e));
            }
        };
        // Ends when the VM is gone (the agent's connection closes).
        std::thread::spawn(move || agent::copy_log(log_listener, log));

        let mut cmd = Command::new(&config.vmm);
        cmd.args(config.vmm_args(&dir))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(procs) = &config.cgroup_procs {
            join_cgroup_before_exec(&mut cmd, procs)
                .map_err(|e| VmError::Spawn(config.vmm.clone(), e))?;
        }
        // SAFETY: between fork and exec only prctl, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                // The VMM never gains privileges through exec, and dies with the shim.
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        inherit_fds(&mut cmd, config.net.iter().map(|n| n.tap_fd).collect());
        let mut child = match spawn_from_lasting_thread(cmd) {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(VmError::Spawn(config.vmm.clone(), e));
            }
        };
        let stderr = child.stderr.take().expect("stderr is piped");
        let (stderr_tail, stderr_done) = drain_stderr(stderr, child.id());
        let mut process = VmProcess {
            child,
            dir,
            stderr_tail,
            stderr_done: Mutex::new(stderr_done),
        };
        let agent = wait_for_agent(&mut process, &sock, config.boot_timeout)?;
        Ok(Vm { agent, process })
    }

    pub fn runtime_dir(&self) -> &Path {
        &self.process.dir
    }

    /// The VMM's hybrid-vsock socket.
    pub fn vsock_path(&self) -> PathBuf {
        self.process.dir.join(VSOCK_SOCKET)
    }

    /// The last lines of the guest's console, for diagnosing a VM that went away.
    pub fn console_tail(&self) -> String {
        tail(&self.process.dir.join("console.log"))
    }

    pub fn vmm_pid(&self) -> u32 {
        self.process.child.id()
    }

    /// The process that runs the guest: the jailed VMM is the only child of the process the
    /// shim started (which waits for it); an unjailed VMM is that process itself.
    pub fn guest_pid(&self) -> u32 {
        let pid = self.vmm_pid();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next()?.parse().ok())
            .unwrap_or(pid)
    }

    /// Kills the VMM now (a guest that stopped answering); the rest goes with the `Vm`.
    pub fn kill(&self) {
        // SAFETY: kill has no memory preconditions; the pid is our own child's, which is not
        // reaped before the Vm is dropped, so it cannot name another process.
        unsafe { libc::kill(self.vmm_pid() as i32, libc::SIGKILL) };
    }
}

/// Spawns `cmd` from one thread that lives as long as the process. The death signal of
/// `PR_SET_PDEATHSIG` follows the thread that forked, not the process: a VMM spawned from a
/// ttrpc worker would be killed when that worker thread ends.
fn spawn_from_lasting_thread(cmd: Command) -> std::io::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: std::sync::OnceLock<Mutex<mpsc::Sender<Job>>> = std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("vmm-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the VMM spawner thread");
        Mutex::new(tx)
    });
    let (reply, result) = mpsc::channel();
    spawner
        .lock()
        .expect("spawner lock")
        .send((cmd, reply))
        .map_err(|_| std::io::Error::other("the VMM spawner thread is gone"))?;
    result
        .recv()
        .map_err(|_| std::io::Error::other("the VMM spawner thread is gone"))?
}

/// Makes `fds` (close-on-exec in the shim) survive the exec into the VMM, and only there.
fn inherit_fds(cmd: &mut Command, fds: Vec<RawFd>) {
    if fds.is_empty() {
        return;
    }
    // SAFETY: between fork and exec only fcntl, which is async-signal-safe, on descriptors the
    // caller keeps open until the spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

fn join_cgroup_before_exec(cmd: &mut Command, procs: &Path) -> std::io::Result<()> {
    let procs = std::ffi::CString::new(procs.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: between fork and exec only async-signal-safe calls (open, write, close) on
    // memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0" is the writing process itself.
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if n != 1 {
                return Err(err);
            }
            Ok(())
        });
    }
    Ok(())
}

/// Connects to the agent, retrying until it listens and answers a health check, the VMM exits,
/// or `timeout` passes.
fn wait_for_agent(vm: &mut VmProcess, sock: &Path, timeout: Duration) -> Result<Agent, VmError> {
    let deadline = Instant::now() + timeout;
    let console = vm.dir.join("console.log");
    let dial = agent::vsock_dialer(sock);
    let mut last = String::from("none yet");
    loop {
        if let Ok(Some(status)) = vm.child.try_wait() {
            let err = vm.stderr_after_exit();
            return Err(VmError::VmmExited {
                guest_failed: matches!(status.code(), Some(3 | 4)),
                status: if err.is_empty() {
                    status.to_string()
                } else {
                    format!("{status}: {err}")
                },
                console: tail(&console),
            });
        }
        if Instant::now() > deadline {
            return Err(VmError::Timeout(timeout, last, tail(&console)));
        }
        // A guest that accepts answers its health check within 10 s, or we look again.
        match Agent::connect(dial.clone(), Duration::from_secs(10)) {
            Ok(agent) => return Ok(agent),
            Err(AgentError::Status { message, .. }) => {
                last = format!("health check failed: {message}")
            }
            Err(e @ AgentError::Transport(_)) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn make_runtime_dir() -> Result<PathBuf, VmError> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/husk"));
    let base = if std::fs::create_dir_all(&base).is_ok() {
        base
    } else {
        std::env::temp_dir()
    };
    for i in 0..100u32 {
        let dir = base.join(format!("sandbox-{}-{i}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(VmError::RuntimeDir(dir, e)),
        }
    }
    Err(VmError::RuntimeDir(
        base,
        std::io::ErrorKind::AlreadyExists.into(),
    ))
}

/// The console's bytes read for a tail: the console file grows with whatever the guest prints.
const CONSOLE_TAIL_BYTES: u64 = 16 * 1024;

/// The last lines of the guest console, for error messages; reads only the file's end.
fn tail(console: &Path) -> String {
    use std::io::{Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(console) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(CONSOLE_TAIL_BYTES)));
    let mut buf = Vec::new();
    let _ = f.take(CONSOLE_TAIL_BYTES).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_guest_that_failed_gets_another_boot() {
        let exited = |guest_failed| VmError::VmmExited {
            status: "exit status: 3".into(),
            console: String::new(),
            guest_failed,
        };
        assert!(exited(true).guest_failed_to_boot());
        assert!(!exited(false).guest_failed_to_boot());
        let timeout = VmError::Timeout(Duration::from_secs(1), "x".into(), String::new());
        assert!(timeout.guest_failed_to_boot());
        let spawn = VmError::Spawn("/x".into(), std::io::ErrorKind::NotFound.into());
        assert!(!spawn.guest_failed_to_boot());
    }

    #[test]
    fn vmm_command_line_from_the_config() {
        let config = VmConfig {
            vmm: "/bin/husk-vmm".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            vcpus: 2,
            memory_mib: 512,
            kernel_params: Some("agent.log=debug".into()),
            boot_timeout: Duration::from_secs(1),
            volumes: vec![Volume {
                host: "/run/husk/s/x/shared".into(),
                guest: "/run/kata-containers/shared/containers".into(),
                read_only: true,
            }],
            runtime_dir: None,
            fs_cache: Some("never".into()),
            fs_all_xattrs: false,
            cgroup_procs: None,
            net: vec![NetDevice {
                tap_fd: 7,
                mac: [0x0a, 0x58, 0x0a, 0x58, 0x00, 0x02],
                mtu: 1450,
            }],
        };
        let args: Vec<String> = config
            .vmm_args(Path::new("/d"))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args.join(" "),
            "--kernel /k --initrd /i --vcpus 2 --memory 512 --console /d/console.log \
             --vsock-uds /d/vsock.sock --fs tag=vol0,path=/run/husk/s/x/shared,cache=never,ro \
             --net fd=7,mac=0a:58:0a:58:00:02,mtu=1450 --append agent.log=debug agent.mount=vol0:/run/kata-containers/shared/containers:ro"
        );
    }

    #[test]
    fn the_console_tail_reads_only_the_end() {
        let path = std::env::temp_dir().join(format!("husk-console-{}", std::process::id()));
        let mut text = "x".repeat(10 * CONSOLE_TAIL_BYTES as usize);
        for i in 0..30 {
            text.push_str(&format!("\nline {i}"));
        }
        std::fs::write(&path, text).unwrap();
        let t = tail(&path);
        assert!(t.starts_with("line 10\n"), "{t}");
        assert!(t.ends_with("line 29"));
        let _ = std::fs::remove_file(&path);
    }
}
