//! Building a VM from a [`VmConfig`] and running it until the guest stops.

use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_ioctls::Cap;
use linux_loader::cmdline::Cmdline;

use crate::boot::{self, BootError};
use crate::device_manager::{DeviceError, DeviceManager};
use crate::devices::legacy::serial::{ConsoleFile, SerialConsole};
use crate::devices::virtio::fs::{Fs, FsConfig, FsError};
use crate::devices::virtio::net::{self, Net, NetConfig, NetError};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::muxer::MuxerError;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::StopReason;
use crate::jail::seccomp::{self, SeccompError, ThreadKind};
use crate::layout::{CMDLINE_MAX_SIZE, MIN_MEMORY_MIB};
use crate::vstate::kvm::{self, KvmError};
use crate::vstate::memory::{self, MemoryError};
use crate::vstate::vcpu::{self, VcpuError};
use crate::vstate::vm::{self, VmError};

/// Kernel parameters used when the caller gives none: console on the first UART, reboot on
/// panic (the VMM then exits), no legacy probing, and quiet so the slow serial port stays idle.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 quiet panic=-1 pci=off 8250.nr_uarts=1 tsc=reliable no_timer_check";
/// The most vCPUs we describe in ACPI and test.
pub const MAX_VCPUS: u8 = 64;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("--vcpus must be between 1 and {max}, not {0}", max = MAX_VCPUS)]
    VcpuCount(u8),
    #[error("KVM supports at most {1} vCPUs here; {0} were asked for")]
    TooManyVcpus(u8, usize),
    #[error("Guest memory of {0} MiB is too small: the guest needs at least {min} MiB", min = MIN_MEMORY_MIB)]
    TooLittleMemory(u64),
    #[error("Cannot open the console file {0}")]
    Console(PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("Cannot open /dev/urandom for the virtio-rng device")]
    Rng(#[source] std::io::Error),
    #[error(transparent)]
    Vsock(#[from] MuxerError),
    #[error("Guest CID {0} is reserved: use 3 or higher")]
    Cid(u64),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// Where the guest's serial console goes.
#[derive(Clone, Debug, PartialEq)]
pub enum ConsoleOutput {
    /// Our stdout; our stdin is fed to the guest's console.
    Stdio,
    File(PathBuf),
    Off,
}

#[derive(Clone, Debug)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Kernel parameters; `None` means [`DEFAULT_CMDLINE`].
    pub cmdline: Option<String>,
    /// Appended to the kernel parameters (e.g. `-- ARGS` for the guest's init).
    pub append: Option<String>,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub console: ConsoleOutput,
    pub rng: bool,
    /// Host Unix socket of the hybrid vsock device, and the guest's CID.
    pub vsock: Option<(PathBuf, u64)>,
    /// Host directories shared with virtio-fs.
    pub fs: Vec<FsConfig>,
    /// Network cards, each on a tap.
    pub net: Vec<NetConfig>,
    /// Every thread runs under the seccomp filter of its kind ([`ThreadKind`]).
    pub seccomp: bool,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            kernel: PathBuf::new(),
            initrd: None,
            cmdline: None,
            append: None,
            vcpus: 1,
            memory_mib: 256,
            console: ConsoleOutput::Stdio,
            rng: true,
            vsock: None,
            fs: Vec::new(),
            net: Vec::new(),
            seccomp: false,
        }
    }
}

impl VmConfig {
    /// Checks what can be checked without touching KVM, so bad input fails first and clearly.
    pub fn validate(&self) -> Result<(), VmmError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(VmmError::VcpuCount(self.vcpus));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(VmmError::TooLittleMemory(self.memory_mib));
        }
        let readable = |p: &PathBuf| File::open(p).and_then(|mut f| f.read(&mut [0u8; 1]));
        if !self.kernel.exists() {
            return Err(BootError::KernelMissing(self.kernel.clone()).into());
        }
        if let Err(e) = readable(&self.kernel) {
            return Err(BootError::KernelOpen(self.kernel.clone(), e).into());
        }
        if let Some(initrd) = &self.initrd {
            if !initrd.exists() {
                return Err(BootError::InitrdMissing(initrd.clone()).into());
            }
            if let Err(e) = readable(initrd) {
                return Err(BootError::InitrdRead(initrd.clone(), e).into());
            }
        }
        if let Some((_, cid)) = &self.vsock {
            if *cid < 3 || *cid >= u64::from(u32::MAX) {
                return Err(VmmError::Cid(*cid));
            }
        }
        net::validate_all(&self.net)?;
        self.kernel_cmdline()?;
        Ok(())
    }

    fn kernel_cmdline(&self) -> Result<Cmdline, VmmError> {
        let mut raw = self
            .cmdline
            .as_deref()
            .unwrap_or(DEFAULT_CMDLINE)
            .to_string();
        if let Some(extra) = &self.append {
            raw.push(' ');
            raw.push_str(extra);
        }
        Cmdline::try_from(raw.trim(), CMDLINE_MAX_SIZE)
            .map_err(|e| VmmError::Boot(BootError::Cmdline(e)))
    }
}

/// How the guest's run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    PowerOff,
    /// How the guest reset (see [`StopReason::Reset`]).
    Reset(String),
    Crash(String),
}

impl ExitReason {
    /// The process exit status `husk-vmm` reports for it.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::PowerOff => 0,
            ExitReason::Reset(_) => 3,
            ExitReason::Crash(_) => 4,
        }
    }
}

fn console_writer(console: &ConsoleOutput) -> Result<Box<dyn Write + Send>, VmmError> {
    Ok(match console {
        ConsoleOutput::Stdio => Box::new(std::io::stdout()),
        ConsoleOutput::File(path) => {
            Box::new(ConsoleFile::create(path).map_err(|e| VmmError::Console(path.clone(), e))?)
        }
        ConsoleOutput::Off => Box::new(std::io::sink()),
    })
}

/// Feeds our stdin to the guest's serial console, waiting while its FIFO is full.
fn forward_stdin(serial: Arc<Mutex<SerialConsole>>, filtered: bool) {
    let spawned = std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            if filtered {
                if let Err(e) = ThreadKind::ConsoleIn.install() {
                    tracing::error!(error = %e, "console input stays unread");
                    return;
                }
            }
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 64];
            while let Ok(n @ 1..) = stdin.read(&mut buf) {
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let taken = serial.lock().map_or(0, |mut s| s.enqueue_input(rest));
                    rest = &rest[taken..];
                    if !rest.is_empty() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot forward stdin to the guest console");
    }
}

/// The most file descriptors a VMM holds: virtio-fs keeps one for every inode the guest has
/// looked up, so the guest decides how many it wants; this is the budget it gets (a lookup past
/// it fails in the guest with EMFILE). Far above what a container's working set needs, far below
/// `nr_open` (a billion on systemd hosts).
const FD_BUDGET: libc::rlim_t = 1 << 16;

/// Sets our open-file limit to [`FD_BUDGET`] (or the system's `nr_open` if that is lower),
/// lowering a higher inherited one: containerd's own limit is often "infinity".
pub fn raise_file_limit() {
    let nr_open: libc::rlim_t = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let budget = FD_BUDGET.min(nr_open);
        let want = libc::rlimit {
            rlim_cur: budget,
            rlim_max: budget,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
            // Unprivileged: as far as the hard limit allows.
            lim.rlim_cur = lim.rlim_max.min(budget);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Boots the guest described by `config` and runs it until it powers off, resets or crashes.
pub fn run(config: &VmConfig) -> Result<ExitReason, VmmError> {
    let started = std::time::Instant::now();
    let phase = |name: &str| tracing::debug!(ms = started.elapsed().as_secs_f64() * 1e3, "{name}");
    config.validate()?;
    let kvm = kvm::open()?;
    if usize::from(config.vcpus) > kvm.get_max_vcpus() {
        return Err(VmmError::TooManyVcpus(config.vcpus, kvm.get_max_vcpus()));
    }
    let mem = memory::create(config.memory_mib << 20)?;
    let vm = vm::create(&kvm, &mem)?;
    phase("VM and memory created");

    let (entry, kernel_end) = boot::load_kernel(&mem, &config.kernel)?;
    let initrd = match &config.initrd {
        Some(path) => Some(boot::load_initrd(&mem, path, kernel_end)?),
        None => None,
    };

    phase("kernel and initramfs loaded");
    let (stop_tx, stop_rx) = mpsc::channel();
    let mut devices = DeviceManager::new();
    let serial = devices.add_legacy(&vm, console_writer(&config.console)?, stop_tx.clone())?;
    if let Some((path, cid)) = &config.vsock {
        devices.add_virtio(&vm, &mem, Box::new(Vsock::new(*cid, path)?))?;
    }
    if !config.fs.is_empty() {
        raise_file_limit();
    }
    for fs in &config.fs {
        devices.add_virtio(&vm, &mem, Box::new(Fs::new(fs)?))?;
    }
    if config.rng {
        devices.add_virtio(&vm, &mem, Box::new(Rng::new().map_err(VmmError::Rng)?))?;
    }
    for net in &config.net {
        devices.add_virtio(&vm, &mem, Box::new(Net::new(net)?))?;
    }

    let mut cmdline = config.kernel_cmdline()?;
    devices.describe_on_cmdline(&mut cmdline)?;
    boot::write_boot_data(&mem, &cmdline, initrd, config.vcpus)?;
    tracing::debug!(cmdline = ?cmdline.as_cstring().ok(), "kernel command line");

    let cpuid = vcpu::supported_cpuid(&kvm)?;
    let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
    let filtered = config.seccomp;
    if filtered {
        seccomp::install_sigsys_handler()?;
        seccomp::start_device_spawner()?;
    }
    let mut handles = Vec::new();
    for id in 0..config.vcpus {
        let fd = vcpu::create(&vm, id, config.vcpus, &cpuid, tsc_deadline, entry)?;
        let (pio, mmio, stop) = (devices.pio.clone(), devices.mmio.clone(), stop_tx.clone());
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                if filtered {
                    if let Err(e) = ThreadKind::Vcpu.install() {
                        let _ = stop.send(StopReason::Crash(e.to_string()));
                        return;
                    }
                }
                vcpu::run(fd, id, pio, mmio, stop)
            })
            .map_err(|e| VcpuError::Thread(id, e))?;
        handles.push(handle);
    }
    phase("vCPUs started");
    if config.console == ConsoleOutput::Stdio {
        forward_stdin(serial, filtered);
    }
    drop(stop_tx);
    if filtered {
        ThreadKind::Main.install()?;
    }

    // Every vCPU and device holds a sender, so this only fails if all of them are gone, which
    // a running guest cannot cause.
    let reason = stop_rx
        .recv()
        .unwrap_or_else(|_| StopReason::Crash("every vCPU thread ended".into()));
    devices.flush_console();
    // Every device worker thread is stopped and joined; the vCPUs go with the process.
    devices.shutdown_virtio();
    if let Some((path, _)) = &config.vsock {
        // The process ends without running destructors: remove our socket ourselves.
        let _ = std::fs::remove_file(path);
    }
    // vCPU threads are not joined: they may be inside KVM_RUN; the process exit ends them.
    drop(handles);
    let last = devices.console_last_line();
    let with_console = |what: String| format!("{what}; the console's last line: {last:?}");
    Ok(match reason {
        StopReason::PowerOff => ExitReason::PowerOff,
        StopReason::Reset(how) => ExitReason::Reset(with_console(how)),
        StopReason::Crash(why) => ExitReason::Crash(with_console(why)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            kernel: "/proc/self/exe".into(),
            ..Default::default()
        }
    }

    #[test]
    fn zero_and_too_many_vcpus_are_refused() {
        let c = VmConfig {
            vcpus: 0,
            ..config()
        };
        assert!(matches!(c.validate(), Err(VmmError::VcpuCount(0))));
        let c = VmConfig {
            vcpus: 65,
            ..config()
        };
        assert!(matches!(c.validate(), Err(VmmError::VcpuCount(65))));
    }

    #[test]
    fn too_little_memory_is_refused() {
        let c = VmConfig {
            memory_mib: 16,
            ..config()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "Guest memory of 16 MiB is too small: the guest needs at least 64 MiB"
        );
    }

    #[test]
    fn missing_kernel_names_the_path() {
        let c = VmConfig {
            kernel: "/nonexistent/vmlinux".into(),
            ..config()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "Kernel /nonexistent/vmlinux does not exist"
        );
    }

    #[test]
    fn missing_initrd_names_the_path() {
        let c = VmConfig {
            initrd: Some("/nonexistent/initramfs.img".into()),
            ..config()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "Initramfs /nonexistent/initramfs.img does not exist"
        );
    }

    #[test]
    fn unreadable_kernel_is_refused() {
        // A directory exists but cannot be read as a file.
        let c = VmConfig {
            kernel: "/".into(),
            ..config()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("Kernel / cannot be read"));
    }

    #[test]
    fn append_goes_after_the_default_parameters() {
        let c = VmConfig {
            append: Some("-- /bin/sh -c true".into()),
            ..config()
        };
        let s = c.kernel_cmdline().unwrap().as_cstring().unwrap();
        let s = s.to_str().unwrap();
        assert!(s.starts_with(DEFAULT_CMDLINE));
        assert!(s.ends_with("-- /bin/sh -c true"));
    }

    #[test]
    fn overlong_cmdline_is_refused() {
        let c = VmConfig {
            cmdline: Some("x".repeat(5000)),
            ..config()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn bad_network_cards_are_refused_early() {
        let card = |mac: [u8; 6]| NetConfig {
            tap: net::TapSource::Name("tap0".into()),
            mac: net::MacAddr(mac),
            mtu: None,
        };
        let c = VmConfig {
            net: vec![
                card([0x52, 0x54, 0, 0, 0, 1]),
                card([0x52, 0x54, 0, 0, 0, 2]),
            ],
            ..config()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "Two --net devices use tap=tap0"
        );
        let c = VmConfig {
            net: vec![card([0xff; 6])],
            ..config()
        };
        assert!(matches!(c.validate(), Err(VmmError::Net(NetError::Mac(_)))));
    }

    #[test]
    fn exit_codes() {
        assert_eq!(ExitReason::PowerOff.exit_code(), 0);
        assert_eq!(ExitReason::Reset(String::new()).exit_code(), 3);
        assert_eq!(ExitReason::Crash(String::new()).exit_code(), 4);
    }

    #[test]
    fn the_guest_gets_a_fixed_file_budget() {
        raise_file_limit();
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes a valid rlimit struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert!(lim.rlim_cur <= FD_BUDGET, "{}", lim.rlim_cur);
        assert!(lim.rlim_max <= FD_BUDGET, "{}", lim.rlim_max);
    }
}
