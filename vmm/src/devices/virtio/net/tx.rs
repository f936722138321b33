//! Frames from the guest. A TX chain holds a virtio-net header and an Ethernet frame, split
//! over as many device-readable descriptors as the driver likes; the device hands the pieces to
//! the tap in one `writev`, straight from guest memory, after checking every one of them.

use std::marker::PhantomData;

use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory as _;

use super::tap::{Tap, MAX_BUFFER_LEN, VNET_HDR_LEN};
use crate::vstate::memory::GuestMemory;

/// The most descriptors one TX chain may have (Linux uses at most 19); also under `writev`'s
/// limit of 1024.
pub const MAX_TX_DESCRIPTORS: usize = 256;

/// Why a guest frame was not sent. The chain is returned to the guest either way.
#[derive(Debug, thiserror::Error)]
pub enum TxDrop {
    #[error("TX chain has a device-writable descriptor")]
    WriteOnly,
    #[error("TX buffer of {len} bytes at {addr:#x} is not in guest memory")]
    OutOfBounds { addr: u64, len: u32 },
    #[error(
        "TX chain of {0} bytes or more is larger than a frame and its header ({MAX_BUFFER_LEN})"
    )]
    TooLarge(u64),
    #[error("TX chain of {0} bytes is shorter than a virtio-net header")]
    TooShort(u64),
    #[error("TX chain has more than {MAX_TX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    #[error("The tap refused the frame")]
    Tap(#[source] std::io::Error),
}

/// One frame's pieces in guest memory, checked, as `writev` takes them. They point into the
/// guest memory mapping, which outlives `'m`.
pub struct Gathered<'m> {
    iovs: [libc::iovec; MAX_TX_DESCRIPTORS],
    count: usize,
    len: u64,
    _mem: PhantomData<&'m GuestMemory>,
}

impl Gathered<'_> {
    pub fn iovecs(&self) -> &[libc::iovec] {
        &self.iovs[..self.count]
    }

    /// The header and frame's length.
    pub fn len(&self) -> u64 {
        self.len
    }
}

/// Collects the chain's buffers: all device-readable, all in guest memory, at most
/// [`MAX_BUFFER_LEN`] bytes together and at least a header.
pub fn gather<'m>(
    mem: &'m GuestMemory,
    chain: DescriptorChain<&'m GuestMemory>,
) -> Result<Gathered<'m>, TxDrop> {
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut frame = Gathered {
        iovs: [empty; MAX_TX_DESCRIPTORS],
        count: 0,
        len: 0,
        _mem: PhantomData,
    };
    for (i, desc) in chain.enumerate() {
        if i == MAX_TX_DESCRIPTORS {
            return Err(TxDrop::TooManyDescriptors);
        }
        if desc.is_write_only() {
            return Err(TxDrop::WriteOnly);
        }
        frame.len += u64::from(desc.len());
        if frame.len > MAX_BUFFER_LEN as u64 {
            return Err(TxDrop::TooLarge(frame.len));
        }
        if desc.len() == 0 {
            continue;
        }
        let out_of_bounds = || TxDrop::OutOfBounds {
            addr: desc.addr().0,
            len: desc.len(),
        };
        // One contiguous piece of one guest memory region, or an error.
        let slice = mem
            .get_slice(desc.addr(), desc.len() as usize)
            .map_err(|_| out_of_bounds())?;
        frame.iovs[frame.count] = libc::iovec {
            iov_base: slice.ptr_guard().as_ptr() as *mut libc::c_void,
            iov_len: slice.len(),
        };
        frame.count += 1;
    }
    if frame.len < VNET_HDR_LEN as u64 {
        return Err(TxDrop::TooShort(frame.len));
    }
    Ok(frame)
}

/// Sends the chain's frame to the tap.
pub fn send(
    mem: &GuestMemory,
    tap: &Tap,
    chain: DescriptorChain<&GuestMemory>,
) -> Result<(), TxDrop> {
    let frame = gather(mem, chain)?;
    // SAFETY: each iovec lies inside one region of guest memory (`get_slice` checked it), which
    // stays mapped while `mem` is borrowed, as it is for this call. (Without vm-memory's `xen`
    // feature a pointer guard maps nothing, so dropping it unmaps nothing.) The guest may change
    // the bytes meanwhile; the tap copies them once and validates the header it copied.
    unsafe { tap.write_frame(frame.iovecs()) }.map_err(TxDrop::Tap)?;
    tracing::trace!(len = frame.len(), "virtio-net: frame from the guest");
    Ok(())
}

#[cfg(test)]
mod tests {
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::vstate::memory;

    const WRITE: u16 = 2;
    const BUF: u64 = 0x10_0000;

    /// Gathers the one chain built of `descs` (chained in order).
    fn gather_chain(mem: &GuestMemory, descs: &[Descriptor]) -> Result<(usize, u64), TxDrop> {
        let vq = MockSplitQueue::new(mem, 16);
        let raw: Vec<_> = descs.iter().map(|d| RawDescriptor::from(*d)).collect();
        let chain = vq.build_desc_chain(&raw).unwrap();
        let frame = gather(mem, chain)?;
        Ok((frame.iovecs().len(), frame.len()))
    }

    fn d(addr: u64, len: u32, flags: u16) -> Descriptor {
        Descriptor::new(addr, len, flags, 0)
    }

    #[test]
    fn pieces_are_gathered_in_order_and_empty_ones_skipped() {
        let mem = memory::create(4 << 20).unwrap();
        mem.write_slice(&[7u8; 12], GuestAddress(BUF)).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let descs = [d(BUF, 12, 0), d(BUF + 0x100, 0, 0), d(BUF + 0x200, 60, 0)];
        let raw: Vec<_> = descs.iter().map(|d| RawDescriptor::from(*d)).collect();
        let frame = gather(&mem, vq.build_desc_chain(&raw).unwrap()).unwrap();
        assert_eq!(frame.len(), 72);
        let iovs = frame.iovecs();
        assert_eq!(iovs.len(), 2);
        assert_eq!((iovs[0].iov_len, iovs[1].iov_len), (12, 60));
        // SAFETY: the first iovec points at 12 bytes of guest memory we wrote above.
        let first = unsafe { std::slice::from_raw_parts(iovs[0].iov_base as *const u8, 12) };
        assert_eq!(first, &[7u8; 12]);
    }

    #[test]
    fn bad_chains_are_refused_with_the_reason() {
        let mem = memory::create(4 << 20).unwrap();
        let err = |descs: &[Descriptor]| gather_chain(&mem, descs).unwrap_err().to_string();
        assert_eq!(
            err(&[d(BUF, 12, 0), d(BUF + 0x100, 100, WRITE)]),
            "TX chain has a device-writable descriptor"
        );
        assert_eq!(
            err(&[d(BUF, 12, 0), d(0x4000_0000, 100, 0)]),
            "TX buffer of 100 bytes at 0x40000000 is not in guest memory"
        );
        // Runs past the end of memory.
        assert!(matches!(
            gather_chain(&mem, &[d((4 << 20) - 8, 64, 0)]),
            Err(TxDrop::OutOfBounds { .. })
        ));
        assert_eq!(
            err(&[d(BUF, 8, 0)]),
            "TX chain of 8 bytes is shorter than a virtio-net header"
        );
        // 70,000 bytes: more than a frame and its header, although in guest memory.
        assert!(matches!(
            gather_chain(&mem, &[d(BUF, 40_000, 0), d(BUF, 30_000, 0)]),
            Err(TxDrop::TooLarge(70_000))
        ));
        // A length that would wrap a 32-bit sum.
        assert!(matches!(
            gather_chain(&mem, &[d(BUF, u32::MAX, 0), d(BUF, 2, 0)]),
            Err(TxDrop::TooLarge(_))
        ));
        assert_eq!(gather_chain(&mem, &[d(BUF, 12, 0)]).unwrap(), (1, 12));
    }

    #[test]
    fn a_chain_of_too_many_descriptors_is_refused() {
        let mem = memory::create(4 << 20).unwrap();
        // An indirect table of 300 one-byte descriptors, each chained to the next.
        let table = 0x20_0000u64;
        for i in 0..300u16 {
            let desc = Descriptor::new(BUF, 1, 1, i + 1);
            mem.write_obj(
                RawDescriptor::from(desc),
                GuestAddress(table + 16 * u64::from(i)),
            )
            .unwrap();
        }
        let indirect = 4;
        assert!(matches!(
            gather_chain(&mem, &[d(table, 16 * 300, indirect)]),
            Err(TxDrop::TooManyDescriptors)
        ));
    }
}
