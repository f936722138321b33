//! The tap the VMM reads and writes: `/dev/net/tun`, opened in the pod's namespace.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// Length of the virtio-net header before each frame read from or written to the tap:
/// `struct virtio_net_hdr_v1` (12 bytes, with `num_buffers`), the layout of a VIRTIO 1.0
/// device, so the VMM can copy it to and from the guest's buffers unchanged.
pub const VNET_HDR_LEN: usize = 12;

/// Creates tap `name` and returns its descriptor (close-on-exec).
///
/// The tap is not persistent: it lives as long as a descriptor of it is open (ours, and
/// husk-vmm's inherited copy), and the kernel deletes it, with its qdiscs, when the last one
/// closes. No owner or group is set, so no one can attach to it by name; only the holders of
/// the descriptor use it. `IFF_TUN_EXCL` makes an existing device of that name an error
/// (`EBUSY`) instead of attaching to it.
///
/// No offloads are enabled (`TUNSETOFFLOAD`): the kernel checksums and segments what it hands
/// to the tap, until the VMM enables the offloads the guest negotiated on this descriptor.
/// One queue (no `IFF_MULTI_QUEUE`).
pub(super) fn create(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid interface name"),
        ));
    }
    let tun: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?
        .into();

    // SAFETY: `ifreq` is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_TUN_EXCL)
            as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `req` is, for the duration of the
    // call; `tun` is an open descriptor of /dev/net/tun.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }

    let len = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which points to `len`.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETVNETHDRSZ, &len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tun)
}

/// Our taps are named `tap<N>_husk`.
pub(super) fn name(n: u32) -> String {
    format!("tap{n}_husk")
}

pub(super) fn is_ours(name: &str) -> bool {
    name.strip_prefix("tap")
        .and_then(|rest| rest.strip_suffix("_husk"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names() {
        assert_eq!(name(0), "tap0_husk");
        assert!(is_ours("tap0_husk"));
        assert!(is_ours("tap12_husk"));
        assert!(!is_ours("tap_husk"));
        assert!(!is_ours("tap0_kata"));
        assert!(!is_ours("tapx_husk"));
        assert!(!is_ours("eth0"));
        assert!(name(super::super::MAX_TAPS - 1).len() < libc::IFNAMSIZ);
    }
}
