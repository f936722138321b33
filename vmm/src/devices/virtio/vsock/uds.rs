//! Connecting to a host listener on behalf of the guest, without waiting for it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Connects a non-blocking stream to the Unix socket at `path`. A listener whose backlog is
/// full refuses at once (`WouldBlock`) where `UnixStream::connect` would block the device's
/// worker until the listener accepts: the guest must not be able to stall the worker by
/// connecting to a host service that is slow to accept. (A Unix stream connect never
/// completes later: it succeeds or fails at once.)
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    // SAFETY: sockaddr_un is plain data, for which all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let bytes = path.as_os_str().as_bytes();
    // The path and its terminating NUL must fit; a NUL inside would cut it short.
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    let addr_len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;

    // SAFETY: socket() takes no pointers; its result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we just created and nothing else owns; `OwnedFd` closes it on
    // every path from here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is an initialised sockaddr_un that outlives the call, and `addr_len` (at
    // most its size, checked above) covers the family and the NUL-terminated path.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
            addr_len as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("husk-uds-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn connects_without_blocking_and_carries_data() {
        let path = dir("ok").join("l.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut s = connect_nonblocking(&path).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        s.write_all(b"hi").unwrap();
        let mut b = [0u8; 2];
        peer.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hi");
        assert_eq!(
            s.read(&mut b).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "the stream is non-blocking"
        );
    }

    #[test]
    fn missing_listener_and_bad_paths_fail() {
        let d = dir("missing");
        assert!(connect_nonblocking(&d.join("none")).is_err());
        let long = d.join("x".repeat(200));
        assert_eq!(
            connect_nonblocking(&long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn a_full_backlog_refuses_at_once() {
        let path = dir("backlog").join("l.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // SAFETY: listen() on a socket we own; calling it again only changes the backlog.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 2) }, 0);
        // Nobody accepts: connections fill the listener's backlog, then are refused.
        let mut kept = Vec::new();
        let refused = loop {
            match connect_nonblocking(&path) {
                Ok(s) => kept.push(s),
                Err(e) => break e,
            }
            assert!(kept.len() < 100, "the backlog never filled");
        };
        assert_eq!(refused.kind(), io::ErrorKind::WouldBlock);
        drop(listener);
    }
}
