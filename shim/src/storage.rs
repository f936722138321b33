//! Every host mount the shim makes for a sandbox, and its undoing.
//!
//! A sandbox's host directory (`/run/husk/s/<hash>`, mode 0700) holds:
//! - `mounts/`: host-private. Each container's rootfs and bind sources are mounted below
//!   `mounts/<id>/` (`rootfs`, `mounts/<n>`). `mounts/` is a bind mount of itself with shared
//!   propagation.
//! - `shared/`: what the guest sees over virtio-fs: a read-only bind of `mounts/` that receives
//!   its new mounts (slave propagation). The guest can write inside a rootfs or a writable bind,
//!   as the spec says, but cannot rename, replace or add anything in the tree the shim walks.
//!
//! The shim decides what to unmount and delete from the sandbox record (see `record`), never from
//! listing a directory. Every path below the sandbox directory is resolved with `openat2` and
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`; mounts are made on a file descriptor of the target
//! (`/proc/self/fd/N`) and undone with `UMOUNT_NOFOLLOW`.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The host-private tree and the guest's read-only view of it, relative to the sandbox dir.
pub const MOUNTS: &str = "mounts";
pub const SHARED: &str = "shared";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("Bind mount source {0}")]
    Source(PathBuf, #[source] std::io::Error),
    #[error("Cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot mount {fstype} {source_name} on {target}: {error}")]
    Mount {
        fstype: String,
        source_name: String,
        target: PathBuf,
        error: std::io::Error,
    },
    #[error("{0:?} is not a plain relative path")]
    BadPath(String),
    #[error(transparent)]
    Record(crate::record::RecordError),
}

impl StorageError {
    /// The spec named a source that is not there: the caller's mistake, not ours.
    pub fn is_bad_source(&self) -> bool {
        matches!(self, StorageError::Source(..))
    }
}

type Result<T> = std::result::Result<T, StorageError>;

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn cstr(p: &[u8]) -> std::io::Result<CString> {
    CString::new(p).map_err(|_| std::io::ErrorKind::InvalidInput.into())
}

/// A relative path of plain components (no `..`, no root, no `.`), as records and layouts use.
pub fn check_relative(rel: &str) -> Result<&Path> {
    let plain = rel
        .split('/')
        .all(|c| !c.is_empty() && c != "." && c != "..");
    if plain {
        Ok(Path::new(rel))
    } else {
        Err(StorageError::BadPath(rel.to_string()))
    }
}

/// Opens `rel` below `root` without following any symlink and without leaving `root`.
/// `no_xdev` also refuses to cross a mount point.
fn open_beneath(root: RawFd, rel: &Path, flags: i32, no_xdev: bool) -> std::io::Result<OwnedFd> {
    let path = cstr(rel.as_os_str().as_bytes())?;
    let mut how: libc::open_how = {
        // SAFETY: open_how is plain old data; all-zero is its documented default.
        unsafe { std::mem::zeroed() }
    };
    how.flags = (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
    if flags & libc::O_CREAT != 0 {
        how.mode = 0o644;
    }
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    if no_xdev {
        how.resolve |= libc::RESOLVE_NO_XDEV;
    }
    // SAFETY: `path` and `how` are valid for the call; the kernel reads `size_of` bytes of `how`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn proc_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn proc_fd(fd: &OwnedFd) -> CString {
    cstr(proc_path(fd).as_os_str().as_bytes()).expect("no NUL in a number")
}

fn mount_raw(
    source: Option<&CString>,
    target: &CString,
    fstype: Option<&CString>,
    flags: libc::c_ulong,
    data: Option<&CString>,
) -> std::io::Result<()> {
    let ptr = |c: Option<&CString>| c.map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Splits mount(8)-style options into mount flags and the file system's data string.
pub fn mount_options(options: &[String]) -> (libc::c_ulong, String) {
    let mut flags: libc::c_ulong = 0;
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" => flags &= !libc::MS_RDONLY,
            "bind" => flags |= libc::MS_BIND,
            "rbind" => flags |= libc::MS_BIND | libc::MS_REC,
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "relatime" => flags |= libc::MS_RELATIME,
            "noatime" => flags |= libc::MS_NOATIME,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "suid" | "dev" | "exec" | "async" | "defaults" => {}
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// A mount containerd hands over for a rootfs (`CreateTaskRequest.rootfs`).
#[derive(Clone, Debug)]
pub struct RootfsMount {
    pub fstype: String,
    pub source: String,
    pub options: Vec<String>,
}

/// A host path a container needs, bound read-only or not.
#[derive(Clone, Debug)]
pub struct Bind {
    pub source: PathBuf,
    /// Below `mounts/`, e.g. `c1/mounts/3`.
    pub target: String,
    pub read_only: bool,
}

/// One sandbox's host directory and the mounts in it.
pub struct SandboxStorage {
    dir: PathBuf,
    root: OwnedFd,
}

impl SandboxStorage {
    /// Creates the sandbox directory (0700) with its private tree and the guest's read-only
    /// view of it. Undone by [`SandboxStorage::teardown`].
    pub fn create(dir: &Path) -> Result<SandboxStorage> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("create", dir))?;
        let storage = SandboxStorage::open(dir)?;
        storage.make_dir(Path::new(MOUNTS))?;
        storage.make_dir(Path::new(SHARED))?;
        let mounts = storage.path(MOUNTS);
        let shared = storage.path(SHARED);
        let m = cstr(mounts.as_os_str().as_bytes()).map_err(io("name", &mounts))?;
        let s = cstr(shared.as_os_str().as_bytes()).map_err(io("name", &shared))?;
        let undo = |e| {
            storage.teardown_mounts();
            e
        };
        // `mounts` becomes a mount of its own with shared propagation...
        mount_raw(Some(&m), &m, None, libc::MS_BIND, None)
            .and_then(|_| mount_raw(None, &m, None, libc::MS_SHARED, None))
            .map_err(io("bind-mount", &mounts))
            .map_err(undo)?;
        // ...and `shared` a read-only copy that receives its new mounts but sends none back.
        mount_raw(Some(&m), &s, None, libc::MS_BIND | libc::MS_REC, None)
            .and_then(|_| {
                let ro = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
                mount_raw(None, &s, None, ro, None)
            })
            .and_then(|_| mount_raw(None, &s, None, libc::MS_SLAVE, None))
            .map_err(io("bind-mount", &shared))
            .map_err(undo)?;
        Ok(storage)
    }

    /// Opens an existing sandbox directory (the crash cleanup).
    pub fn open(dir: &Path) -> Result<SandboxStorage> {
        let d = cstr(dir.as_os_str().as_bytes()).map_err(io("open", dir))?;
        // SAFETY: a valid NUL-terminated path; the result is checked.
        let fd = unsafe {
            libc::open(
                d.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io("open", dir)(std::io::Error::last_os_error()));
        }
        Ok(SandboxStorage {
            dir: dir.to_path_buf(),
            // SAFETY: a new descriptor that nobody else owns.
            root: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// What virtio-fs serves to the guest.
    pub fn guest_share(&self) -> PathBuf {
        self.path(SHARED)
    }

    fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.join(rel)
    }

    /// Creates every missing directory of `rel`, below the sandbox directory.
    fn make_dir(&self, rel: &Path) -> Result<()> {
        let mut done = PathBuf::new();
        for c in rel.components() {
            let parent = if done.as_os_str().is_empty() {
                None
            } else {
                Some(
                    open_beneath(
                        self.root.as_raw_fd(),
                        &done,
                        libc::O_PATH | libc::O_DIRECTORY,
                        false,
                    )
                    .map_err(io("open", &self.path(&done)))?,
                )
            };
            let parent_fd = parent
                .as_ref()
                .map_or(self.root.as_raw_fd(), |f| f.as_raw_fd());
            let name = cstr(c.as_os_str().as_bytes()).map_err(io("name", rel))?;
            // SAFETY: a valid descriptor and NUL-terminated name; mkdirat never follows a
            // symlink in its last component.
            let rc = unsafe { libc::mkdirat(parent_fd, name.as_ptr(), 0o755) };
            done.push(c);
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    return Err(io("create", &self.path(&done))(e));
                }
            }
        }
        // What exists must be a directory we can reach without a symlink.
        open_beneath(
            self.root.as_raw_fd(),
            rel,
            libc::O_PATH | libc::O_DIRECTORY,
            false,
        )
        .map(drop)
        .map_err(io("create", &self.path(rel)))
    }

    /// Creates an empty file at `rel` (a bind target for a file).
    fn make_file(&self, rel: &Path) -> Result<()> {
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.make_dir(parent)?;
        }
        let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_NONBLOCK;
        open_beneath(self.root.as_raw_fd(), rel, flags, false)
            .map(drop)
            .map_err(io("create", &self.path(rel)))
    }

    /// A descriptor of the mount target `rel` (below `mounts/`), for `/proc/self/fd/N`.
    fn target(&self, rel: &Path) -> Result<OwnedFd> {
        open_beneath(self.root.as_raw_fd(), rel, libc::O_PATH, false)
            .map_err(io("open", &self.path(rel)))
    }

    /// Where container `id`'s rootfs goes, relative to the sandbox directory.
    pub fn rootfs_rel(id: &str) -> String {
        format!("{MOUNTS}/{id}/rootfs")
    }

    /// Mounts containerd's rootfs mounts (or the bundle's `rootfs` directory when there are
    /// none) at `mounts/<id>/rootfs`. `record` is called with the target before each mount, so
    /// that a crash in between still finds it.
    pub fn mount_rootfs(
        &self,
        id: &str,
        bundle: &Path,
        mounts: &[RootfsMount],
        record: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<()> {
        let rel = SandboxStorage::rootfs_rel(id);
        self.make_dir(check_relative(&rel)?)?;
        record(&rel)?;
        if mounts.is_empty() {
            return self.bind(&bundle.join("rootfs"), Path::new(&rel), false);
        }
        for m in mounts {
            let target = self.target(Path::new(&rel))?;
            let (flags, data) = mount_options(&m.options);
            // Device nodes and setuid files the guest makes are inert on the host.
            let flags = flags | libc::MS_NODEV | libc::MS_NOSUID;
            let err = |error| StorageError::Mount {
                fstype: m.fstype.clone(),
                source_name: m.source.clone(),
                target: self.path(&rel),
                error,
            };
            let source = cstr(m.source.as_bytes()).map_err(err)?;
            let fstype = cstr(m.fstype.as_bytes()).map_err(err)?;
            let data = cstr(data.as_bytes()).map_err(err)?;
            mount_raw(
                Some(&source),
                &proc_fd(&target),
                Some(&fstype).filter(|t| !t.is_empty()),
                flags,
                Some(&data).filter(|d| !d.is_empty()),
            )
            .map_err(err)?;
        }
        Ok(())
    }

    /// Binds `b.source` at `mounts/<b.target>`, recording the target first.
    pub fn mount_bind(&self, b: &Bind, record: &mut dyn FnMut(&str) -> Result<()>) -> Result<()> {
        let rel = format!("{MOUNTS}/{}", b.target);
        let rel_path = check_relative(&rel)?;
        // The source is the spec's (trusted), followed as runc follows it; opened once, so
        // that what is checked is what gets mounted.
        let src = open_source(&b.source)?;
        let is_dir = std::fs::metadata(proc_path(&src))
            .map_err(|e| StorageError::Source(b.source.clone(), e))?
            .is_dir();
        if is_dir {
            self.make_dir(rel_path)?;
        } else {
            self.make_file(rel_path)?;
        }
        record(&rel)?;
        self.bind_fd(&src, &b.source, rel_path, b.read_only)
    }

    fn bind(&self, source: &Path, rel: &Path, read_only: bool) -> Result<()> {
        let src = open_source(source)?;
        self.bind_fd(&src, source, rel, read_only)
    }

    fn bind_fd(&self, src: &OwnedFd, source: &Path, rel: &Path, read_only: bool) -> Result<()> {
        let err = |error| StorageError::Mount {
            fstype: "bind".into(),
            source_name: source.display().to_string(),
            target: self.path(rel),
            error,
        };
        let target = self.target(rel)?;
        let flags = libc::MS_BIND | libc::MS_REC;
        mount_raw(Some(&proc_fd(src)), &proc_fd(&target), None, flags, None).map_err(err)?;
        // The new mount is on top now: open it again to make it, and every mount below it,
        // nodev and nosuid (device nodes and setuid files the guest makes are inert on the
        // host), and read-only if asked (a `:ro` bind is read-only all the way down).
        let remounted = self
            .target(rel)
            .and_then(|mounted| restrict_recursively(&mounted, read_only).map_err(err));
        if let Err(e) = remounted {
            self.unmount(rel);
            return Err(e);
        }
        Ok(())
    }

    /// Unmounts whatever is mounted at `rel` (a recorded target), without following symlinks.
    pub fn unmount(&self, rel: &Path) {
        let path = self.path(rel);
        let Ok(p) = cstr(path.as_os_str().as_bytes()) else {
            return;
        };
        // A rootfs of several mounts is stacked on one target: undo them all.
        for _ in 0..MAX_STACKED_MOUNTS {
            // SAFETY: a valid NUL-terminated path; the flags have no other preconditions.
            let rc = unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot unmount");
                }
                return;
            }
        }
    }

    /// Removes `rel` (an empty directory or a file we created) without crossing a mount or
    /// following a symlink: something still mounted there stays, and so does what is in it.
    pub fn remove(&self, rel: &Path) {
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return;
        };
        // The first component may be a mount of ours (`mounts`); below it, nothing may be.
        let dir = libc::O_PATH | libc::O_DIRECTORY;
        let mut parts = parent.components();
        let parent_fd = match parts.next() {
            None => None,
            Some(first) => {
                let Ok(top) = open_beneath(self.root.as_raw_fd(), Path::new(&first), dir, false)
                else {
                    return;
                };
                let rest = parts.as_path();
                if rest.as_os_str().is_empty() {
                    Some(top)
                } else {
                    match open_beneath(top.as_raw_fd(), rest, dir, true) {
                        Ok(fd) => Some(fd),
                        Err(_) => return,
                    }
                }
            }
        };
        let fd = parent_fd
            .as_ref()
            .map_or(self.root.as_raw_fd(), |f| f.as_raw_fd());
        let Ok(name) = cstr(name.as_bytes()) else {
            return;
        };
        // SAFETY: a valid descriptor and name; unlinkat never follows the last component.
        unsafe {
            if libc::unlinkat(fd, name.as_ptr(), libc::AT_REMOVEDIR) != 0 {
                libc::unlinkat(fd, name.as_ptr(), 0);
            }
        }
    }

    /// Undoes container `id`'s recorded mounts (innermost last in `targets`) and removes the
    /// directories the layout gave it.
    pub fn remove_container(&self, id: &str, targets: &[String]) {
        for t in targets.iter().rev() {
            if let Ok(rel) = check_relative(t) {
                self.unmount(rel);
                self.remove(rel);
            }
        }
        for rel in [
            format!("{MOUNTS}/{id}/rootfs"),
            format!("{MOUNTS}/{id}/mounts"),
            format!("{MOUNTS}/{id}"),
        ] {
            if let Ok(rel) = check_relative(&rel) {
                self.remove(rel);
            }
        }
    }

    fn teardown_mounts(&self) {
        self.unmount(Path::new(SHARED));
        self.unmount(Path::new(MOUNTS));
    }

    /// Removes the guest's view and the private tree (after every container's
    /// [`SandboxStorage::remove_container`]), then the given files and the sandbox directory
    /// itself if it is empty then.
    pub fn teardown(&self, files: &[&str]) {
        self.teardown_mounts();
        for rel in [SHARED, MOUNTS].iter().chain(files) {
            self.remove(Path::new(rel));
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// Makes the mount `mounted` (an `O_PATH` descriptor of its root) and every mount below it
/// nodev and nosuid, and read-only with `read_only`. Kernels before 5.12 lack mount_setattr:
/// there only the top mount is changed, with a bind remount.
fn restrict_recursively(mounted: &OwnedFd, read_only: bool) -> std::io::Result<()> {
    let mut attr = MountAttr {
        attr_set: MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    if read_only {
        attr.attr_set |= MOUNT_ATTR_RDONLY;
    }
    // SAFETY: a descriptor we own, an empty NUL-terminated path, and `attr` valid for its size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mounted.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::ENOSYS) {
        return Err(e);
    }
    let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NODEV | libc::MS_NOSUID;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    mount_raw(None, &proc_fd(mounted), None, flags, None)
}

/// How many mounts stacked on one target are undone at most.
const MAX_STACKED_MOUNTS: usize = 16;

/// Opens a bind source with `O_PATH`: no permission needed, and nothing happens on open (a FIFO
/// does not block).
fn open_source(source: &Path) -> Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(source)
        .map(OwnedFd::from)
        .map_err(|e| StorageError::Source(source.to_path_buf(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("husk-storage-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn mount_options_split() {
        let o = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (f, d) = mount_options(&o(&["ro", "lowerdir=/a:/b", "upperdir=/u", "nosuid"]));
        assert_eq!(f, libc::MS_RDONLY | libc::MS_NOSUID);
        assert_eq!(d, "lowerdir=/a:/b,upperdir=/u");
        let (f, d) = mount_options(&o(&["rbind", "rw"]));
        assert_eq!(f, libc::MS_BIND | libc::MS_REC);
        assert!(d.is_empty());
    }

    #[test]
    fn records_hold_plain_relative_paths_only() {
        assert!(check_relative("mounts/c1/rootfs").is_ok());
        for bad in ["", "/etc", "mounts/../x", "./x", "a/./b"] {
            assert!(check_relative(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths_below_the_sandbox_never_follow_symlinks() {
        let dir = scratch("symlinks");
        let outside = scratch("outside");
        std::fs::write(outside.join("victim"), "keep").unwrap();
        let s = SandboxStorage::open(&dir).unwrap();
        s.make_dir(Path::new("mounts/c1")).unwrap();
        // A planted link in place of a directory the shim would create or clean up.
        std::os::unix::fs::symlink(&outside, dir.join("mounts/c1/mounts")).unwrap();
        assert!(s.make_dir(Path::new("mounts/c1/mounts/0")).is_err());
        assert!(s.make_file(Path::new("mounts/c1/mounts/1")).is_err());
        assert!(!outside.join("0").exists() && !outside.join("1").exists());
        s.remove(Path::new("mounts/c1/mounts/victim"));
        s.remove_container("c1", &["mounts/c1/mounts/victim".into()]);
        assert_eq!(
            std::fs::read_to_string(outside.join("victim")).unwrap(),
            "keep"
        );
        // The link itself may go; what it points to stays.
        assert!(outside.is_dir());
        // A link as the last component is not followed either.
        std::os::unix::fs::symlink(outside.join("victim"), dir.join("mounts/f")).unwrap();
        assert!(s.make_file(Path::new("mounts/f")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&outside);
    }

    #[test]
    fn files_are_created_without_blocking_on_a_fifo() {
        let dir = scratch("fifo");
        let s = SandboxStorage::open(&dir).unwrap();
        s.make_dir(Path::new("mounts")).unwrap();
        let fifo = cstr(dir.join("mounts/p").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        // O_NONBLOCK: opening a FIFO for writing with no reader fails (ENXIO) instead of hanging.
        assert!(s.make_file(Path::new("mounts/p")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
