//! A sandbox VM: `husk-vmm` as a child process with a hybrid-vsock socket in a private runtime
//! directory, and a ttrpc connection to the agent inside. Dropping a [`Sandbox`] kills the VM and
//! removes everything it created.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use husk_agent_protocol::agent_ttrpc::AgentServiceClient;
use husk_agent_protocol::health::CheckRequest;
use husk_agent_protocol::health_ttrpc::HealthClient;
use husk_agent_protocol::ttrpc;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
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
    #[error("Agent call failed")]
    Agent(#[source] ttrpc::Error),
}

impl SandboxError {
    /// The guest itself did not come up (it reset or crashed before its agent answered, or its
    /// agent never answered), although the VMM ran: a fresh boot may well succeed.
    pub fn guest_failed_to_boot(&self) -> bool {
        matches!(
            self,
            SandboxError::Timeout(..)
                | SandboxError::VmmExited {
                    guest_failed: true,
                    ..
                }
        )
    }
}

/// What the VM gets.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
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
    /// The VM's runtime directory (sockets, console log); a fresh one when `None`. It must not
    /// exist yet, and it is removed with the VM.
    pub runtime_dir: Option<PathBuf>,
    /// virtio-fs cache mode of the volumes (`never`, `auto`, `always`); husk-vmm's default
    /// when `None`.
    pub fs_cache: Option<String>,
    /// A cgroup's `cgroup.procs`: the VMM joins that cgroup before it runs, so that everything
    /// it allocates is charged there.
    pub cgroup_procs: Option<PathBuf>,
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
pub fn find_vmm() -> Result<PathBuf, SandboxError> {
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
    Err(SandboxError::NotFound {
        what: "husk-vmm",
        tried: tried.join(", "),
    })
}

pub fn find_guest_image() -> Result<(PathBuf, PathBuf), SandboxError> {
    let dirs = guest_image_dirs();
    dirs.iter()
        .find(|d| d.join("vmlinux").is_file() && d.join("initramfs.img").is_file())
        .map(|d| (d.join("vmlinux"), d.join("initramfs.img")))
        .ok_or_else(|| SandboxError::NotFound {
            what: "the guest image (vmlinux + initramfs.img)",
            tried: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The `husk-vmm` child and its runtime directory; dropping it kills the VM and removes the
/// directory (sockets, console log).
struct VmProcess {
    child: Child,
    dir: PathBuf,
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Sandbox {
    pub agent: AgentServiceClient,
    pub health: HealthClient,
    vm: VmProcess,
}

impl Sandbox {
    /// Boots the VM and connects to its agent. Agent log lines go to `log` as they arrive.
    pub fn start(
        config: &SandboxConfig,
        log: Box<dyn Write + Send>,
    ) -> Result<Sandbox, SandboxError> {
        let dir = match &config.runtime_dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|e| SandboxError::RuntimeDir(d.clone(), e))?;
                d.clone()
            }
            None => make_runtime_dir()?,
        };
        let sock = dir.join("vsock.sock");
        let console = dir.join("console.log");
        // The agent connects to the host's port 1025 for its log: listen before it boots.
        let log_path = format!("{}_{}", sock.display(), husk_agent_protocol::LOG_PORT);
        let log_listener = match UnixListener::bind(&log_path) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(SandboxError::RuntimeDir(dir, e));
            }
        };
        // Ends when the VM is gone (the agent's connection closes).
        std::thread::spawn(move || copy_log(log_listener, log));

        let mut cmd = Command::new(&config.vmm);
        cmd.arg("--kernel")
            .arg(&config.kernel)
            .arg("--initrd")
            .arg(&config.initrd)
            .args(["--vcpus", &config.vcpus.to_string()])
            .args(["--memory", &config.memory_mib.to_string()])
            .arg("--console")
            .arg(&console)
            .arg("--vsock-uds")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut params: Vec<String> = config.kernel_params.iter().cloned().collect();
        for (i, v) in config.volumes.iter().enumerate() {
            let tag = format!("vol{i}");
            cmd.arg("--fs").arg(format!(
                "tag={tag},path={}{}{}",
                v.host.display(),
                config
                    .fs_cache
                    .as_ref()
                    .map(|c| format!(",cache={c}"))
                    .unwrap_or_default(),
                if v.read_only { ",ro" } else { "" }
            ));
            params.push(format!(
                "agent.mount={tag}:{}{}",
                v.guest,
                if v.read_only { ":ro" } else { "" }
            ));
        }
        if !params.is_empty() {
            cmd.args(["--append", &params.join(" ")]);
        }
        if let Some(procs) = &config.cgroup_procs {
            let procs = std::ffi::CString::new(procs.as_os_str().as_bytes()).map_err(|_| {
                SandboxError::Spawn(config.vmm.clone(), std::io::ErrorKind::InvalidInput.into())
            })?;
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
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(SandboxError::Spawn(config.vmm.clone(), e));
            }
        };
        let mut vm = VmProcess { child, dir };
        let client = connect(&mut vm.child, &sock, &console, config.boot_timeout)?;
        Ok(Sandbox {
            agent: AgentServiceClient::new(client.clone()),
            health: HealthClient::new(client),
            vm,
        })
    }

    pub fn runtime_dir(&self) -> &Path {
        &self.vm.dir
    }

    /// The last lines of the guest's console, for diagnosing a VM that went away.
    pub fn console_tail(&self) -> String {
        tail(&self.vm.dir.join("console.log"))
    }

    /// The VMM's pid (for measurements).
    pub fn vmm_pid(&self) -> u32 {
        self.vm.child.id()
    }
}

/// Connects to the agent's port through the hybrid-vsock socket, retrying until the agent
/// listens and answers a health check, the VMM exits, or `timeout` passes.
fn connect(
    vmm: &mut Child,
    sock: &Path,
    console: &Path,
    timeout: Duration,
) -> Result<ttrpc::Client, SandboxError> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("the agent's port never accepted");
    loop {
        if let Ok(Some(status)) = vmm.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = vmm.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let err = err.trim();
            return Err(SandboxError::VmmExited {
                guest_failed: matches!(status.code(), Some(3 | 4)),
                status: if err.is_empty() {
                    status.to_string()
                } else {
                    format!("{status}: {err}")
                },
                console: tail(console),
            });
        }
        if Instant::now() > deadline {
            return Err(SandboxError::Timeout(timeout, last, tail(console)));
        }
        if let Some(stream) = hybrid_connect(sock, husk_agent_protocol::AGENT_PORT) {
            let client = ttrpc::Client::new(stream.into_raw_fd()).map_err(SandboxError::Agent)?;
            let health = HealthClient::new(client.clone());
            let ctx = ttrpc::context::with_timeout(Duration::from_secs(10).as_nanos() as i64);
            match health.check(ctx, &CheckRequest::new()) {
                Ok(_) => return Ok(client),
                Err(e) => last = format!("health check failed: {}", rpc_message(&e)),
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The human part of an agent error: the status message for an RPC status, else the error.
pub fn rpc_message(e: &ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// `CONNECT <port>\n` on the hybrid-vsock socket; `None` if the guest does not accept (yet).
pub fn hybrid_connect(sock: &Path, port: u32) -> Option<UnixStream> {
    let mut stream = UnixStream::connect(sock).ok()?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    // Read the reply byte by byte: nothing after its newline belongs to us.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 32 {
        match stream.read(&mut b) {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) => line.push(b[0]),
            _ => return None,
        }
    }
    if !line.starts_with(b"OK ") {
        return None;
    }
    stream.set_read_timeout(None).ok()?;
    Some(stream)
}

fn copy_log(listener: UnixListener, mut out: Box<dyn Write + Send>) {
    // One agent, one connection; a rebooted agent would connect again.
    for stream in listener.incoming() {
        let Ok(stream) = stream else { return };
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(out, "{line}");
        }
    }
}

fn make_runtime_dir() -> Result<PathBuf, SandboxError> {
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
            Err(e) => return Err(SandboxError::RuntimeDir(dir, e)),
        }
    }
    Err(SandboxError::RuntimeDir(
        base,
        std::io::ErrorKind::AlreadyExists.into(),
    ))
}

/// The last lines of the guest console, for error messages.
fn tail(console: &Path) -> String {
    let text = std::fs::read_to_string(console).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_guest_that_failed_gets_another_boot() {
        let exited = |guest_failed| SandboxError::VmmExited {
            status: "exit status: 3".into(),
            console: String::new(),
            guest_failed,
        };
        assert!(exited(true).guest_failed_to_boot());
        assert!(!exited(false).guest_failed_to_boot());
        let timeout = SandboxError::Timeout(Duration::from_secs(1), "x".into(), String::new());
        assert!(timeout.guest_failed_to_boot());
        let spawn = SandboxError::Spawn("/x".into(), std::io::ErrorKind::NotFound.into());
        assert!(!spawn.guest_failed_to_boot());
    }
}
