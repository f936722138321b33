//! `husk-vmm`: boots a Linux guest under KVM and runs it until it stops.
//!
//! Exit status: 0 the guest powered off, 3 it reset (reboot, panic or triple fault), 4 it
//! crashed (KVM could not run it), 5 a VMM thread made a system call its seccomp filter forbids,
//! 1 the VM could not be built, 2 bad command line.
//!
//! As root it runs in a jail (see `husk_vmm::jail`) unless `--no-jail` says otherwise.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use husk_vmm::devices::virtio::fs::FsConfig;
use husk_vmm::devices::virtio::net::{self, NetConfig};
use husk_vmm::jail::{Access, Bind, JailPlan, ALL_XATTRS_CAPABILITIES, FS_CAPABILITIES};
use husk_vmm::{ConsoleOutput, ExitReason, VmConfig};

#[derive(Parser, Debug)]
#[command(
    name = "husk-vmm",
    version,
    about = "Boot a Linux guest in a KVM microVM"
)]
struct Args {
    /// Uncompressed guest kernel (ELF vmlinux).
    #[arg(long)]
    kernel: PathBuf,
    /// Initramfs (cpio, optionally gzip-compressed).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line, replacing the default one.
    #[arg(long)]
    cmdline: Option<String>,
    /// Appended to the kernel command line; `-- ARGS` passes ARGS to the guest's init.
    #[arg(long, allow_hyphen_values = true)]
    append: Option<String>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u64,
    /// Guest console: `stdio`, `off`, or a file path.
    #[arg(long, default_value = "stdio")]
    console: String,
    /// Leave out the virtio-rng device.
    #[arg(long)]
    no_rng: bool,
    /// Add a virtio-vsock device, reachable on the host through this Unix socket
    /// (`CONNECT <port>\n`); guest connections to port P reach `<PATH>_P`.
    #[arg(long, value_name = "PATH")]
    vsock_uds: Option<PathBuf>,
    /// The guest's vsock CID.
    #[arg(long, default_value_t = 3)]
    vsock_cid: u64,
    /// Share a host directory with virtio-fs: `tag=TAG,path=DIR[,cache=never|auto|always]`
    /// (the guest mounts it with `mount -t virtiofs TAG DIR`). May be repeated.
    #[arg(long, value_name = "tag=TAG,path=DIR[,cache=MODE]")]
    fs: Vec<FsConfig>,
    /// Add a virtio-net card on a tap: `tap=NAME` (attached, or created, in the network
    /// namespace husk-vmm starts in) or `fd=N` (an inherited tap descriptor opened with
    /// IFF_TAP|IFF_NO_PI|IFF_VNET_HDR), with the guest's MAC and optionally its MTU. May be
    /// repeated.
    #[arg(long, value_name = "tap=NAME|fd=N,mac=MAC[,mtu=N]")]
    net: Vec<NetConfig>,
    /// Run without the jail (own namespaces, a root holding only the VM's files, capabilities
    /// dropped) and without seccomp filters: for debugging only.
    #[arg(long)]
    no_jail: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUSK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let mut config = VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        append: args.append,
        vcpus: args.vcpus,
        memory_mib: args.memory,
        console: match args.console.as_str() {
            "stdio" => ConsoleOutput::Stdio,
            "off" => ConsoleOutput::Off,
            path => ConsoleOutput::File(path.into()),
        },
        rng: !args.no_rng,
        vsock: args.vsock_uds.map(|p| (p, args.vsock_cid)),
        fs: args.fs,
        net: args.net,
        seccomp: !args.no_jail,
    };
    if !config.fs.is_empty() {
        // Before the jail drops the capability to raise it.
        husk_vmm::vmm::raise_file_limit();
    }
    // Taps are opened here, by name before the jail's empty network namespace hides them;
    // inherited descriptors (`fd=N`) are checked, and stay open across the jail's fork.
    if let Err(e) = net::open_taps(&mut config.net) {
        eprintln!("husk-vmm: {}", chain(&e));
        return ExitCode::from(1);
    }
    if !args.no_jail {
        // Bad input and a missing or unusable KVM are told apart here, before the jail hides
        // the host's /sys and most of /proc.
        let checked = config
            .validate()
            .and_then(|()| husk_vmm::vstate::kvm::open().map(drop).map_err(Into::into));
        if let Err(e) = checked {
            eprintln!("husk-vmm: {}", chain(&e));
            return ExitCode::from(1);
        }
        if let Err(msg) = jail(&mut config) {
            eprintln!("husk-vmm: {msg}");
            return ExitCode::from(1);
        }
    }
    match husk_vmm::run(&config) {
        Ok(reason) => {
            match &reason {
                ExitReason::PowerOff => tracing::info!("guest powered off"),
                ExitReason::Reset(how) => eprintln!("husk-vmm: the guest reset through {how}"),
                ExitReason::Crash(why) => eprintln!("husk-vmm: the guest crashed: {why}"),
            }
            ExitCode::from(reason.exit_code() as u8)
        }
        Err(e) => {
            eprintln!("husk-vmm: {}", chain(&e));
            ExitCode::from(1)
        }
    }
}

/// An error with its causes, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

/// Enters the jail, with every path of `config` made absolute (the jail's working directory is
/// its root). As a user without root, only no_new_privs and the seccomp filters apply.
fn jail(config: &mut VmConfig) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        tracing::info!("not root: no jail namespaces, seccomp filters only");
        // SAFETY: prctl with constant arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(format!(
                "cannot set no_new_privs: {}",
                std::io::Error::last_os_error()
            ));
        }
        return Ok(());
    }
    let plan = jail_plan(config)?;
    husk_vmm::jail::enter(&plan).map_err(|e| chain(&e))
}

/// The binds and capabilities the VM of `config` needs; rewrites its paths as canonical ones.
fn jail_plan(config: &mut VmConfig) -> Result<JailPlan, String> {
    let canonical = |p: &Path, what: &str| {
        std::fs::canonicalize(p).map_err(|e| format!("{what} {}: {e}", p.display()))
    };
    let mut binds = vec![Bind {
        path: "/dev/kvm".into(),
        access: Access::Device,
    }];
    config.kernel = canonical(&config.kernel, "Kernel")?;
    binds.push(Bind {
        path: config.kernel.clone(),
        access: Access::ReadOnly,
    });
    if let Some(initrd) = &mut config.initrd {
        *initrd = canonical(initrd, "Initramfs")?;
        binds.push(Bind {
            path: initrd.clone(),
            access: Access::ReadOnly,
        });
    }
    if let ConsoleOutput::File(path) = &mut config.console {
        // Created here, so that the file can be bound in; the VMM truncates it when it starts.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&*path)
            .map_err(|e| format!("Cannot open the console file {}: {e}", path.display()))?;
        *path = canonical(path, "Console file")?;
        binds.push(Bind {
            path: path.clone(),
            access: Access::ReadWrite,
        });
    }
    if let Some((sock, _)) = &mut config.vsock {
        // The socket and the guest's `<sock>_<port>` sockets live in its directory.
        let name = sock
            .file_name()
            .ok_or_else(|| format!("--vsock-uds {}: not a file name", sock.display()))?
            .to_owned();
        let dir = sock.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = canonical(dir.unwrap_or(Path::new(".")), "Vsock socket directory")?;
        *sock = dir.join(name);
        binds.push(Bind {
            path: dir,
            access: Access::ReadWrite,
        });
    }
    for fs in &mut config.fs {
        fs.path = canonical(&fs.path, "Shared directory")?;
        binds.push(Bind {
            path: fs.path.clone(),
            access: Access::Share {
                read_only: fs.read_only,
            },
        });
    }
    if config.rng {
        binds.push(Bind {
            path: "/dev/urandom".into(),
            access: Access::Device,
        });
    }
    // Network cards need no bind: their taps are open before the jail (`net::open_taps`), or
    // inherited descriptors.
    let mut keep = Vec::new();
    if !config.fs.is_empty() {
        keep.extend(FS_CAPABILITIES);
    }
    if config.fs.iter().any(|fs| fs.all_xattrs) {
        keep.extend(ALL_XATTRS_CAPABILITIES);
    }
    Ok(JailPlan { binds, keep })
}
