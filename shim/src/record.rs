//! The sandbox record: what the shim created on the host for a sandbox (its cgroup, its VMM, each
//! container's mount targets), in `state.json` of the sandbox directory, which the guest never
//! sees. Every cleanup, the shim's own and containerd's `delete` after a shim crash, works from
//! this record. Writes are atomic (a new file renamed over the old) and serialised by a lock on
//! the sandbox directory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE: &str = "state.json";

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("Cannot {what} the sandbox record {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("The sandbox record {0} is damaged")]
    Damaged(PathBuf, #[source] serde_json::Error),
}

/// Which process the VMM is: a pid alone may have been reused by the time a cleanup runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: i32,
    /// Clock ticks after boot at which it started (`/proc/PID/stat`, field 22).
    pub start_time: u64,
}

impl ProcessIdentity {
    pub fn of(pid: u32) -> Option<ProcessIdentity> {
        let pid = i32::try_from(pid).ok()?;
        Some(ProcessIdentity {
            pid,
            start_time: start_time(pid)?,
        })
    }

    /// Kills the process if it is still the one recorded. Through a pidfd: once open, it names
    /// that process whatever happens to the pid number.
    pub fn kill(&self) {
        // SAFETY: pidfd_open takes a pid and flags; the result is checked.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
        if fd < 0 {
            return;
        }
        let fd = fd as i32;
        if start_time(self.pid) == Some(self.start_time) {
            // SAFETY: a pidfd we own, a signal number, no siginfo.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd,
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        }
        // SAFETY: closing the descriptor pidfd_open gave us.
        unsafe { libc::close(fd) };
    }
}

fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxRecord {
    /// The sandbox cgroup, relative to the hierarchy's root.
    pub cgroup: Option<String>,
    pub vmm: Option<ProcessIdentity>,
    /// Each container's mount targets, relative to the sandbox directory, in mount order.
    pub containers: BTreeMap<String, Vec<String>>,
    /// The taps and tc filters we added in the pod's network namespace.
    #[serde(default)]
    pub network: Vec<crate::network::AttachedInterface>,
}

/// A sandbox directory's record, locked while it is read and changed.
pub struct Record {
    dir: PathBuf,
}

impl Record {
    pub fn new(dir: &Path) -> Record {
        Record {
            dir: dir.to_path_buf(),
        }
    }

    fn io(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> RecordError + '_ {
        move |source| RecordError::Io {
            what,
            path: self.dir.join(FILE),
            source,
        }
    }

    fn lock(&self) -> Result<File, RecordError> {
        let dir = File::open(&self.dir).map_err(self.io("lock"))?;
        // SAFETY: flock on a descriptor we own; released when it is closed.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(self.io("lock")(std::io::Error::last_os_error()));
        }
        Ok(dir)
    }

    fn read(&self) -> Result<SandboxRecord, RecordError> {
        match std::fs::read(self.dir.join(FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| RecordError::Damaged(self.dir.join(FILE), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SandboxRecord::default()),
            Err(e) => Err(self.io("read")(e)),
        }
    }

    pub fn load(&self) -> Result<SandboxRecord, RecordError> {
        let _lock = self.lock()?;
        self.read()
    }

    /// Applies `change` to the record and writes it back.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut SandboxRecord) -> T,
    ) -> Result<T, RecordError> {
        let _lock = self.lock()?;
        let mut rec = self.read()?;
        let out = change(&mut rec);
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let bytes = serde_json::to_vec(&rec).expect("the record serialises");
        File::create(&tmp)
            .and_then(|mut f| f.write_all(&bytes).and_then(|_| f.sync_data()))
            .and_then(|_| std::fs::rename(&tmp, self.dir.join(FILE)))
            .map_err(self.io("write"))?;
        Ok(out)
    }

    pub fn file_name() -> &'static str {
        FILE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_survive_a_reload() {
        let dir = std::env::temp_dir().join(format!("husk-record-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let r = Record::new(&dir);
        assert_eq!(r.load().unwrap(), SandboxRecord::default());
        r.update(|rec| {
            rec.cgroup = Some("husk/x".into());
            rec.containers
                .entry("c1".into())
                .or_default()
                .push("mounts/c1/rootfs".into());
        })
        .unwrap();
        let back = Record::new(&dir).load().unwrap();
        assert_eq!(back.cgroup.as_deref(), Some("husk/x"));
        assert_eq!(back.containers["c1"], vec!["mounts/c1/rootfs".to_string()]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_process_is_known_by_its_start_time() {
        let me = ProcessIdentity::of(std::process::id()).unwrap();
        assert_eq!(me.pid as u32, std::process::id());
        assert_eq!(ProcessIdentity::of(std::process::id()), Some(me));
        // A different start time is a different process: kill leaves it alone.
        let other = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me
        };
        other.kill();
    }
}
