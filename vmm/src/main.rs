//! `husk-vmm`: boots a Linux guest under KVM and runs it until it stops.
//!
//! Exit status: 0 the guest powered off, 3 it reset (reboot, panic or triple fault), 4 it
//! crashed (KVM could not run it), 1 the VM could not be built, 2 bad command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
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
    fs: Vec<husk_vmm::devices::virtio::fs::FsConfig>,
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
    let config = VmConfig {
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
    };
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
            let mut msg = format!("husk-vmm: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("{msg}");
            ExitCode::from(1)
        }
    }
}
