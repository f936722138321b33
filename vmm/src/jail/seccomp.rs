//! Seccomp filters, one per kind of thread. Each thread installs its own filter when it starts
//! (filters are inherited by threads created later, and the kernel applies the strictest of the
//! stacked ones), so the order of thread creation matters:
//! - the main thread builds the VM unfiltered, starts the device spawner, the vCPUs and the
//!   console reader, then installs its own filter;
//! - device worker threads are created by the spawner thread ([`spawn_device_thread`]), never by
//!   the vCPU thread whose MMIO write activated the device, so they carry the worker filter and
//!   not the vCPU one.
//!
//! A system call outside a thread's list raises SIGSYS; the handler names the thread kind and
//! the call on stderr (which the shim logs) and ends the VMM with [`EXIT_FORBIDDEN_SYSCALL`].

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::syscall_names::syscall_name;

/// husk-vmm's exit status when a thread made a system call its filter forbids.
pub const EXIT_FORBIDDEN_SYSCALL: i32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("Cannot build the seccomp filter of the {0} threads")]
    Build(&'static str, #[source] seccompiler::BackendError),
    #[error("Cannot compile the seccomp filter of the {0} threads")]
    Compile(&'static str, #[source] seccompiler::BackendError),
    #[error("Cannot install the seccomp filter of the {0} threads")]
    Install(&'static str, #[source] seccompiler::Error),
    #[error("Cannot install the SIGSYS handler")]
    Handler(#[source] std::io::Error),
}

/// The kinds of thread in a VMM, each with its own list of system calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// Waits for the guest to stop, then stops the devices.
    Main,
    /// Runs a vCPU: KVM ioctls, MMIO and port I/O into the device models.
    Vcpu,
    /// The device spawner and every device worker (virtio queues: rng, vsock, virtio-fs, net).
    Worker,
    /// Feeds the VMM's stdin to the serial console.
    ConsoleIn,
    /// The jail's outer process, which only waits for the VMM.
    Waiter,
}

impl ThreadKind {
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Worker => "device worker",
            ThreadKind::ConsoleIn => "console input",
            ThreadKind::Waiter => "waiter",
        }
    }

    /// The system calls this kind of thread may make, with conditions on some arguments.
    fn rules(self) -> Vec<(i64, Vec<SeccompRule>)> {
        let mut rules = Vec::new();
        // What every thread of a Rust program needs: memory, locks, time, signals' return,
        // writing a log line, ending.
        allow(
            &mut rules,
            &[
                libc::SYS_brk,
                libc::SYS_clock_gettime,
                libc::SYS_clock_nanosleep,
                libc::SYS_close,
                libc::SYS_exit,
                libc::SYS_exit_group,
                libc::SYS_futex,
                libc::SYS_getpid,
                libc::SYS_getrandom,
                libc::SYS_gettid,
                libc::SYS_madvise,
                libc::SYS_mmap,
                libc::SYS_mprotect,
                libc::SYS_mremap,
                libc::SYS_munmap,
                libc::SYS_nanosleep,
                libc::SYS_restart_syscall,
                libc::SYS_rt_sigprocmask,
                libc::SYS_rt_sigreturn,
                libc::SYS_sched_yield,
                libc::SYS_sigaltstack,
                libc::SYS_write,
            ],
        );
        // abort() signals the calling thread; nothing else may be signalled.
        rules.push((
            libc::SYS_tgkill,
            vec![rule(&[cond(0, SeccompCmpOp::Eq, own_pid())])],
        ));
        match self {
            ThreadKind::Waiter => allow(&mut rules, &[libc::SYS_wait4]),
            ThreadKind::ConsoleIn => allow(&mut rules, &[libc::SYS_read]),
            ThreadKind::Main => allow(
                &mut rules,
                &[
                    // Stopping the device workers and flushing the console file.
                    libc::SYS_read,
                    libc::SYS_pread64,
                    libc::SYS_pwrite64,
                    libc::SYS_ftruncate,
                    libc::SYS_epoll_ctl,
                    // Removing the vsock socket.
                    libc::SYS_unlink,
                    libc::SYS_unlinkat,
                ],
            ),
            ThreadKind::Vcpu => {
                // KVM's ioctls only (type 0xAE): KVM_RUN and the register reads of a crash.
                rules.push((
                    libc::SYS_ioctl,
                    vec![rule(&[cond(
                        1,
                        SeccompCmpOp::MaskedEq(0xff00),
                        u64::from(KVM_IOCTL_TYPE) << 8,
                    )])],
                ));
                allow(
                    &mut rules,
                    &[
                        // The console file, written from the serial port's registers.
                        libc::SYS_pread64,
                        libc::SYS_pwrite64,
                        libc::SYS_ftruncate,
                        libc::SYS_read,
                        // Activating and resetting a device: its worker's epoll and events
                        // (the thread itself comes from the spawner).
                        libc::SYS_epoll_create1,
                        libc::SYS_epoll_ctl,
                        libc::SYS_eventfd2,
                        libc::SYS_fcntl,
                        libc::SYS_dup,
                    ],
                );
            }
            ThreadKind::Worker => {
                allow(
                    &mut rules,
                    &[
                        // Creating the worker threads (the spawner) and naming them.
                        libc::SYS_clone,
                        libc::SYS_clone3,
                        libc::SYS_set_robust_list,
                        libc::SYS_rseq,
                        libc::SYS_prctl,
                        libc::SYS_sched_getaffinity,
                        // The event loop.
                        libc::SYS_epoll_wait,
                        libc::SYS_epoll_pwait,
                        libc::SYS_epoll_ctl,
                        libc::SYS_epoll_create1,
                        libc::SYS_eventfd2,
                        libc::SYS_read,
                        libc::SYS_readv,
                        // virtio-net: a guest frame goes to the tap in one writev.
                        libc::SYS_writev,
                        libc::SYS_fcntl,
                        libc::SYS_dup,
                        // vsock: host Unix sockets.
                        libc::SYS_accept4,
                        libc::SYS_connect,
                        libc::SYS_recvfrom,
                        libc::SYS_recvmsg,
                        libc::SYS_sendto,
                        libc::SYS_sendmsg,
                        libc::SYS_shutdown,
                        libc::SYS_getsockopt,
                        // vsock: the closing connections' deadline.
                        libc::SYS_timerfd_create,
                        libc::SYS_timerfd_settime,
                        libc::SYS_timerfd_gettime,
                        // virtio-fs: the passthrough file system, acting as the guest's caller.
                        libc::SYS_openat,
                        libc::SYS_newfstatat,
                        libc::SYS_fstat,
                        libc::SYS_statx,
                        libc::SYS_readlinkat,
                        libc::SYS_mkdirat,
                        libc::SYS_mknodat,
                        libc::SYS_unlinkat,
                        libc::SYS_renameat2,
                        libc::SYS_linkat,
                        libc::SYS_symlinkat,
                        libc::SYS_fchmod,
                        libc::SYS_fchmodat,
                        libc::SYS_fchown,
                        libc::SYS_fchownat,
                        libc::SYS_ftruncate,
                        libc::SYS_fallocate,
                        libc::SYS_utimensat,
                        libc::SYS_fsync,
                        libc::SYS_fdatasync,
                        libc::SYS_getdents64,
                        libc::SYS_lseek,
                        libc::SYS_pread64,
                        libc::SYS_preadv,
                        libc::SYS_pwrite64,
                        libc::SYS_pwritev,
                        libc::SYS_copy_file_range,
                        libc::SYS_statfs,
                        libc::SYS_fstatfs,
                        libc::SYS_flock,
                        libc::SYS_getxattr,
                        libc::SYS_fgetxattr,
                        libc::SYS_lgetxattr,
                        libc::SYS_setxattr,
                        libc::SYS_fsetxattr,
                        libc::SYS_lsetxattr,
                        libc::SYS_listxattr,
                        libc::SYS_flistxattr,
                        libc::SYS_llistxattr,
                        libc::SYS_removexattr,
                        libc::SYS_fremovexattr,
                        libc::SYS_lremovexattr,
                        libc::SYS_setresuid,
                        libc::SYS_setresgid,
                        libc::SYS_getuid,
                        libc::SYS_getgid,
                        libc::SYS_umask,
                    ],
                );
                // Two ioctls: FIONBIO for non-blocking sockets (std's set_nonblocking), and
                // virtio-net's TUNSETOFFLOAD, which follows the features the guest acked.
                rules.push((
                    libc::SYS_ioctl,
                    vec![
                        rule(&[cond(1, SeccompCmpOp::Eq, libc::FIONBIO)]),
                        rule(&[cond(1, SeccompCmpOp::Eq, libc::TUNSETOFFLOAD)]),
                    ],
                ));
                // vsock: only Unix sockets (the host side of guest connections).
                rules.push((
                    libc::SYS_socket,
                    vec![rule(&[cond(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64)])],
                ));
            }
        }
        rules
    }

    /// This kind's filter as a BPF program: listed calls allowed, anything else traps.
    pub fn filter(self) -> Result<BpfProgram, SeccompError> {
        let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for (nr, conds) in self.rules() {
            map.entry(nr).or_default().extend(conds);
        }
        let filter = SeccompFilter::new(
            map,
            SeccompAction::Trap,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )
        .map_err(|e| SeccompError::Build(self.name(), e))?;
        filter
            .try_into()
            .map_err(|e| SeccompError::Compile(self.name(), e))
    }

    /// Installs this kind's filter on the calling thread, for good.
    pub fn install(self) -> Result<(), SeccompError> {
        let bpf = self.filter()?;
        KIND.with(|k| k.set(self.name()));
        seccompiler::apply_filter(&bpf).map_err(|e| SeccompError::Install(self.name(), e))
    }
}

/// The ioctl type of KVM's requests (`KVMIO`).
const KVM_IOCTL_TYPE: u8 = 0xAE;

fn allow(rules: &mut Vec<(i64, Vec<SeccompRule>)>, calls: &[i64]) {
    rules.extend(calls.iter().map(|&nr| (nr, Vec::new())));
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    // Only fails for an argument index above 5, which we never pass.
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).expect("seccomp condition")
}

fn rule(conds: &[SeccompCondition]) -> SeccompRule {
    // Only fails for an empty list of conditions, which we never pass.
    SeccompRule::new(conds.to_vec()).expect("seccomp rule")
}

fn own_pid() -> u64 {
    // SAFETY: getpid has no preconditions.
    u64::try_from(unsafe { libc::getpid() }).unwrap_or(0)
}

thread_local! {
    /// The calling thread's kind, for the SIGSYS handler's message.
    static KIND: Cell<&'static str> = const { Cell::new("unfiltered") };
}

/// Makes SIGSYS (a forbidden system call) print which thread made which call, then end the VMM.
pub fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction is valid; we fill in the handler and flags.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigsys as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: the handler only calls async-signal-safe functions (write, _exit) and reads a
    // const-initialised thread-local.
    if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
        return Err(SeccompError::Handler(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Where the kernel puts the number of the offending call in a SIGSYS `siginfo_t`: after
/// `si_signo`, `si_errno`, `si_code` and padding (16 bytes), the call's address (8 bytes).
const SIGINFO_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for a SA_SIGINFO handler, and for SIGSYS from
    // seccomp the system call's number is the int at this offset.
    let nr = unsafe {
        *(info as *const u8)
            .add(SIGINFO_SYSCALL_OFFSET)
            .cast::<i32>()
    };
    let kind = KIND.with(|k| k.get());
    let mut msg = MessageBuf::default();
    msg.push(b"husk-vmm: the ");
    msg.push(kind.as_bytes());
    msg.push(b" thread made the system call ");
    msg.push(syscall_name(i64::from(nr)).unwrap_or("?").as_bytes());
    msg.push(b" (");
    msg.push_number(nr);
    msg.push(b"), which its seccomp filter forbids; stopping the VM\n");
    // SAFETY: write and _exit are async-signal-safe; the buffer is valid for its length.
    unsafe {
        libc::write(2, msg.buf.as_ptr().cast(), msg.len);
        libc::_exit(EXIT_FORBIDDEN_SYSCALL);
    }
}

/// A fixed buffer for a message built inside a signal handler, where nothing may allocate.
struct MessageBuf {
    buf: [u8; 256],
    len: usize,
}

impl Default for MessageBuf {
    fn default() -> Self {
        Self {
            buf: [0; 256],
            len: 0,
        }
    }
}

impl MessageBuf {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_number(&mut self, n: i32) {
        if n < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 10];
        let mut v = n.unsigned_abs();
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The device spawner's queue, once it runs.
static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();

/// Starts the thread that creates device workers, with the worker filter installed; from now on
/// [`spawn_device_thread`] goes through it.
pub fn start_device_spawner() -> Result<(), SeccompError> {
    let (tx, rx) = mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("dev-spawner".into())
        .spawn(move || {
            let installed = ThreadKind::Worker.install();
            let ok = installed.is_ok();
            let _ = ready_tx.send(installed);
            if ok {
                for job in rx {
                    job();
                }
            }
        })
        .map_err(SeccompError::Handler)?;
    ready_rx
        .recv()
        .unwrap_or_else(|_| Err(SeccompError::Handler(std::io::ErrorKind::Other.into())))?;
    let _ = SPAWNER.set(Mutex::new(tx));
    Ok(())
}

/// Creates a device worker thread: on the spawner when it runs (so the thread carries the worker
/// filter), else (unit tests, `--no-jail`) right here.
pub fn spawn_device_thread<T: Send + 'static>(
    builder: std::thread::Builder,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    let Some(spawner) = SPAWNER.get() else {
        return builder.spawn(f);
    };
    let (tx, rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = tx.send(builder.spawn(move || {
            // The filter is the spawner's, inherited; the name for messages is per thread.
            KIND.with(|k| k.set(ThreadKind::Worker.name()));
            f()
        }));
    });
    spawner
        .lock()
        .map_err(|_| std::io::Error::other("the device spawner's lock is poisoned"))?
        .send(job)
        .map_err(|_| std::io::Error::other("the device spawner has stopped"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("the device spawner has stopped"))?
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};

    /// Runs `body` in a forked child (single-threaded, as a filter test needs) whose stderr is a
    /// pipe; returns its exit status and what it wrote. A panic in the child is reported there and
    /// exits with 101.
    pub fn in_child(body: impl FnOnce()) -> (i32, String) {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child runs `body` and exits; it never returns into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: in the child: stderr becomes the pipe's write end.
            unsafe { libc::dup2(fds[1], 2) };
            // The harness captures panics' output per thread; the child writes them to fd 2.
            std::panic::set_hook(Box::new(|info| {
                let msg = format!("child: {info}\n");
                // SAFETY: write reads `msg.len()` bytes of `msg`.
                unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
            }));
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).is_ok();
            // SAFETY: ends the child without running the harness's code.
            unsafe { libc::_exit(if ok { 0 } else { 101 }) };
        }
        // SAFETY: fds[1] is ours to close; fds[0] becomes an owned File.
        let mut out = unsafe {
            libc::close(fds[1]);
            std::fs::File::from(OwnedFd::from_raw_fd(fds[0]))
        };
        let mut text = String::new();
        out.read_to_string(&mut text).unwrap();
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}: {text}");
        (libc::WEXITSTATUS(status), text)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::in_child;
    use super::*;

    const KINDS: [ThreadKind; 5] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Worker,
        ThreadKind::ConsoleIn,
        ThreadKind::Waiter,
    ];

    #[test]
    fn every_filter_compiles() {
        for kind in KINDS {
            let bpf = kind.filter().unwrap();
            assert!(!bpf.is_empty(), "{kind:?}");
        }
    }

    #[test]
    fn numbers_are_formatted_without_allocating() {
        let mut m = MessageBuf::default();
        m.push_number(0);
        m.push(b" ");
        m.push_number(435);
        m.push(b" ");
        m.push_number(-12);
        assert_eq!(&m.buf[..m.len], b"0 435 -12");
        let mut full = MessageBuf::default();
        full.push(&[b'x'; 300]);
        assert_eq!(full.len, 256);
    }

    #[test]
    fn a_forbidden_call_names_itself_and_ends_the_process() {
        let (code, err) = in_child(|| {
            install_sigsys_handler().unwrap();
            ThreadKind::Vcpu.install().unwrap();
            // A vCPU thread never opens files.
            // SAFETY: plain openat of a constant path.
            unsafe { libc::openat(libc::AT_FDCWD, c"/".as_ptr(), libc::O_RDONLY) };
        });
        assert_eq!(code, EXIT_FORBIDDEN_SYSCALL, "{err}");
        assert_eq!(
            err,
            "husk-vmm: the vcpu thread made the system call openat (257), which its seccomp \
             filter forbids; stopping the VM\n"
        );
    }

    #[test]
    fn a_vcpu_may_only_make_kvm_ioctls() {
        let (code, err) = in_child(|| {
            install_sigsys_handler().unwrap();
            ThreadKind::Vcpu.install().unwrap();
            // TCGETS on stderr: a terminal ioctl, not KVM's.
            let mut t = std::mem::MaybeUninit::<libc::termios>::uninit();
            // SAFETY: TCGETS writes a termios into valid memory.
            unsafe { libc::ioctl(2, libc::TCGETS, t.as_mut_ptr()) };
        });
        assert_eq!(code, EXIT_FORBIDDEN_SYSCALL);
        assert!(err.contains("system call ioctl (16)"), "{err}");
    }

    #[test]
    fn a_worker_may_set_a_taps_offloads_and_nothing_else_of_it() {
        let (code, err) = in_child(|| {
            install_sigsys_handler().unwrap();
            ThreadKind::Worker.install().unwrap();
            // On no descriptor at all: the filter looks at the request, the kernel says EBADF.
            // SAFETY: ioctls on an invalid descriptor touch no memory.
            unsafe {
                assert_eq!(libc::ioctl(-1, libc::TUNSETOFFLOAD, 0), -1);
                // Attaching to a tap is for before the jail, never a worker.
                libc::ioctl(-1, libc::TUNSETIFF, 0);
            }
        });
        assert_eq!(code, EXIT_FORBIDDEN_SYSCALL, "{err}");
        assert!(err.contains("system call ioctl (16)"), "{err}");
    }

    #[test]
    fn allowed_calls_go_through() {
        let (code, err) = in_child(|| {
            install_sigsys_handler().unwrap();
            ThreadKind::Worker.install().unwrap();
            // A worker may open Unix sockets, not others.
            // SAFETY: plain socket/close calls.
            unsafe {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                assert!(fd >= 0);
                libc::close(fd);
            }
            let t = std::thread::spawn(|| 7);
            assert_eq!(t.join().unwrap(), 7);
            // SAFETY: a socket of another family: forbidden.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        });
        assert_eq!(code, EXIT_FORBIDDEN_SYSCALL, "{err}");
        assert!(
            err.contains("device worker thread made the system call socket"),
            "{err}"
        );
    }
}
