//! Real taps for the tests. Each test creates its own (root and /dev/net/tun needed; without
//! them the test prints why and passes), not persistent, so it vanishes with its last
//! descriptor even when the test fails. Frames reach the device through a packet socket that
//! sends on the tap; what the device writes is caught by another one.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::tap::{ifreq_named, Tap, VNET_HDR_LEN};

/// The EtherType of the tests' frames (IEEE 802 local experimental): anything else the tap
/// carries is ignored.
pub const TEST_ETHERTYPE: u16 = 0x88b5;
/// `sll_pkttype` of a frame the tap sent rather than received.
const PACKET_OUTGOING: u8 = 4;

/// Whether tap tests can run here; prints why not.
pub fn taps_usable() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: tap tests need root");
        return false;
    }
    if !Path::new("/dev/net/tun").exists() {
        eprintln!("skipped: there is no /dev/net/tun");
        return false;
    }
    true
}

/// A tap name no other test (of this process or another) uses.
pub fn tap_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "hkt{}n{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// An Ethernet frame of the tests' type, broadcast, with `payload` bytes patterned by `seed`.
pub fn test_frame(payload: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend([0x02, 0, 0, 0, 0, seed]);
    f.extend(TEST_ETHERTYPE.to_be_bytes());
    f.extend((0..payload).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

/// The frame as a guest sends it: an all-zero virtio-net header first.
pub fn with_header(frame: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; VNET_HDR_LEN];
    v.extend_from_slice(frame);
    v
}

/// A tap, up, with IPv6 off so that the kernel sends nothing on it by itself, and two packet
/// sockets bound to it.
pub struct TestTap {
    pub tap: Tap,
    capture: OwnedFd,
    inject: OwnedFd,
}

impl TestTap {
    pub fn new() -> Option<Self> {
        if !taps_usable() {
            return None;
        }
        let tap = Tap::open(&tap_name()).expect("create a test tap");
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", tap.name()),
            "1",
        );
        set_up(tap.name());
        let ifindex = if_index(tap.name());
        Some(TestTap {
            capture: packet_socket(ifindex, libc::ETH_P_ALL as u16),
            inject: packet_socket(ifindex, 0),
            tap,
        })
    }

    /// The descriptor frames are injected through, for a child that may only `write`.
    pub fn inject_fd(&self) -> RawFd {
        self.inject.as_raw_fd()
    }

    /// Sends `frame` on the tap's interface: it reaches whoever reads the tap.
    pub fn inject(&self, frame: &[u8]) {
        inject_on(self.inject_fd(), frame);
    }

    /// The next frame of the tests' type that the interface received (that is, that was written
    /// to the tap), waiting at most `timeout`.
    pub fn capture(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 70_000];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if !readable(self.capture.as_raw_fd(), left) {
                return None;
            }
            // SAFETY: an all-zero sockaddr_ll is valid; recvfrom writes at most its size.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut addr_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: recvfrom writes at most `buf.len()` bytes and one sockaddr_ll.
            let n = unsafe {
                libc::recvfrom(
                    self.capture.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut addr as *mut libc::sockaddr_ll).cast(),
                    &mut addr_len,
                )
            };
            let Ok(n) = usize::try_from(n) else {
                return None;
            };
            let frame = &buf[..n];
            if addr.sll_pkttype != PACKET_OUTGOING
                && frame.len() >= 14
                && frame[12..14] == TEST_ETHERTYPE.to_be_bytes()
            {
                return Some(frame.to_vec());
            }
        }
    }
}

/// Writes `frame` to a packet socket bound to the tap (a plain `write`, which a filtered child
/// may make).
pub fn inject_on(fd: RawFd, frame: &[u8]) {
    // SAFETY: write reads `frame.len()` bytes of `frame`.
    let n = unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
    assert_eq!(
        n,
        frame.len() as isize,
        "inject: {}",
        std::io::Error::last_os_error()
    );
}

/// Waits at most `timeout` for `fd` to be readable.
pub fn readable(fd: RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: polls one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

fn set_up(name: &str) {
    // SAFETY: a datagram socket for interface ioctls; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: a descriptor we just created.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = ifreq_named(name).unwrap();
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write one ifreq; the flags member is the
    // one they use.
    unsafe {
        assert_eq!(
            libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req),
            0
        );
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req), 0);
    }
}

fn if_index(name: &str) -> i32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(index, 0, "no interface {name}");
    index as i32
}

/// A raw packet socket bound to interface `ifindex` for `protocol` (0: send only).
fn packet_socket(ifindex: i32, protocol: u16) -> OwnedFd {
    let proto = protocol.to_be();
    // SAFETY: creates a socket; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a descriptor we just created.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_ll is valid; we fill in what bind needs.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex;
    // SAFETY: binds to one valid sockaddr_ll of the size given.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
    sock
}
