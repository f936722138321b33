//! virtio-fs: a FUSE server over virtio queues, serving one host directory to the guest.
//!
//! The file system itself is `fuse-backend-rs`'s passthrough file system (the one Kata's
//! Dragonball and Cloud Hypervisor's virtiofsd lineage use): it decodes and validates every FUSE
//! request and works on file descriptors below the shared directory, never on host paths built
//! from guest strings, and it never follows a symlink on the host. We provide the queues, the
//! thread, and the policy (cache mode, xattrs).

mod policy;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use fuse_backend_rs::transport::{FuseBuf, Reader, VirtioFsWriter};
use virtio_queue::{DescriptorChain, Queue};
use vmm_sys_util::epoll::EventSet;

use super::queue::{self, Completion};
use super::worker::{EventHandler, Interest, QueueEvents, Worker, WorkerError};
use super::{ActivateError, DeviceState, Interrupt, VirtioDevice, TYPE_FS};
use crate::vstate::memory::GuestMemory;

const NAME: &str = "virtio-fs";
/// One high-priority queue (FORGET, INTERRUPT) and one request queue.
const QUEUE_SIZES: [u16; 2] = [1024, 1024];
const TAG_LEN: usize = 36;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    Never,
    Auto,
    Always,
}

impl std::str::FromStr for CacheMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "never" | "none" => Ok(CacheMode::Never),
            "auto" => Ok(CacheMode::Auto),
            "always" => Ok(CacheMode::Always),
            other => Err(format!(
                "cache mode {other:?} is not one of never, auto, always"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs tag {0:?} must be 1 to 36 bytes")]
    Tag(String),
    #[error("Shared directory {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("Cannot serve the shared directory {0}")]
    Passthrough(PathBuf, #[source] std::io::Error),
    #[error("Cannot make the shared directory {0} read-only (needs CAP_SYS_ADMIN)")]
    ReadOnly(PathBuf, #[source] std::io::Error),
}

/// Whether `path` is on a read-only mount.
fn on_read_only_mount(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(p) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statvfs fills a zeroed struct from a valid path.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        libc::statvfs(p.as_ptr(), &mut st) == 0 && st.f_flag & libc::ST_RDONLY != 0
    }
}

/// Makes `path` read-only for this process: a private mount namespace (once per process, while
/// it is still single-threaded) with a read-only bind mount of `path` on itself.
fn bind_read_only(path: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::sync::OnceLock;
    // The errno of the first attempt, if it failed: a failed namespace must never be followed
    // by bind mounts in the host's namespace.
    static PRIVATE_NS: OnceLock<Option<i32>> = OnceLock::new();
    let errno = *PRIVATE_NS.get_or_init(|| {
        // SAFETY: unshare and mount take valid arguments; results are checked.
        let failed = unsafe {
            libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
        };
        failed.then(|| {
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EPERM)
        })
    });
    if let Some(e) = errno {
        return Err(std::io::Error::from_raw_os_error(e));
    }
    let p = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: `p` is a valid NUL-terminated path; flags are valid mount flags.
    unsafe {
        if libc::mount(
            p.as_ptr(),
            p.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
        if libc::mount(
            std::ptr::null(),
            p.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `--fs tag=TAG,path=DIR[,cache=never|auto|always][,ro][,xattr=all]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsConfig {
    pub tag: String,
    pub path: PathBuf,
    pub cache: CacheMode,
    /// Enforced on the host: the directory is served from a read-only bind mount, so even a
    /// guest that remounts its side read-write gets EROFS.
    pub read_only: bool,
    /// `xattr=all`: the guest may also set `security.*` and `trusted.*` xattrs (refused by
    /// default, see `policy`). For a directory that is the guest's alone.
    pub all_xattrs: bool,
}

impl std::str::FromStr for FsConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut tag, mut path, mut cache, mut read_only) = (None, None, CacheMode::Auto, false);
        let mut all_xattrs = false;
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("tag", v)) => tag = Some(v.to_string()),
                Some(("path", v)) => path = Some(PathBuf::from(v)),
                Some(("cache", v)) => cache = v.parse()?,
                Some(("xattr", "all")) => all_xattrs = true,
                Some(("xattr", "safe")) => all_xattrs = false,
                None if part == "ro" => read_only = true,
                _ => {
                    return Err(format!(
                        "unknown --fs option {part:?} (tag=, path=, cache=, ro, xattr=safe|all)"
                    ))
                }
            }
        }
        Ok(FsConfig {
            tag: tag.ok_or("--fs needs tag=TAG")?,
            path: path.ok_or("--fs needs path=DIR")?,
            cache,
            read_only,
            all_xattrs,
        })
    }
}

type FsServer = Server<Arc<PassthroughFs<()>>>;

pub struct Fs {
    tag: String,
    config: [u8; TAG_LEN + 4],
    all_xattrs: bool,
    server: Arc<FsServer>,
    queue_evts: QueueEvents,
    state: DeviceState<Worker<FsHandler>>,
}

impl Fs {
    pub fn new(cfg: &FsConfig) -> Result<Self, FsError> {
        if cfg.tag.is_empty() || cfg.tag.len() > TAG_LEN {
            return Err(FsError::Tag(cfg.tag.clone()));
        }
        if !cfg.path.is_dir() {
            return Err(FsError::NotADirectory(cfg.path.clone()));
        }
        let passthrough = |e| FsError::Passthrough(cfg.path.clone(), e);
        // The jail already binds a read-only share read-only (its whole tree); without the
        // jail, a private read-only bind does it.
        if cfg.read_only && !on_read_only_mount(&cfg.path) {
            bind_read_only(&cfg.path).map_err(|e| FsError::ReadOnly(cfg.path.clone(), e))?;
        }
        let timeout = match cfg.cache {
            CacheMode::Never => Duration::ZERO,
            _ => Duration::from_secs(1),
        };
        let fs = PassthroughFs::<()>::new(Config {
            root_dir: cfg.path.to_string_lossy().into_owned(),
            cache_policy: match cfg.cache {
                CacheMode::Never => CachePolicy::Never,
                CacheMode::Auto => CachePolicy::Auto,
                CacheMode::Always => CachePolicy::Always,
            },
            attr_timeout: timeout,
            entry_timeout: timeout,
            xattr: true,
            do_import: true,
            ..Default::default()
        })
        .map_err(passthrough)?;
        fs.import().map_err(passthrough)?;

        // struct virtio_fs_config { u8 tag[36]; le32 num_request_queues; }
        let mut config = [0u8; TAG_LEN + 4];
        config[..cfg.tag.len()].copy_from_slice(cfg.tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        Ok(Fs {
            tag: cfg.tag.clone(),
            config,
            all_xattrs: cfg.all_xattrs,
            server: Arc::new(Server::new(Arc::new(fs))),
            queue_evts: QueueEvents::new(QUEUE_SIZES.len()).map_err(passthrough)?,
            state: DeviceState::Inactive,
        })
    }

    /// What serves the queues once the device is activated. Public for the fuzz targets, which
    /// drive it through [`EventHandler`] on their own thread.
    #[doc(hidden)]
    pub fn handler(
        &self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
    ) -> std::io::Result<FsHandler> {
        Ok(FsHandler {
            tag: self.tag.clone(),
            out_of_files: 0,
            mem,
            interrupt,
            queues,
            server: self.server.clone(),
            all_xattrs: self.all_xattrs,
            queue_evts: self.queue_evts.try_clone()?,
        })
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
        _acked_features: u64,
    ) -> Result<(), ActivateError> {
        if self.state.is_activated() {
            return Err(ActivateError::AlreadyActive(NAME));
        }
        let handler = self
            .handler(mem, interrupt, queues)
            .map_err(|e| ActivateError::Device(NAME, e))?;
        let worker = Worker::spawn(NAME, handler).map_err(|e| ActivateError::Worker(NAME, e))?;
        self.state = DeviceState::Activated(worker);
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        if self.state.is_activated() {
            self.queue_evts.notify(index);
        }
    }

    fn reset(&mut self) {
        self.state.stop_worker();
        self.queue_evts.clear();
    }

    fn shutdown(&mut self) {
        self.state.shut_down_worker();
    }
}

/// The activated device, on its worker thread.
#[doc(hidden)]
pub struct FsHandler {
    tag: String,
    /// Requests that failed because the VMM's file budget was used up.
    out_of_files: u64,
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    server: Arc<FsServer>,
    all_xattrs: bool,
    queue_evts: QueueEvents,
}

impl EventHandler for FsHandler {
    fn register(&mut self, interest: &Interest<'_>) -> Result<(), WorkerError> {
        self.queue_evts.register(interest)
    }

    fn handle_event(&mut self, token: u64, _events: EventSet) -> Result<(), WorkerError> {
        if let Some(q) = self.queue_evts.consume(token) {
            self.process(q);
        }
        Ok(())
    }
}

impl FsHandler {
    /// Serves every request queued on queue `q`.
    fn process(&mut self, q: usize) {
        let Some(queue) = self.queues.get_mut(q) else {
            return;
        };
        let (mem, server, all_xattrs) = (&self.mem, &self.server, self.all_xattrs);
        let (tag, out_of_files) = (&self.tag, &mut self.out_of_files);
        queue::drain(queue, mem, &self.interrupt, |chain| {
            let reply = first_writable(&chain);
            let used = serve(server, mem, chain, all_xattrs);
            if reply.is_some_and(|r| reply_errno(mem, r, used) == Some(libc::EMFILE)) {
                *out_of_files += 1;
                // The first time, then every 1000th: the guest decides how often.
                if *out_of_files % 1000 == 1 {
                    tracing::warn!(
                        share = %tag,
                        failed = *out_of_files,
                        "virtio-fs: the guest holds as many host files as the VMM's budget \
                         allows (RLIMIT_NOFILE); its lookups and opens fail with EMFILE until it \
                         forgets some inodes"
                    );
                }
            }
            Completion::Used(used)
        });
    }
}

/// Where the reply of `chain` begins in guest memory.
fn first_writable(chain: &DescriptorChain<&GuestMemory>) -> Option<vm_memory::GuestAddress> {
    chain.clone().find(|d| d.is_write_only()).map(|d| d.addr())
}

/// The errno of a FUSE error reply (`struct fuse_out_header { u32 len; i32 error; u64 unique }`)
/// written at `at`, for the log only: the guest can change it under us.
fn reply_errno(mem: &GuestMemory, at: vm_memory::GuestAddress, used: u32) -> Option<i32> {
    use vm_memory::{Address, Bytes};
    if used < 16 {
        return None;
    }
    let error: i32 = mem.read_obj(at.checked_add(4)?).ok()?;
    (error < 0).then_some(-error)
}

/// Serves one FUSE request and returns how many reply bytes were written. A malformed request
/// gets a FUSE error reply or, if even that is impossible, is returned with nothing written.
fn serve(
    server: &FsServer,
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    all_xattrs: bool,
) -> u32 {
    // The request is read from guest memory once, into a copy that both the policy and the
    // server read: a guest vCPU rewriting it between the two cannot get past the policy.
    let Some(mut request) = copy_request(mem, &chain) else {
        tracing::debug!("virtio-fs: bad or oversized request chain");
        return 0;
    };
    let refused = Reader::from_fuse_buffer(FuseBuf::new(&mut request))
        .ok()
        .and_then(|r| policy::refusal(r, all_xattrs));
    if let Some((unique, errno)) = refused {
        tracing::debug!(unique, errno, "virtio-fs: request refused by policy");
        return match VirtioFsWriter::new(mem, chain) {
            Ok(mut w) => match w.write_obj(policy::error_reply(unique, errno)) {
                Ok(()) => w.bytes_written() as u32,
                Err(_) => 0,
            },
            Err(_) => 0,
        };
    }
    let reader = Reader::from_fuse_buffer(FuseBuf::new(&mut request));
    let writer = VirtioFsWriter::new(mem, chain);
    match (reader, writer) {
        (Ok(r), Ok(w)) => match server.handle_message(r, w.into(), None, None) {
            Ok(n) => n as u32,
            Err(e) => {
                tracing::debug!(error = %e, "virtio-fs: request failed");
                0
            }
        },
        _ => {
            tracing::debug!("virtio-fs: bad descriptor chain");
            0
        }
    }
}

/// The longest request we copy: a WRITE of the largest size we offer the guest (1 MiB, the
/// server's `max_write`) with room to spare for its headers.
const REQUEST_MAX: usize = (1 << 20) + (64 << 10);

/// The readable part of `chain` (the request), copied out of guest memory; `None` for a chain
/// longer than [`REQUEST_MAX`] or with a descriptor outside guest memory.
fn copy_request(mem: &GuestMemory, chain: &DescriptorChain<&GuestMemory>) -> Option<Vec<u8>> {
    use vm_memory::Bytes;
    let mut len = 0usize;
    let readable: Vec<_> = chain
        .clone()
        .take_while(|d| !d.is_write_only())
        .map(|d| (d.addr(), d.len() as usize))
        .collect();
    for (_, n) in &readable {
        len = len.checked_add(*n).filter(|&l| l <= REQUEST_MAX)?;
    }
    let mut copy = vec![0u8; len];
    let mut at = 0;
    for (addr, n) in readable {
        mem.read_slice(&mut copy[at..at + n], addr).ok()?;
        at += n;
    }
    Some(copy)
}

/// A name the kernel accepts as a virtio-fs tag for `path`.
pub fn default_tag(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.chars().take(TAG_LEN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_option_parsing() {
        let c: FsConfig = "tag=data,path=/srv/x,cache=never".parse().unwrap();
        assert_eq!(
            c,
            FsConfig {
                tag: "data".into(),
                path: "/srv/x".into(),
                cache: CacheMode::Never,
                read_only: false,
                all_xattrs: false,
            }
        );
        let c: FsConfig = "tag=t,path=/a,ro".parse().unwrap();
        assert!(c.read_only);
        assert!(!c.all_xattrs);
        let c: FsConfig = "tag=t,path=/a,xattr=all".parse().unwrap();
        assert!(c.all_xattrs);
        assert!("tag=t,path=/a,xattr=some".parse::<FsConfig>().is_err());
        let c: FsConfig = "path=/a,tag=t".parse().unwrap();
        assert_eq!(c.cache, CacheMode::Auto);
        assert!("tag=t".parse::<FsConfig>().is_err());
        assert!("path=/a".parse::<FsConfig>().is_err());
        assert!("tag=t,path=/a,cache=sometimes".parse::<FsConfig>().is_err());
        assert!("tag=t,path=/a,dax=on".parse::<FsConfig>().is_err());
    }

    #[test]
    fn config_space_holds_tag_and_one_request_queue() {
        let dir = std::env::temp_dir();
        let fs = Fs::new(&FsConfig {
            tag: "kataShared".into(),
            path: dir,
            cache: CacheMode::Auto,
            read_only: false,
            all_xattrs: false,
        })
        .unwrap();
        let mut tag = [0u8; 36];
        fs.read_config(0, &mut tag);
        assert_eq!(&tag[..10], b"kataShared");
        assert!(tag[10..].iter().all(|&b| b == 0));
        let mut n = [0u8; 4];
        fs.read_config(36, &mut n);
        assert_eq!(u32::from_le_bytes(n), 1);
    }

    /// Queues one request chain (a readable part, then `reply_room` writable bytes), lets the
    /// handler serve it, and returns the length it reported as written.
    fn serve_one(request: &[u8], reply_room: u32) -> u32 {
        use virtio_queue::desc::{split::Descriptor, RawDescriptor};
        use virtio_queue::mock::MockSplitQueue;
        use vm_memory::{Bytes, GuestAddress};

        let mem = crate::vstate::memory::create(1 << 20).unwrap();
        mem.write_slice(request, GuestAddress(0x8000)).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let mut descs = vec![RawDescriptor::from(Descriptor::new(
            0x8000,
            request.len() as u32,
            0,
            0,
        ))];
        if reply_room > 0 {
            descs.push(RawDescriptor::from(Descriptor::new(
                0x9000, reply_room, 2, 0,
            )));
        }
        vq.build_desc_chain(&descs).unwrap();
        let fs = Fs::new(&FsConfig {
            tag: "t".into(),
            path: std::env::temp_dir(),
            cache: CacheMode::Auto,
            read_only: false,
            all_xattrs: false,
        })
        .unwrap();
        let irq = Arc::new(Interrupt::new(
            vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ));
        let mut handler = FsHandler {
            tag: "t".into(),
            out_of_files: 0,
            mem: mem.clone(),
            interrupt: irq,
            queues: vec![vq.create_queue().unwrap(), vq.create_queue().unwrap()],
            server: fs.server.clone(),
            all_xattrs: false,
            queue_evts: QueueEvents::new(QUEUE_SIZES.len()).unwrap(),
        };
        handler.process(0);
        vq.used().ring().ref_at(0).unwrap().load().len()
    }

    #[test]
    fn an_error_reply_is_read_back_for_the_log() {
        use vm_memory::{Address, Bytes, GuestAddress};
        let mem = crate::vstate::memory::create(1 << 20).unwrap();
        let at = GuestAddress(0x1000);
        // struct fuse_out_header { u32 len; i32 error; u64 unique }
        mem.write_obj(16u32, at).unwrap();
        mem.write_obj(-libc::EMFILE, at.unchecked_add(4)).unwrap();
        assert_eq!(reply_errno(&mem, at, 16), Some(libc::EMFILE));
        // A short reply has no header; a success has error 0.
        assert_eq!(reply_errno(&mem, at, 8), None);
        mem.write_obj(0i32, at.unchecked_add(4)).unwrap();
        assert_eq!(reply_errno(&mem, at, 16), None);
    }

    #[test]
    fn truncated_request_is_answered_without_a_reply() {
        // Fewer bytes than a FUSE in-header (40 bytes).
        assert_eq!(serve_one(&[1, 2, 3], 4096), 0);
    }

    #[test]
    fn header_claiming_more_than_was_sent_gets_an_error_reply_or_nothing() {
        // A LOOKUP (opcode 1) whose header says 4 KiB but carries no name.
        let mut req = vec![0u8; 40];
        req[0..4].copy_from_slice(&4096u32.to_le_bytes());
        req[4..8].copy_from_slice(&1u32.to_le_bytes());
        req[16..24].copy_from_slice(&1u64.to_le_bytes());
        let written = serve_one(&req, 4096);
        // Either nothing, or a 16-byte FUSE error header.
        assert!(written == 0 || written == 16, "wrote {written}");
    }

    #[test]
    fn request_without_room_for_a_reply_is_survived() {
        let mut req = vec![0u8; 40];
        req[0..4].copy_from_slice(&40u32.to_le_bytes());
        req[4..8].copy_from_slice(&3u32.to_le_bytes()); // GETATTR
        req[16..24].copy_from_slice(&1u64.to_le_bytes());
        assert_eq!(serve_one(&req, 0), 0);
    }

    #[test]
    fn bad_tag_and_missing_directory_are_refused() {
        let long = "x".repeat(37);
        assert!(matches!(
            Fs::new(&FsConfig {
                tag: long,
                path: "/".into(),
                cache: CacheMode::Auto,
                read_only: false,
                all_xattrs: false,
            }),
            Err(FsError::Tag(_))
        ));
        assert!(matches!(
            Fs::new(&FsConfig {
                tag: "t".into(),
                path: "/nonexistent/dir".into(),
                cache: CacheMode::Auto,
                read_only: false,
                all_xattrs: false,
            }),
            Err(FsError::NotADirectory(_))
        ));
    }
}
