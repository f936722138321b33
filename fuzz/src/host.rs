//! Host-side fixtures the devices talk to, set up once per process, and the per-iteration
//! resource check.
//!
//! - [`VsockHost`]: a directory for the vsock muxer's socket, with host listeners that guest
//!   connections reach.
//! - [`FsJail`]: the directory virtio-fs shares, on a private tmpfs beside a canary the guest
//!   must never reach. The virtio-fs targets run as root with arbitrary FUSE requests, so the
//!   process first confines itself: a mount namespace of its own where every other mount is
//!   read-only, except the directories named in `HUSK_FUZZ_RW` (libFuzzer's corpus and
//!   artifacts).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Open file descriptors and threads of this process: an iteration must leave both as it found
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resources {
    fds: usize,
    threads: usize,
}

impl Resources {
    pub fn now() -> Resources {
        let count = |dir: &str| std::fs::read_dir(dir).map_or(0, |d| d.count());
        Resources {
            fds: count("/proc/self/fd"),
            threads: count("/proc/self/task"),
        }
    }

    /// Panics if descriptors or threads were left behind since `self`.
    pub fn assert_unchanged(self) {
        let now = Resources::now();
        assert_eq!(now, self, "an iteration left descriptors or threads behind");
    }
}

/// A directory of this process's own under `$TMPDIR`.
fn private_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("husk-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("fuzz temp dir");
    dir
}

/// The guest's CID in every vsock target.
pub const GUEST_CID: u64 = 3;
/// Host ports that have a listener (`<socket>_<port>`): guest connections to them succeed.
pub const LISTENING_PORTS: [u32; 3] = [52, 1024, 5000];

pub struct VsockHost {
    dir: PathBuf,
    listeners: Vec<UnixListener>,
}

impl VsockHost {
    pub fn get() -> &'static VsockHost {
        static HOST: OnceLock<VsockHost> = OnceLock::new();
        HOST.get_or_init(|| {
            let dir = private_dir("vsock");
            let socket = dir.join("v.sock");
            let listeners = LISTENING_PORTS
                .iter()
                .map(|port| {
                    let l = UnixListener::bind(format!("{}_{port}", socket.display()))
                        .expect("host listener");
                    l.set_nonblocking(true).expect("non-blocking listener");
                    l
                })
                .collect();
            VsockHost { dir, listeners }
        })
    }

    /// Where the muxer serves host clients; the muxer creates it and removes it when dropped.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("v.sock")
    }

    /// A guest connection waiting on the listener of `LISTENING_PORTS[i]`, accepted.
    pub fn accept(&self, i: usize) -> Option<UnixStream> {
        let (s, _) = self.listeners[i % self.listeners.len()].accept().ok()?;
        s.set_nonblocking(true).ok()?;
        Some(s)
    }

    /// Accepts and closes every connection still waiting, so that none outlives an iteration.
    pub fn drain(&self) {
        for l in &self.listeners {
            while l.accept().is_ok() {}
        }
    }
}

/// What the canary outside the shared directory holds; no reply may ever contain it.
pub const CANARY: &[u8] = b"husk-fuzz canary: outside the shared directory";

pub struct FsJail {
    root: PathBuf,
    pub shared: PathBuf,
    outside: PathBuf,
}

impl FsJail {
    pub fn get() -> &'static FsJail {
        static JAIL: OnceLock<FsJail> = OnceLock::new();
        JAIL.get_or_init(|| {
            let root = private_dir("fs");
            if let Err(e) = confine(&root) {
                eprintln!("husk-fuzz: running unconfined, on {}: {e}", root.display());
            }
            let jail = FsJail {
                shared: root.join("shared"),
                outside: root.join("outside"),
                root,
            };
            std::fs::create_dir_all(&jail.outside).expect("canary dir");
            std::fs::write(jail.outside.join("secret"), CANARY).expect("canary");
            jail
        })
    }

    /// Empties the shared directory and puts the fixtures back: a file, a directory with a file
    /// in it, and symlinks that point at the canary (relative and absolute), which the file
    /// system must never follow.
    pub fn reset(&self) {
        if self.shared.exists() {
            std::fs::remove_dir_all(&self.shared).expect("emptying the shared directory");
        }
        let s = &self.shared;
        std::fs::create_dir_all(s.join("dir")).expect("fixture dir");
        std::fs::write(s.join("file"), b"shared file\n").expect("fixture file");
        std::fs::write(s.join("dir/inner"), b"inner file\n").expect("fixture file");
        std::os::unix::fs::symlink("../outside/secret", s.join("up")).expect("fixture link");
        std::os::unix::fs::symlink(self.outside.join("secret"), s.join("abs"))
            .expect("fixture link");
    }

    /// Panics if anything outside the shared directory changed.
    pub fn assert_intact(&self) {
        let names = |dir: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        };
        assert_eq!(
            names(&self.root),
            ["outside", "shared"],
            "escaped: {:?}",
            self.root
        );
        assert_eq!(
            names(&self.outside),
            ["secret"],
            "escaped into the canary dir"
        );
        let secret = std::fs::read(self.outside.join("secret")).unwrap_or_default();
        assert_eq!(secret, CANARY, "the canary changed");
    }
}

/// True if `bytes` hold the canary.
pub fn holds_canary(bytes: &[u8]) -> bool {
    bytes.windows(CANARY.len()).any(|w| w == CANARY)
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)
}

fn check(rc: libc::c_long) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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

const MOUNT_ATTR_RDONLY: u64 = 1;

fn set_read_only(path: &Path, read_only: bool, recursive: bool) -> io::Result<()> {
    let p = cstr(path)?;
    let mut attr = MountAttr {
        attr_set: 0,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    if read_only {
        attr.attr_set = MOUNT_ATTR_RDONLY;
    } else {
        attr.attr_clr = MOUNT_ATTR_RDONLY;
    }
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: `p` is a NUL-terminated path and `attr` a mount_attr whose size we pass; the
    // kernel only reads both.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            p.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(rc)
}

fn mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: u64,
    data: Option<&str>,
) -> io::Result<()> {
    let src = src.map(cstr).transpose()?;
    let target = cstr(target)?;
    let fstype = fstype
        .map(CString::new)
        .transpose()
        .map_err(io::Error::other)?;
    let data = data
        .map(CString::new)
        .transpose()
        .map_err(io::Error::other)?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            ptr(&src),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    check(rc.into())
}

/// Puts this process in a mount namespace of its own with a 64 MiB tmpfs on `root`, and, if
/// `HUSK_FUZZ_RW` names the directories libFuzzer writes to, makes every other mount
/// read-only.
fn confine(root: &Path) -> io::Result<()> {
    // SAFETY: unshare takes no pointers; the result is checked.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) }.into())?;
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    mount(
        None,
        root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("size=64m,nr_inodes=16384,mode=0755"),
    )?;
    let Ok(rw) = std::env::var("HUSK_FUZZ_RW") else {
        eprintln!("husk-fuzz: HUSK_FUZZ_RW unset: the host file system stays writable");
        return Ok(());
    };
    let rw: Vec<PathBuf> = rw
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect();
    for dir in &rw {
        mount(Some(dir), dir, None, libc::MS_BIND | libc::MS_REC, None)?;
    }
    set_read_only(Path::new("/"), true, true)?;
    set_read_only(root, false, false)?;
    for dir in &rw {
        set_read_only(dir, false, true)?;
    }
    Ok(())
}
