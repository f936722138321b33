//! The agent's log: every line goes to the console and, once connected, to the host over vsock
//! (port 1025, the shim's or huskctl's log listener). `agent.log=debug` on the kernel command
//! line turns on debug lines. `tracing` events of PID 1 (the agent's and its libraries') are
//! written to the same log, one line each.

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static HOST: Mutex<Option<File>> = Mutex::new(None);
static DEBUG: AtomicBool = AtomicBool::new(false);

/// Reads `agent.log=` from the kernel command line and connects to the host's log port.
pub fn init(port: u32) {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let wants_debug = cmdline.split_whitespace().any(|w| w == "agent.log=debug");
    DEBUG.store(wants_debug, Ordering::Relaxed);
    let _ = tracing_subscriber::fmt()
        .with_writer(|| AgentLog)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        // Libraries say little unless asked: libcgroups logs every cgroup it opens at info.
        .with_env_filter(if wants_debug {
            "debug"
        } else {
            "warn,husk_agent=info"
        })
        .try_init();
    match connect_host(port) {
        Ok(f) => *HOST.lock().expect("log lock") = Some(f),
        Err(e) => debug(&format!("no host log listener on vsock port {port}: {e}")),
    }
}

fn connect_host(port: u32) -> std::io::Result<File> {
    // SAFETY: creating a socket has no memory preconditions; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we just created and own.
    let file = unsafe { File::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; zeroed is a valid starting value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = libc::VMADDR_CID_HOST;
    addr.svm_port = port;
    // SAFETY: `addr` is a valid sockaddr_vm of the size passed.
    let rc = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // A host that stops reading must not stall the agent: lines are dropped instead.
    // SAFETY: F_SETFL on a descriptor we own.
    unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
    Ok(file)
}

pub fn info(msg: &str) {
    write_line(&format!("husk-agent: {msg}\n"));
}

fn write_line(line: &str) {
    let _ = std::io::stdout().write_all(line.as_bytes());
    if let Some(host) = HOST.lock().expect("log lock").as_mut() {
        let _ = host.write_all(line.as_bytes());
    }
}

/// Where PID 1's `tracing` events go: the subscriber writes each event, formatted as one
/// line, in a single `write_all`.
struct AgentLog;

impl Write for AgentLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = String::from_utf8_lossy(buf);
        write_line(&format!("husk-agent: {}", line.trim_start()));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn debug(msg: &str) {
    if DEBUG.load(Ordering::Relaxed) {
        info(msg);
    }
}
