//! The VMM's jail: what a guest that breaks out of its device models finds around it.
//!
//! [`enter`] runs first thing in `husk-vmm`, while the process is single-threaded:
//! 1. It unshares the mount, pid, ipc, uts and network namespaces and forks: the child is pid 1
//!    of the new pid namespace and runs the VM; the parent drops every capability, installs a
//!    filter that allows little more than `wait4`, and exits with the child's status. The child
//!    dies with the parent (`PR_SET_PDEATHSIG`), so killing the process the shim started kills
//!    the VM.
//! 2. The child opens every host path the VM needs (kernel, initramfs, console file, runtime
//!    directory, shared directories, `/dev/kvm`, `/dev/urandom`) as `O_PATH` descriptors, mounts
//!    an empty tmpfs, binds each opened path into it at the same absolute path
//!    (kernel and initramfs read-only; shares `nosuid,nodev`), mounts a read-only `/proc` that
//!    shows only its own namespace, `pivot_root`s into it, detaches the old root and makes the
//!    new one read-only.
//! 3. It drops every capability but those virtio-fs needs to act for the guest's users (none
//!    without shares), from the bounding set too, and sets `no_new_privs`.
//!
//! Then each thread installs its seccomp filter ([`seccomp`]).

pub mod seccomp;
mod syscall_names;

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};

pub use seccomp::{ThreadKind, EXIT_FORBIDDEN_SYSCALL};

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("Cannot open {0} for the VMM's jail")]
    Open(PathBuf, #[source] std::io::Error),
    #[error("Cannot {0} for the VMM's jail")]
    Sys(&'static str, #[source] std::io::Error),
    #[error("Cannot {what} {path} in the VMM's jail")]
    Mount {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot drop the VMM's capabilities")]
    Caps(#[source] caps::errors::CapsError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
}

/// How a host path appears in the jail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
    /// A shared directory: its whole tree (submounts included), `nosuid,nodev`, read-only or
    /// not.
    Share {
        read_only: bool,
    },
    /// A device node (`/dev/kvm`): nothing else about it changes.
    Device,
}

/// A host path the VM needs, bound into the jail at the same path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    /// Absolute and canonical.
    pub path: PathBuf,
    pub access: Access,
}

/// What the jail holds.
#[derive(Clone, Debug, Default)]
pub struct JailPlan {
    pub binds: Vec<Bind>,
    /// Capabilities the VMM keeps (virtio-fs's, when there are shares).
    pub keep: Vec<Capability>,
}

/// What virtio-fs needs to serve files for any guest user: to act as the caller (`setresuid`,
/// `setresgid`), reach and change files whatever their owner and mode, keep set-id bits where a
/// guest user could, and make hard links from the descriptors it holds (`linkat` with
/// `AT_EMPTY_PATH`; `open_by_handle_at`, which the same capability allows, is not in any seccomp
/// filter).
pub const FS_CAPABILITIES: [Capability; 7] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
];

/// Added for a share with `xattr=all`: the kernel lets only these set `trusted.*` and
/// `security.*` xattrs.
pub const ALL_XATTRS_CAPABILITIES: [Capability; 2] =
    [Capability::CAP_SYS_ADMIN, Capability::CAP_SETFCAP];

/// Where the jail's tmpfs root is mounted before `pivot_root` (in the VMM's own mount
/// namespace only; the host's `/tmp` is untouched).
const STAGING: &str = "/tmp";

/// Puts the calling process into the jail described by `plan`. Returns in the jailed child;
/// the parent never returns (it exits with the child's status).
pub fn enter(plan: &JailPlan) -> Result<(), JailError> {
    // The parent keeps the write end open for as long as it lives: the child sees the pipe
    // close if the parent died before the child asked for its death signal.
    let (alive_r, alive_w) = pipe()?;
    let flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWNET;
    // SAFETY: unshare takes flags only.
    check("unshare the namespaces", unsafe { libc::unshare(flags) })?;
    // SAFETY: single-threaded here (enter runs before any thread starts), so the child may go
    // on with ordinary code.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(sys_error("fork into the new pid namespace"));
    }
    if child > 0 {
        drop(alive_r);
        wait_and_exit(child, alive_w);
    }
    drop(alive_w);
    // SAFETY: prctl with constant arguments.
    check("set the parent-death signal", unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0)
    })?;
    if parent_gone(&alive_r) {
        // SAFETY: the parent is gone: end at once, like its death signal would have.
        unsafe { libc::_exit(1) };
    }
    drop(alive_r);
    // Opened in the new mount namespace (a bind's source must be a mount of the caller's own
    // namespace), before the tmpfs that may cover some of them.
    let opened = plan
        .binds
        .iter()
        .map(|b| open_path(&b.path).map(|fd| (b, fd)))
        .collect::<Result<Vec<_>, _>>()?;
    build_root(&opened)?;
    drop(opened);
    drop_capabilities(&plan.keep)?;
    // SAFETY: prctl with constant arguments.
    check("set no_new_privs", unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    })?;
    tracing::debug!(binds = plan.binds.len(), keep = ?plan.keep, "in the jail");
    Ok(())
}

/// The parent: no capabilities, a filter that lets it wait, then the child's exit status as its
/// own (a signal N as 128 + N).
fn wait_and_exit(child: libc::pid_t, _alive: OwnedFd) -> ! {
    let confined = drop_capabilities(&[])
        .map_err(|e| e.to_string())
        .and_then(|()| ThreadKind::Waiter.install().map_err(|e| e.to_string()));
    if let Err(e) = confined {
        eprintln!("husk-vmm: the jail's outer process: {e}");
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child, writing its status into a valid int.
        let r = unsafe { libc::waitpid(child, &mut status, 0) };
        if r == child {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // SAFETY: exits the process.
            unsafe { libc::_exit(1) };
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    // SAFETY: exits the process; nothing of ours needs flushing.
    unsafe { libc::_exit(code) }
}

/// Whether the pipe's write end (held only by the parent) is closed.
fn parent_gone(alive: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: alive.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one valid pollfd without waiting.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    r > 0 && pfd.revents & (libc::POLLHUP | libc::POLLIN) != 0
}

/// The jail's file system: a tmpfs with the binds and `/proc`, made the root.
fn build_root(opened: &[(&Bind, OwnedFd)]) -> Result<(), JailError> {
    // Nothing we mount propagates back to the host; the host's new mounts under the shares
    // (containers added to a running pod) still reach us.
    mount(None::<&str>, "/", None, libc::MS_REC | libc::MS_SLAVE, None)
        .map_err(|e| mount_error("make the mount tree a slave of", "/", e))?;
    mount(
        Some("husk-jail"),
        STAGING,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("size=1m,nr_inodes=1024,mode=0755"),
    )
    .map_err(|e| mount_error("mount the jail's tmpfs on", STAGING, e))?;
    for (bind, fd) in opened {
        let target = Path::new(STAGING).join(bind.path.strip_prefix("/").unwrap_or(&bind.path));
        bind_into(bind, fd, &target)?;
    }
    let proc_dir = Path::new(STAGING).join("proc");
    std::fs::create_dir_all(&proc_dir).map_err(|e| mount_error("create", &proc_dir, e))?;
    let proc_flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // `subset=pid` leaves out /proc/sys and the other global files (Linux 5.8 and later).
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        proc_flags,
        Some("subset=pid,hidepid=invisible"),
    )
    .or_else(|_| mount(Some("proc"), &proc_dir, Some("proc"), proc_flags, None))
    .map_err(|e| mount_error("mount /proc on", &proc_dir, e))?;

    std::env::set_current_dir(STAGING).map_err(|e| mount_error("enter", STAGING, e))?;
    let dot = c".";
    // SAFETY: pivot_root with two valid C strings: the old root goes on top of the new one.
    check("pivot_root into the jail", unsafe {
        libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int
    })?;
    // SAFETY: detaches the old root, now mounted on top of ".".
    check("detach the host's root", unsafe {
        libc::umount2(dot.as_ptr(), libc::MNT_DETACH)
    })?;
    std::env::set_current_dir("/").map_err(|e| mount_error("enter", "/", e))?;
    mount(
        None::<&str>,
        "/",
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
        None,
    )
    .map_err(|e| mount_error("make read-only", "/", e))
}

/// Binds the opened `fd` at `target` (inside the staging root) as `bind` says.
fn bind_into(bind: &Bind, fd: &OwnedFd, target: &Path) -> Result<(), JailError> {
    let is_dir = std::fs::metadata(fd_path(fd))
        .map(|m| m.is_dir())
        .map_err(|e| JailError::Open(bind.path.clone(), e))?;
    let parent = target.parent().unwrap_or(Path::new(STAGING));
    std::fs::create_dir_all(parent).map_err(|e| mount_error("create", parent, e))?;
    let made = if is_dir {
        std::fs::create_dir_all(target)
    } else {
        std::fs::File::create(target).map(drop)
    };
    made.map_err(|e| mount_error("create", target, e))?;
    let source = fd_path(fd);
    let recursive = if is_dir { libc::MS_REC } else { 0 };
    mount(
        Some(source.as_os_str()),
        target,
        None,
        libc::MS_BIND | recursive,
        None,
    )
    .map_err(|e| mount_error("bind", &bind.path, e))?;
    let (read_only, tree) = match bind.access {
        Access::ReadOnly => (true, false),
        Access::ReadWrite => (false, false),
        Access::Share { read_only } => (read_only, true),
        Access::Device => return Ok(()),
    };
    if tree {
        // The whole tree, submounts included: mount_setattr with AT_RECURSIVE.
        let mut set = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
        if read_only {
            set |= MOUNT_ATTR_RDONLY;
        }
        return set_tree_attrs(target, set).map_err(|e| mount_error("restrict", &bind.path, e));
    }
    let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    mount(None::<&str>, target, None, flags, None)
        .map_err(|e| mount_error("restrict", &bind.path, e))
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn set_tree_attrs(path: &Path, set: u64) -> std::io::Result<()> {
    let c = cstring(path.as_os_str())?;
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr with a valid path and a mount_attr of the size we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Keeps `keep` in the permitted and effective sets and nothing anywhere else (bounding,
/// inheritable, ambient).
fn drop_capabilities(keep: &[Capability]) -> Result<(), JailError> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    for cap in caps::all() {
        // A capability this kernel does not know is in no set: has_cap fails for it.
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap).map_err(JailError::Caps)?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(JailError::Caps)?;
    caps::clear(None, CapSet::Inheritable).map_err(JailError::Caps)?;
    caps::set(None, CapSet::Effective, &keep).map_err(JailError::Caps)?;
    caps::set(None, CapSet::Permitted, &keep).map_err(JailError::Caps)
}

fn open_path(path: &Path) -> Result<OwnedFd, JailError> {
    let c = cstring(path.as_os_str()).map_err(|e| JailError::Open(path.into(), e))?;
    // SAFETY: open with a valid C string; the result is checked.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(JailError::Open(
            path.into(),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: a descriptor we just opened and own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn pipe() -> Result<(OwnedFd, OwnedFd), JailError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    check("create a pipe", unsafe {
        libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC)
    })?;
    // SAFETY: two descriptors we just created and own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn cstring(s: &OsStr) -> std::io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| std::io::ErrorKind::InvalidInput.into())
}

fn mount(
    source: Option<impl AsRef<OsStr>>,
    target: impl AsRef<Path>,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> std::io::Result<()> {
    let source = source.map(|s| cstring(s.as_ref())).transpose()?;
    let target = cstring(target.as_ref().as_os_str())?;
    let fstype = fstype.map(|s| cstring(OsStr::new(s))).transpose()?;
    let data = data.map(|s| cstring(OsStr::new(s))).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is a valid C string or null, as mount(2) allows.
    let r = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn mount_error(what: &'static str, path: impl AsRef<Path>, source: std::io::Error) -> JailError {
    JailError::Mount {
        what,
        path: path.as_ref().into(),
        source,
    }
}

fn check(what: &'static str, r: libc::c_int) -> Result<(), JailError> {
    if r < 0 {
        return Err(sys_error(what));
    }
    Ok(())
}

fn sys_error(what: &'static str) -> JailError {
    JailError::Sys(what, std::io::Error::last_os_error())
}
