//! husk-agent: PID 1 of the husk guest.
//!
//! This first slice makes the guest a well-behaved machine: it mounts the kernel's file systems,
//! announces that it is ready (with its uptime, so the host can measure boot time), reaps every
//! orphan, and powers off or reboots on request. Given arguments (the kernel passes whatever
//! follows `--` on its command line), it runs them once as a command with the console as its
//! terminal (`-- /bin/sh` is a debug shell) and then powers off. Otherwise it serves its ttrpc
//! API on vsock port 1024 (see `rpc`); a guest without a vsock device has nothing to serve and
//! powers off right after the ready line.

/// Writes a line to the console. PID 1 must not die because the console is gone or broken,
/// so write errors are ignored.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod container;
mod devices;
mod forward;
mod init;
mod log;
mod network;
mod oom;
mod process;
mod rpc;
mod seccomp;
mod shm;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use init::Power;

fn main() {
    let pid1 = std::process::id() == 1;
    let argv: Vec<String> = std::env::args().collect();
    if !pid1 && argv.get(1).map(String::as_str) == Some("runtime") {
        container::runtime_main(&argv[2..]);
    }
    if pid1 {
        init::mount_basics();
        init::ensure_console();
        std::env::set_var(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        std::env::set_var("HOME", "/root");
    }
    let signals = init::block_signals();
    log::init(husk_agent_protocol::LOG_PORT);
    if pid1 {
        for e in init::mount_shares() {
            log::info(&e);
        }
    }

    let facts = init::Facts::read();
    log::info(&format!(
        "ready in {:.3} s ({} vCPUs, {} MiB, kernel {})",
        facts.uptime.as_secs_f64(),
        facts.cpus,
        facts.mem_mib,
        facts.kernel
    ));

    let args: Vec<String> = std::env::args().skip(1).collect();
    if !pid1 {
        // Outside a guest (a developer trying the binary) there is nothing to supervise.
        return;
    }
    if !args.is_empty() {
        let status = run_once(&args, &signals);
        log::info(&format!("command exited with status {status}"));
        init::power(Power::Off);
    }

    let procs = Arc::new(process::Table::default());
    if !init::has_vsock_device() {
        log::info("nothing to serve (no command given, no vsock device to the host)");
        init::power(Power::Off);
    }
    let port = husk_agent_protocol::AGENT_PORT;
    // Kept alive for as long as PID 1 runs.
    let _server = match serve(procs.clone(), port) {
        Ok(server) => {
            log::info(&format!("serving on vsock port {port}"));
            Some(server)
        }
        Err(e) => {
            log::info(&format!("vsock port {port}: {}", chain(&e)));
            init::power(Power::Off);
            None
        }
    };
    loop {
        match init::wait_signal(&signals, None) {
            Some(init::Event::Power(p)) => init::power(p),
            Some(init::Event::Child) | None => {
                let reaped = {
                    let _no_spawn = process::SPAWN_LOCK.lock().expect("spawn lock");
                    init::reap()
                };
                for (pid, status) in reaped {
                    procs.exited(pid, status);
                }
            }
        }
    }
}

/// Why the agent cannot serve.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("Cannot serve on vsock")]
    Rpc(#[from] husk_agent_protocol::ttrpc::Error),
    /// Serving without the filter would let containers reach the host's vsock ports.
    #[error("Refusing to serve without the vsock filter")]
    Seccomp(#[source] seccomp::SeccompError),
}

/// `e` and its causes, for the log.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// Binds the agent's vsock port, denies vsock to everything the agent will start, then serves.
fn serve(
    procs: Arc<process::Table>,
    port: u32,
) -> Result<husk_agent_protocol::ttrpc::Server, ServeError> {
    let mut server = rpc::bind(procs, port)?;
    let forward_port = husk_agent_protocol::FORWARD_PORT;
    let forwarding = forward::bind_listener(forward_port)
        .map_err(|e| {
            log::info(&format!(
                "no port forwarding: vsock port {forward_port}: {e}"
            ))
        })
        .ok();
    // Before the first request can create a container.
    seccomp::deny_vsock().map_err(ServeError::Seccomp)?;
    server.start()?;
    if let Some(listener) = forwarding {
        forward::serve(listener);
    }
    Ok(server)
}

/// Runs `args` with the console as stdio; returns its exit status, or 128+signal.
fn run_once(args: &[String], signals: &init::SignalSet) -> i32 {
    let child = match Command::new(&args[0]).args(&args[1..]).spawn() {
        Ok(c) => c,
        Err(e) => {
            say!("husk-agent: cannot run {}: {e}", args[0]);
            return 127;
        }
    };
    let pid = child.id() as i32;
    loop {
        if let Some(status) = init::reap_until(pid) {
            return status;
        }
        if let Some(init::Event::Power(p)) =
            init::wait_signal(signals, Some(Duration::from_secs(1)))
        {
            init::power(p);
        }
    }
}
