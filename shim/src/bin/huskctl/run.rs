//! `huskctl run`: one command in a fresh microVM, with our stdio.

use std::io::{IsTerminal, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context as _};
use husk_agent_protocol::agent::*;
use husk_agent_protocol::agent_ttrpc::AgentServiceClient;
use husk_agent_protocol::ttrpc::context::Context;
use husk_shim::agent::rpc_message;
use husk_shim::io::{pump_input, pump_output, Stream};
use husk_shim::vm::{find_guest_image, find_vmm, Vm, VmConfig, Volume};

const EXEC_ID: &str = "huskctl-run";

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// vCPUs of the microVM.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Memory of the microVM in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u64,
    /// Give CMD a terminal (stdin must be one); window size changes follow.
    #[arg(short = 't', long)]
    tty: bool,
    /// Guest kernel (default: the installed or built guest image).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Guest initramfs (default: the installed or built guest image).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Show the agent's log on stderr, with debug lines.
    #[arg(long)]
    debug: bool,
    /// Share a host directory with the guest: HOSTDIR:GUESTDIR[:ro] (virtio-fs). May be repeated.
    #[arg(short = 'v', long = "volume", value_name = "HOSTDIR:GUESTDIR[:ro]")]
    volumes: Vec<Volume>,
    /// Let the guest set security.* and trusted.* xattrs on the volumes (refused by default:
    /// file capabilities and LSM labels are the host's business).
    #[arg(long)]
    all_xattrs: bool,
    /// Seconds to wait for the agent to answer after boot.
    #[arg(long, default_value_t = 120)]
    boot_timeout: u64,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

/// The terminal settings to put back when we exit, if we changed them.
static SAVED_TERMIOS: Mutex<Option<libc::termios>> = Mutex::new(None);

fn raw_terminal() -> anyhow::Result<()> {
    let fd = std::io::stdin().as_raw_fd();
    // SAFETY: termios is plain data that tcgetattr fills.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is our stdin and `t` a valid termios.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        bail!(
            "cannot read the terminal settings: {}",
            std::io::Error::last_os_error()
        );
    }
    *SAVED_TERMIOS.lock().expect("termios lock") = Some(t);
    let mut raw = t;
    // SAFETY: cfmakeraw only edits the struct.
    unsafe { libc::cfmakeraw(&mut raw) };
    // SAFETY: as above.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) };
    Ok(())
}

fn restore_terminal() {
    if let Some(t) = SAVED_TERMIOS.lock().expect("termios lock").take() {
        // SAFETY: restoring settings read earlier from the same descriptor.
        unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, &t) };
    }
}

fn window_size() -> (u32, u32) {
    // SAFETY: winsize is plain data that TIOCGWINSZ fills.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize into a valid pointer.
    let rc = unsafe { libc::ioctl(std::io::stdout().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    if rc == 0 && ws.ws_row > 0 {
        (ws.ws_row.into(), ws.ws_col.into())
    } else {
        (24, 80)
    }
}

/// Blocks the signals we handle ourselves, in this thread and every thread started after.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid set and signal numbers.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGWINCH] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

/// Follows SIGWINCH with the guest terminal, and tears everything down on SIGINT/TERM/HUP.
fn watch_signals(set: libc::sigset_t, agent: AgentServiceClient, vmm_pid: u32, dir: PathBuf) {
    std::thread::spawn(move || loop {
        let mut sig = 0;
        // SAFETY: `set` is a valid signal set and `sig` a valid int to write into.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        if sig == libc::SIGWINCH {
            let (row, column) = window_size();
            let req = TtyWinResizeRequest {
                exec_id: EXEC_ID.into(),
                row,
                column,
                ..Default::default()
            };
            let _ = agent.tty_win_resize(Context::default(), &req);
            continue;
        }
        restore_terminal();
        // SAFETY: killing our own child VMM by pid.
        unsafe { libc::kill(vmm_pid as i32, libc::SIGKILL) };
        let _ = std::fs::remove_dir_all(&dir);
        std::process::exit(128 + sig);
    });
}

/// Copies one output stream of the command to ours.
fn copy_output(agent: AgentServiceClient, stream: Stream) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let out: Box<dyn Write + Send> = match stream {
            Stream::Stdout => Box::new(std::io::stdout()),
            Stream::Stderr => Box::new(std::io::stderr()),
        };
        pump_output(&agent, "", EXEC_ID, stream, Some(out));
    })
}

fn copy_stdin(agent: AgentServiceClient) {
    std::thread::spawn(move || pump_input(&agent, "", EXEC_ID, std::io::stdin()));
}

pub fn run(args: RunArgs) -> anyhow::Result<i32> {
    if args.tty && !std::io::stdin().is_terminal() {
        bail!("-t needs a terminal on stdin");
    }
    let signals = block_signals();
    let (kernel, initrd) = match (args.kernel, args.initrd) {
        (Some(k), Some(i)) => (k, i),
        (k, i) => {
            let (dk, di) = find_guest_image()?;
            (k.unwrap_or(dk), i.unwrap_or(di))
        }
    };
    let config = VmConfig {
        vmm: find_vmm()?,
        kernel,
        initrd,
        vcpus: args.vcpus,
        memory_mib: args.memory,
        kernel_params: args.debug.then(|| "agent.log=debug".to_string()),
        boot_timeout: Duration::from_secs(args.boot_timeout),
        volumes: args.volumes,
        runtime_dir: None,
        fs_cache: None,
        fs_all_xattrs: args.all_xattrs,
        cgroup_procs: None,
        net: Vec::new(),
    };
    let log: Box<dyn Write + Send> = if args.debug {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::sink())
    };
    let sandbox = Vm::start(&config, log).context("cannot start the microVM")?;
    let agent = sandbox.agent.api().clone();
    watch_signals(
        signals,
        agent.clone(),
        sandbox.vmm_pid(),
        sandbox.runtime_dir().into(),
    );

    let (rows, columns) = if args.tty { window_size() } else { (0, 0) };
    let mut env = vec!["HOME=/root".to_string()];
    if args.tty {
        env.push(format!(
            "TERM={}",
            std::env::var("TERM").unwrap_or_else(|_| "xterm".into())
        ));
    }
    let req = ExecProcessRequest {
        exec_id: EXEC_ID.into(),
        process: protobuf::MessageField::some(Process {
            args: args.command.clone(),
            env,
            cwd: "/".into(),
            terminal: args.tty,
            rows,
            columns,
            ..Default::default()
        }),
        ..Default::default()
    };
    if let Err(e) = agent.exec_process(Context::default(), &req) {
        bail!(
            "cannot run {} in the guest: {}",
            args.command[0],
            rpc_message(&e)
        );
    }

    if args.tty {
        raw_terminal()?;
    }
    let mut outputs = vec![copy_output(agent.clone(), Stream::Stdout)];
    if !args.tty {
        outputs.push(copy_output(agent.clone(), Stream::Stderr));
    }
    copy_stdin(agent.clone());

    let wait = WaitProcessRequest {
        exec_id: EXEC_ID.into(),
        ..Default::default()
    };
    let status = agent.wait_process(Context::default(), &wait);
    // Everything the process wrote is delivered before we report its status.
    for t in outputs {
        let _ = t.join();
    }
    restore_terminal();
    let status = status.context("lost the agent while waiting for the command")?;
    drop(sandbox);
    Ok(status.status)
}
