//! Work in another network namespace, from a short-lived thread.
//!
//! `setns(CLONE_NEWNET)` changes the namespace of the calling thread only, and a netlink socket
//! talks to the namespace it was created in: a thread that enters the namespace, opens its
//! sockets there, does the work and exits leaves the caller's thread where it was.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Runs `work` on a new thread that has entered the network namespace `ns` (an open
/// `/var/run/netns/x` or `/proc/PID/ns/net`) and returns what it returns. The thread runs in
/// the caller's `tracing` span. Fails if the thread cannot start or cannot enter `ns`; a panic
/// in `work` goes on in the caller.
pub fn run_in<T, F>(ns: BorrowedFd<'_>, work: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let span = tracing::Span::current();
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("husk-netns".into())
            .spawn_scoped(scope, || {
                let _span = span.entered();
                // SAFETY: plain system call on a descriptor the caller keeps open for the
                // whole scope; it changes the network namespace of this (new, short-lived)
                // thread only.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(work())
            })?;
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use crate::test_ns::TestNs;

    fn thread_netns() -> u64 {
        std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
    }

    /// The work runs in the namespace; the caller's thread stays where it was.
    #[test]
    fn work_runs_inside_and_the_caller_stays() {
        let ns = TestNs::new("netns");
        let before = thread_netns();
        let inside = ns.run(thread_netns);
        let expected = std::fs::metadata(format!("/var/run/netns/{}", ns.name))
            .unwrap()
            .ino();
        assert_eq!(inside, expected);
        assert_ne!(inside, before);
        assert_eq!(thread_netns(), before);
    }
}
