//! `huskctl`: the operator's view of husk on a node.
//!
//! `huskctl check` tells whether this host can run husk sandboxes and, if not, why.
//! `huskctl run -- CMD ARGS...` boots a microVM, runs CMD in it with our stdio, and exits with
//! CMD's status.

mod run;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "huskctl", version, about = "Operate husk microVM sandboxes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that this host can run husk sandboxes: KVM, the guest image, cgroups.
    Check {
        /// Directory holding vmlinux and initramfs.img (default: the installed or built image).
        #[arg(long)]
        guest_dir: Option<PathBuf>,
    },
    /// Boot a microVM, run CMD inside it with this terminal's stdin, stdout and stderr, and exit
    /// with CMD's exit status (128+N if a signal N killed it). The VM is always torn down.
    Run(run::RunArgs),
}

struct Report {
    failed: bool,
}

impl Report {
    fn line(&mut self, ok: bool, what: &str, detail: &str) {
        println!("{} {what}: {detail}", if ok { "ok  " } else { "FAIL" });
        self.failed |= !ok;
    }
}

fn check(guest_dir: Option<PathBuf>) -> bool {
    let mut r = Report { failed: false };
    match husk_vmm::vstate::kvm::open() {
        Ok(kvm) => r.line(
            true,
            "kvm",
            &format!("/dev/kvm works, up to {} vCPUs", kvm.get_max_vcpus()),
        ),
        Err(e) => r.line(false, "kvm", &e.to_string()),
    }
    let dirs: Vec<PathBuf> = match guest_dir {
        Some(d) => vec![d],
        None => husk_shim::vm::guest_image_dirs(),
    };
    match dirs
        .iter()
        .find(|d| d.join("vmlinux").is_file() && d.join("initramfs.img").is_file())
    {
        Some(d) => r.line(true, "guest image", &d.display().to_string()),
        None => {
            let tried: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            r.line(
                false,
                "guest image",
                &format!(
                    "no vmlinux + initramfs.img in {} (run `make guest-image` or `make install`)",
                    tried.join(", ")
                ),
            )
        }
    }
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let v1 = Path::new("/sys/fs/cgroup/memory").is_dir();
    r.line(
        v1 || v2,
        "cgroups",
        match (v1, v2) {
            (_, true) => "cgroup v2",
            (true, false) => "cgroup v1",
            _ => "neither cgroup v1 memory nor cgroup v2 is mounted under /sys/fs/cgroup",
        },
    );
    !r.failed
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { guest_dir } => {
            if check(guest_dir) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Run(args) => match run::run(args) {
            Ok(status) => ExitCode::from(status.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("huskctl: {e:#}");
                ExitCode::from(125)
            }
        },
    }
}
