//! The host side of a virtio-net device: a Linux tap opened `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`,
//! so that every frame read from it or written to it starts with a virtio-net header (12 bytes,
//! the VERSION_1 layout). The header carries the offloads both ways: a guest's TSO super-frame or
//! partially checksummed frame goes to the host kernel as such, and the tap hands us unfinished
//! frames only of the kinds the guest said it takes ([`offload_flags`], `TUNSETOFFLOAD`).

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::raw::{c_int, c_short, c_uint, c_ulong};
use std::os::unix::fs::OpenOptionsExt;

use virtio_bindings::virtio_net::{
    virtio_net_hdr_v1, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO,
};
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};

/// The virtio-net header in front of every frame (`struct virtio_net_hdr_v1`).
pub const VNET_HDR_LEN: usize = std::mem::size_of::<virtio_net_hdr_v1>();
/// The longest frame either way: a 64 KiB IP packet (a TSO super-frame is no longer) behind an
/// Ethernet header with a VLAN tag.
pub const MAX_FRAME_LEN: usize = 65_536 + 18;
/// A frame with its header: the one frame the device holds, and the most a TX chain may carry.
pub const MAX_BUFFER_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;

const TAP_FLAGS: c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("Cannot open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    #[error("Cannot attach to tap {0}")]
    Attach(String, #[source] io::Error),
    #[error("Cannot duplicate tap descriptor {0}")]
    Dup(RawFd, #[source] io::Error),
    #[error("{0} is not a tap")]
    NotATap(String, #[source] io::Error),
    #[error(
        "Tap {name} was opened without {missing}: open it with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR"
    )]
    Flags { name: String, missing: &'static str },
    #[error("Cannot make tap {0} non-blocking")]
    NonBlocking(String, #[source] io::Error),
    #[error("Cannot set the virtio-net header size of tap {0}")]
    VnetHdr(String, #[source] io::Error),
}

/// An open, non-blocking tap whose frames carry a [`VNET_HDR_LEN`]-byte virtio-net header.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to tap `name` in our network namespace, creating it if there is none.
    pub fn open(name: &str) -> Result<Self, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = ifreq_named(name)
            .ok_or_else(|| TapError::Attach(name.into(), io::ErrorKind::InvalidInput.into()))?;
        req.ifr_ifru.ifru_flags = TAP_FLAGS as c_short;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is.
        if unsafe { ioctl_with_mut_ref(&file, libc::TUNSETIFF, &mut req) } < 0 {
            return Err(TapError::Attach(name.into(), io::Error::last_os_error()));
        }
        Self::checked(file, name)
    }

    /// Uses a duplicate of the inherited tap descriptor `fd`, which must have been opened with
    /// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`. The file becomes non-blocking (a status flag that the
    /// descriptor's other holders see too).
    pub fn from_fd(fd: RawFd) -> Result<Self, TapError> {
        // SAFETY: F_DUPFD_CLOEXEC takes any number: it fails, or returns a new descriptor.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        if dup < 0 {
            return Err(TapError::Dup(fd, io::Error::last_os_error()));
        }
        // SAFETY: a descriptor we just created and nothing else owns.
        let file = unsafe { File::from_raw_fd(dup) };
        let label = format!("fd={fd}");
        // SAFETY: F_GETFL and F_SETFL read and set the status flags of our own descriptor.
        let set = unsafe {
            let flags = libc::fcntl(dup, libc::F_GETFL);
            flags >= 0 && libc::fcntl(dup, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
        };
        if !set {
            return Err(TapError::NonBlocking(label, io::Error::last_os_error()));
        }
        Self::checked(file, &label)
    }

    /// Checks that `file` is a tap with our flags (learning its name) and sets its header size.
    fn checked(file: File, label: &str) -> Result<Self, TapError> {
        // SAFETY: an all-zero ifreq is a valid value of this plain C struct.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes one ifreq, which `req` is.
        if unsafe { ioctl_with_mut_ref(&file, libc::TUNGETIFF, &mut req) } < 0 {
            return Err(TapError::NotATap(label.into(), io::Error::last_os_error()));
        }
        let name = ifreq_name(&req);
        // SAFETY: TUNGETIFF fills in the flags member of the union.
        let flags = c_int::from(unsafe { req.ifr_ifru.ifru_flags }) & 0xffff;
        let missing = [
            (libc::IFF_TAP, "IFF_TAP"),
            (libc::IFF_NO_PI, "IFF_NO_PI"),
            (libc::IFF_VNET_HDR, "IFF_VNET_HDR"),
        ]
        .into_iter()
        .find(|(flag, _)| flags & flag == 0);
        if let Some((_, missing)) = missing {
            return Err(TapError::Flags { name, missing });
        }
        let size = VNET_HDR_LEN as c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int, which `size` is.
        if unsafe { ioctl_with_ref(&file, libc::TUNSETVNETHDRSZ, &size) } < 0 {
            return Err(TapError::VnetHdr(name, io::Error::last_os_error()));
        }
        Ok(Tap { file, name })
    }

    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Tap {
            file: self.file.try_clone()?,
            name: self.name.clone(),
        })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the tap which unfinished frames it may hand us (`TUN_F_*` flags).
    pub fn set_offload(&self, flags: c_uint) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its flags by value and touches no memory of ours.
        if unsafe { ioctl_with_val(&self.file, libc::TUNSETOFFLOAD, c_ulong::from(flags)) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads one frame with its header into `buf`; `WouldBlock` when there is none.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes the header and frame gathered from `iovs` as one frame.
    ///
    /// # Safety
    ///
    /// Every iovec must describe memory that stays mapped and readable during the call.
    pub unsafe fn write_frame(&self, iovs: &[libc::iovec]) -> io::Result<usize> {
        let count = c_int::try_from(iovs.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: the caller vouches for the iovecs; writev only reads through them.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iovs.as_ptr(), count) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// The `TUNSETOFFLOAD` flags for a driver that acked `features`: the tap may hand it frames with
/// a partial checksum only if it took VIRTIO_NET_F_GUEST_CSUM, and super-frames of a kind only if
/// it took that kind too (the kernel refuses TSO or UFO without the checksum offload as well).
pub fn offload_flags(features: u64) -> c_uint {
    let acked = |bit: u32| features & (1u64 << bit) != 0;
    if !acked(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    [
        (VIRTIO_NET_F_GUEST_TSO4, libc::TUN_F_TSO4),
        (VIRTIO_NET_F_GUEST_TSO6, libc::TUN_F_TSO6),
        (VIRTIO_NET_F_GUEST_UFO, libc::TUN_F_UFO),
    ]
    .into_iter()
    .filter(|&(bit, _)| acked(bit))
    .fold(libc::TUN_F_CSUM, |flags, (_, flag)| flags | flag)
}

/// An ifreq naming `name`, or `None` if the name does not fit.
pub(super) fn ifreq_named(name: &str) -> Option<libc::ifreq> {
    // SAFETY: an all-zero ifreq is a valid value of this plain C struct.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // The last byte stays NUL.
    if name.is_empty() || name.len() >= req.ifr_name.len() || name.contains('\0') {
        return None;
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Some(req)
}

fn ifreq_name(req: &libc::ifreq) -> String {
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;

    use super::super::test_utils::{tap_name, taps_usable};
    use super::*;

    fn bit(b: u32) -> u64 {
        1 << b
    }

    #[test]
    fn offloads_follow_what_the_guest_takes() {
        let tso = bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO6);
        assert_eq!(offload_flags(0), 0);
        assert_eq!(
            offload_flags(tso | bit(VIRTIO_NET_F_MRG_RXBUF)),
            0,
            "no TSO without csum"
        );
        assert_eq!(
            offload_flags(bit(VIRTIO_NET_F_GUEST_CSUM)),
            libc::TUN_F_CSUM
        );
        let all = tso | bit(VIRTIO_NET_F_GUEST_UFO) | bit(VIRTIO_NET_F_GUEST_CSUM);
        assert_eq!(
            offload_flags(all),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO
        );
    }

    #[test]
    fn overlong_names_do_not_fit_an_ifreq() {
        assert!(ifreq_named("").is_none());
        assert!(ifreq_named("sixteen-bytes-xx").is_none());
        let req = ifreq_named("fifteen-bytes-x").unwrap();
        assert_eq!(ifreq_name(&req), "fifteen-bytes-x");
    }

    fn vnet_hdr_size(tap: &Tap) -> c_int {
        let mut size: c_int = 0;
        // SAFETY: TUNGETVNETHDRSZ writes one int.
        let r = unsafe { ioctl_with_mut_ref(&tap.file, libc::TUNGETVNETHDRSZ, &mut size) };
        assert_eq!(r, 0);
        size
    }

    #[test]
    fn a_tap_opened_by_name_or_descriptor_has_the_header_and_no_blocking() {
        if !taps_usable() {
            return;
        }
        let name = tap_name();
        let tap = Tap::open(&name).unwrap();
        assert_eq!(tap.name(), name);
        assert_eq!(vnet_hdr_size(&tap), VNET_HDR_LEN as c_int);
        let mut buf = [0u8; 64];
        assert_eq!(
            tap.read_frame(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        tap.set_offload(offload_flags(u64::MAX)).unwrap();

        let by_fd = Tap::from_fd(tap.as_raw_fd()).unwrap();
        assert_eq!(by_fd.name(), name);
        assert_ne!(
            by_fd.as_raw_fd(),
            tap.as_raw_fd(),
            "a duplicate, not the inherited fd"
        );
        // SAFETY: F_GETFD reads our own descriptor's flags.
        assert!(unsafe { libc::fcntl(by_fd.as_raw_fd(), libc::F_GETFD) } & libc::FD_CLOEXEC != 0);
    }

    #[test]
    fn descriptors_that_are_no_tap_of_ours_are_refused() {
        let null = File::open("/dev/null").unwrap();
        let e = Tap::from_fd(null.as_raw_fd()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("fd={} is not a tap", null.as_raw_fd())
        );
        assert!(matches!(
            Tap::from_fd(999_999),
            Err(TapError::Dup(999_999, _))
        ));
        if !taps_usable() {
            return;
        }
        // A tap without the virtio-net header.
        let tun = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .unwrap();
        let name = tap_name();
        let mut req = ifreq_named(&name).unwrap();
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as c_short;
        // SAFETY: TUNSETIFF reads and writes one ifreq.
        let r = unsafe { ioctl_with_mut_ref(&tun, libc::TUNSETIFF, &mut req) };
        assert_eq!(r, 0);
        let e = Tap::from_fd(tun.as_raw_fd()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "Tap {name} was opened without IFF_VNET_HDR: open it with IFF_TAP | IFF_NO_PI | \
                 IFF_VNET_HDR"
            )
        );
    }
}
