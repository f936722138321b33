//! The pod's network namespace: opening it, running work inside it, finding who else is in it.
//!
//! `setns(CLONE_NEWNET)` changes the namespace of the calling thread only, so work in the pod's
//! namespace runs on a short-lived thread that enters it, opens its sockets and devices there
//! and exits (`husk_netlink::netns`). The caller's thread never moves.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::NetworkError;

/// A network namespace file (`/var/run/netns/x`, `/proc/PID/ns/net`), checked to be one.
pub(super) struct Namespace {
    file: File,
}

/// Identity of a namespace: device and inode of its nsfs file (never its path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NamespaceId {
    dev: u64,
    ino: u64,
}

impl Namespace {
    pub fn open(path: &Path) -> Result<Self, NetworkError> {
        let file = File::open(path).map_err(|source| NetworkError::OpenNamespace {
            netns: path.to_path_buf(),
            source,
        })?;
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor, which `file`
        // keeps open for the call.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
        if kind != libc::CLONE_NEWNET {
            return Err(NetworkError::NotNetworkNamespace {
                netns: path.to_path_buf(),
            });
        }
        Ok(Self { file })
    }

    pub fn id(&self) -> io::Result<NamespaceId> {
        let meta = self.file.metadata()?;
        Ok(NamespaceId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// Runs `work` on a new thread that has entered the namespace at `path`.
pub(super) fn run_in<T, F>(path: &Path, work: F) -> Result<T, NetworkError>
where
    T: Send,
    F: FnOnce() -> Result<T, NetworkError> + Send,
{
    let ns = Namespace::open(path)?;
    // The worker's logs belong to the caller's span (sandbox, interface): run_in enters it.
    husk_netlink::netns::run_in(ns.file.as_fd(), work).map_err(|source| {
        NetworkError::EnterNamespace {
            netns: path.to_path_buf(),
            source,
        }
    })?
}

/// Processes other than this one with at least one thread in namespace `id`.
///
/// Walks `/proc/PID/task/TID/ns/net`, since a thread can be in another namespace than its
/// process's leader. Processes and threads that end during the walk are skipped.
pub(super) fn processes_in(id: NamespaceId) -> io::Result<Vec<u32>> {
    let me = std::process::id();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        let inside = tasks.flatten().any(|task| {
            std::fs::metadata(task.path().join("ns/net")).is_ok_and(|m| {
                NamespaceId {
                    dev: m.dev(),
                    ino: m.ino(),
                } == id
            })
        });
        if inside {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}
