//! What PID 1 owes the system: mounts, signals, reaping, power-off.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::time::Duration;

const NOSUID_NODEV: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV;

/// The file systems every guest needs: (source, target, type, flags, options).
const MOUNTS: &[(&str, &str, &str, libc::c_ulong, &str)] = &[
    ("proc", "/proc", "proc", NOSUID_NODEV | libc::MS_NOEXEC, ""),
    ("sysfs", "/sys", "sysfs", NOSUID_NODEV | libc::MS_NOEXEC, ""),
    ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755"),
    (
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    ),
    ("tmpfs", "/dev/shm", "tmpfs", NOSUID_NODEV, "mode=1777"),
    ("tmpfs", "/run", "tmpfs", NOSUID_NODEV, "mode=0755"),
    ("tmpfs", "/tmp", "tmpfs", NOSUID_NODEV, "mode=1777"),
    (
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        NOSUID_NODEV | libc::MS_NOEXEC,
        "",
    ),
];

pub fn mount_basics() {
    for (source, target, fstype, flags, data) in MOUNTS {
        let _ = std::fs::create_dir_all(target);
        let c = |s: &str| CString::new(s).expect("no NUL in mount arguments");
        let (source, target_c, fstype, data) = (c(source), c(target), c(fstype), c(data));
        // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target_c.as_ptr(),
                fstype.as_ptr(),
                *flags,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBUSY) {
                say!("husk-agent: cannot mount {target}: {e}");
            }
        }
    }
}

/// A virtio-fs share to mount, from `agent.mount=TAG:DIR[:ro]` on the kernel command line.
#[derive(Debug, PartialEq)]
pub struct ShareMount {
    pub tag: String,
    pub target: String,
    pub read_only: bool,
}

pub fn parse_share_mounts(cmdline: &str) -> Vec<ShareMount> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("agent.mount="))
        .filter_map(|spec| {
            let mut parts = spec.split(':');
            let tag = parts.next()?.to_string();
            let target = parts.next()?.to_string();
            let read_only = match parts.next() {
                None | Some("rw") => false,
                Some("ro") => true,
                Some(_) => return None,
            };
            (!tag.is_empty() && target.starts_with('/')).then_some(ShareMount {
                tag,
                target,
                read_only,
            })
        })
        .collect()
}

/// Mounts every virtio-fs share named on the kernel command line; reports each failure.
pub fn mount_shares() -> Vec<String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let mut errors = Vec::new();
    for m in parse_share_mounts(&cmdline) {
        let _ = std::fs::create_dir_all(&m.target);
        let c = |s: &str| CString::new(s).expect("no NUL in kernel command line words");
        let (tag, target, fstype) = (c(&m.tag), c(&m.target), c("virtiofs"));
        let flags = if m.read_only { libc::MS_RDONLY } else { 0 };
        // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                tag.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                flags,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            errors.push(format!(
                "cannot mount share {} at {}: {}",
                m.tag,
                m.target,
                std::io::Error::last_os_error()
            ));
        }
    }
    errors
}

/// Makes sure stdin, stdout and stderr are the console, in case the kernel found no
/// `/dev/console` in the initramfs before `/dev` was mounted.
pub fn ensure_console() {
    // SAFETY: F_GETFD only inspects the descriptor table.
    let stdout_ok = unsafe { libc::fcntl(1, libc::F_GETFD) } >= 0;
    if stdout_ok {
        return;
    }
    if let Ok(console) = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            // SAFETY: `console` is an open descriptor; dup2 onto 0-2 replaces nothing we own.
            unsafe { libc::dup2(console.as_raw_fd(), fd) };
        }
    }
}

/// True when the guest has a virtio-vsock device (virtio device id 19), i.e. a way to the host.
pub fn has_vsock_device() -> bool {
    let Ok(devices) = std::fs::read_dir("/sys/bus/virtio/devices") else {
        return false;
    };
    devices.flatten().any(|d| {
        std::fs::read_to_string(d.path().join("device")).is_ok_and(|id| id.trim() == "0x0013")
    })
}

/// Facts for the ready line.
pub struct Facts {
    pub uptime: Duration,
    pub cpus: usize,
    pub mem_mib: u64,
    pub kernel: String,
}

impl Facts {
    pub fn read() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write into.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        let uptime = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mem_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .map_or(0, |kib| kib / 1024);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Facts {
            uptime,
            cpus,
            mem_mib,
            kernel,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Power {
    Off,
    Reboot,
    Halt,
}

pub enum Event {
    Child,
    Power(Power),
}

pub struct SignalSet(libc::sigset_t);

/// The signals init handles synchronously: children, and the power requests busybox's
/// `poweroff` (SIGUSR2), `reboot` (SIGTERM), `halt` (SIGUSR1) and Ctrl-Alt-Del (SIGINT) send.
const HANDLED: [i32; 6] = [
    libc::SIGCHLD,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGPWR,
];

/// Blocks the handled signals in this thread (and so in every thread started later), so that
/// they are only ever taken by [`wait_signal`].
pub fn block_signals() -> SignalSet {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in HANDLED {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    SignalSet(set)
}

pub fn wait_signal(set: &SignalSet, timeout: Option<Duration>) -> Option<Event> {
    // SAFETY: siginfo_t is plain data filled by the kernel.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let sig = match timeout {
        // SAFETY: `set` and `info` are valid for the duration of the call.
        None => unsafe { libc::sigwaitinfo(&set.0, &mut info) },
        Some(t) => {
            let ts = libc::timespec {
                tv_sec: t.as_secs() as libc::time_t,
                tv_nsec: t.subsec_nanos() as libc::c_long,
            };
            // SAFETY: as above, and `ts` is a valid timespec.
            unsafe { libc::sigtimedwait(&set.0, &mut info, &ts) }
        }
    };
    match sig {
        libc::SIGCHLD => Some(Event::Child),
        libc::SIGUSR2 | libc::SIGPWR => Some(Event::Power(Power::Off)),
        libc::SIGTERM | libc::SIGINT => Some(Event::Power(Power::Reboot)),
        libc::SIGUSR1 => Some(Event::Power(Power::Halt)),
        _ => None,
    }
}

/// Reaps every exited child without blocking; returns (pid, status) of each.
pub fn reap() -> Vec<(i32, i32)> {
    std::iter::from_fn(reap_one).collect()
}

/// Reaps exited children; returns the status of `pid` once it is among them.
pub fn reap_until(pid: i32) -> Option<i32> {
    while let Some((reaped, status)) = reap_one() {
        if reaped == pid {
            return Some(status);
        }
    }
    None
}

fn reap_one() -> Option<(i32, i32)> {
    let mut status = 0;
    // SAFETY: `status` is a valid int to write into.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid <= 0 {
        return None;
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Some((pid, code))
}

/// Stops every process, syncs, and asks the kernel to power off, reboot or halt. Returns only if
/// the kernel refused.
pub fn power(p: Power) {
    say!(
        "husk-agent: {}",
        match p {
            Power::Off => "powering off",
            Power::Reboot => "rebooting",
            Power::Halt => "halting",
        }
    );
    // SAFETY: signalling every other process is what a shutting-down init does; errors (no
    // other process) are harmless.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    reap();
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let cmd = match p {
        Power::Off => libc::RB_POWER_OFF,
        Power::Reboot => libc::RB_AUTOBOOT,
        Power::Halt => libc::RB_HALT_SYSTEM,
    };
    // SAFETY: reboot(2) with a valid command; if it fails (no CAP_SYS_BOOT) we say so and go on.
    if unsafe { libc::reboot(cmd) } != 0 {
        say!(
            "husk-agent: cannot {p:?}: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_mounts_from_the_command_line() {
        let m = parse_share_mounts(
            "console=ttyS0 agent.mount=kataShared:/run/kata-containers/shared/containers agent.mount=vol0:/mnt:ro agent.mount=bad agent.mount=t:relative agent.mount=t:/x:maybe",
        );
        assert_eq!(
            m,
            vec![
                ShareMount {
                    tag: "kataShared".into(),
                    target: "/run/kata-containers/shared/containers".into(),
                    read_only: false
                },
                ShareMount {
                    tag: "vol0".into(),
                    target: "/mnt".into(),
                    read_only: true
                },
            ]
        );
    }
}
