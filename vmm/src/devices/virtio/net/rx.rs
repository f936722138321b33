//! Frames for the guest. The device holds at most one: read from the tap with its virtio-net
//! header into [`Rx`]'s buffer, then copied into the guest's RX buffers — one descriptor chain,
//! or with VIRTIO_NET_F_MRG_RXBUF as many chains as it takes, counted in the header's
//! `num_buffers`. A frame that does not fit the buffers the guest has posted yet waits for more;
//! until then the device reads nothing more from the tap, and frames queue in the kernel.

use std::mem::offset_of;
use std::sync::atomic::Ordering;

use virtio_bindings::virtio_net::virtio_net_hdr_v1;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::Bytes;

use super::tap::{MAX_BUFFER_LEN, VNET_HDR_LEN};
use crate::devices::virtio::{Interrupt, INT_VRING};
use crate::vstate::memory::GuestMemory;

/// Where `num_buffers` sits in the header.
const NUM_BUFFERS: usize = offset_of!(virtio_net_hdr_v1, num_buffers);
/// The most descriptors of one RX chain we look at (an indirect table may hold 65535).
pub const MAX_RX_DESCRIPTORS: usize = 256;
/// How many times one frame looks for buffers before it waits for the driver's notification.
const FILL_ROUNDS: usize = 4;

/// What became of the waiting frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// In the guest's buffers, `chains` of them.
    Delivered { chains: usize },
    /// Gone, for the reason given; any chain the frame took was returned empty.
    Dropped(RxDrop),
    /// The guest has not posted enough buffers yet: the frame waits.
    NoBuffers,
}

/// Why a frame for the guest was dropped.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RxDrop {
    #[error("Frame of {0} bytes is larger than the buffers the guest gives it")]
    TooLarge(usize),
    #[error("Frame of {0} bytes is shorter than its virtio-net header")]
    TooShort(usize),
    #[error("RX buffer chain has a device-readable descriptor")]
    ReadOnly,
    #[error("RX buffer of {len} bytes at {addr:#x} is not in guest memory")]
    OutOfBounds { addr: u64, len: u32 },
    #[error("RX buffer chain has more than {MAX_RX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    #[error("First RX buffer of {0} bytes cannot hold the virtio-net header")]
    NoRoomForHeader(usize),
}

/// The RX queue and the one frame waiting for it.
pub struct Rx {
    queue: Queue,
    mergeable: bool,
    /// A frame with its header: [`MAX_BUFFER_LEN`] bytes, allocated once.
    buf: Box<[u8]>,
    /// The length of the frame waiting in `buf`, if one is.
    pending: Option<usize>,
    /// The chains the frame being delivered has taken: head index and bytes written. Never
    /// longer than the queue (each is a distinct available entry).
    taken: Vec<(u16, u32)>,
}

impl Rx {
    pub fn new(queue: Queue, mergeable: bool) -> Self {
        let capacity = usize::from(queue.size());
        Rx {
            queue,
            mergeable,
            buf: vec![0u8; MAX_BUFFER_LEN].into_boxed_slice(),
            pending: None,
            taken: Vec::with_capacity(capacity),
        }
    }

    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Where the next frame is read to; [`Self::set_pending`] then says how long it is.
    pub fn frame_buffer(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    pub fn set_pending(&mut self, len: usize) {
        self.pending = Some(len.min(self.buf.len()));
    }

    /// Forgets the waiting frame (the tap is gone).
    pub fn drop_pending(&mut self) {
        self.pending = None;
    }

    /// The used index, to tell later whether anything was returned to the driver.
    pub fn used_mark(&self) -> u16 {
        self.queue.next_used()
    }

    /// Interrupts the driver if chains were returned since `mark` and it wants to know.
    pub fn signal_used(&mut self, mark: u16, mem: &GuestMemory, interrupt: &Interrupt) {
        if self.queue.next_used() != mark && self.queue.needs_notification(mem).unwrap_or(true) {
            interrupt.signal(INT_VRING);
        }
    }

    /// Copies the waiting frame into the guest's RX buffers. Unless the outcome is
    /// [`Delivery::NoBuffers`], the frame is gone afterwards. With no frame waiting, nothing is
    /// delivered, in no chain.
    pub fn deliver(&mut self, mem: &GuestMemory) -> Delivery {
        let Some(len) = self.pending else {
            return Delivery::Delivered { chains: 0 };
        };
        let outcome = if len < VNET_HDR_LEN {
            Delivery::Dropped(RxDrop::TooShort(len))
        } else {
            self.fill_chains(mem, len)
        };
        if outcome != Delivery::NoBuffers {
            self.pending = None;
        }
        outcome
    }

    fn fill_chains(&mut self, mem: &GuestMemory, len: usize) -> Delivery {
        if !self.queue.ready() {
            return Delivery::NoBuffers;
        }
        // Each round after the first needs buffers the driver added during the one before.
        for _ in 0..FILL_ROUNDS {
            let start = self.queue.next_avail();
            self.taken.clear();
            let mut first = None;
            let mut written = 0;
            let mut failed = None;
            while written < len && (self.mergeable || self.taken.is_empty()) {
                let Some(chain) = self.queue.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
                if head >= self.queue.size() {
                    // Not a chain of this queue: nothing to write to or return.
                    tracing::debug!(head, "virtio-net: RX chain head outside the queue skipped");
                    continue;
                }
                let result = write_chain(mem, chain.clone(), &self.buf[written..len]);
                let n = match result {
                    Ok(n) if self.taken.is_empty() && n < VNET_HDR_LEN => {
                        Err(RxDrop::NoRoomForHeader(n))
                    }
                    other => other,
                };
                match n {
                    Ok(n) => {
                        self.taken.push((head, n as u32));
                        written += n;
                        first.get_or_insert(chain);
                    }
                    Err(e) => {
                        self.taken.push((head, 0));
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                self.return_taken_empty(mem);
                return Delivery::Dropped(e);
            }
            if written == len {
                return self.complete(mem, first, len);
            }
            let popped = self.queue.next_avail().wrapping_sub(start);
            // Nothing taken is published: the chains go back on the available ring.
            self.queue.set_next_avail(start);
            if (!self.mergeable && !self.taken.is_empty()) || popped == self.queue.size() {
                // One chain too small, or every entry of the ring and still not enough: more
                // buffers cannot come, so waiting would stall the guest's network for good.
                return Delivery::Dropped(RxDrop::TooLarge(len - VNET_HDR_LEN));
            }
            if !self.more_buffers_since(mem, start, popped) {
                return Delivery::NoBuffers;
            }
        }
        // The driver keeps adding buffers: its notification brings us back.
        Delivery::NoBuffers
    }

    /// Writes `num_buffers` into the first chain's header and returns every taken chain.
    fn complete(
        &mut self,
        mem: &GuestMemory,
        first: Option<DescriptorChain<&GuestMemory>>,
        len: usize,
    ) -> Delivery {
        let chains = self.taken.len();
        // At most the queue size, so it fits.
        let count = chains as u16;
        self.buf[NUM_BUFFERS..NUM_BUFFERS + 2].copy_from_slice(&count.to_le_bytes());
        let header = match first {
            Some(chain) => write_chain(mem, chain, &self.buf[..VNET_HDR_LEN]),
            None => Err(RxDrop::NoRoomForHeader(0)),
        };
        match header {
            Ok(VNET_HDR_LEN) => {}
            // The driver changed the descriptor under us.
            Ok(n) => {
                self.return_taken_empty(mem);
                return Delivery::Dropped(RxDrop::NoRoomForHeader(n));
            }
            Err(e) => {
                self.return_taken_empty(mem);
                return Delivery::Dropped(e);
            }
        }
        for &(head, n) in &self.taken {
            if let Err(e) = self.queue.add_used(mem, head, n) {
                tracing::debug!(head, error = %e, "virtio-net: cannot return an RX chain");
            }
        }
        tracing::trace!(len, chains, "virtio-net: frame to the guest");
        Delivery::Delivered { chains }
    }

    fn return_taken_empty(&mut self, mem: &GuestMemory) {
        for &(head, _) in &self.taken {
            if let Err(e) = self.queue.add_used(mem, head, 0) {
                tracing::debug!(head, error = %e, "virtio-net: cannot return an RX chain");
            }
        }
    }

    /// Whether the driver has made more than `popped` chains available past `start` by now (an
    /// index more than a ring ahead, which the queue refuses to pop, does not count).
    /// With EVENT_IDX it first asks to be notified once it adds any beyond those it has now:
    /// `avail_event` must be the driver's current index, not `start`, or a driver that has
    /// already gone past `start` would never notify again.
    fn more_buffers_since(&mut self, mem: &GuestMemory, start: u16, popped: u16) -> bool {
        let Ok(avail) = self.queue.avail_idx(mem, Ordering::Acquire) else {
            return false;
        };
        if self.queue.event_idx_enabled() {
            self.queue.set_next_avail(avail.0);
            let published = self.queue.enable_notification(mem);
            self.queue.set_next_avail(start);
            if let Err(e) = published {
                tracing::debug!(error = %e, "virtio-net: cannot publish the RX avail event");
            }
        }
        let Ok(now) = self.queue.avail_idx(mem, Ordering::Acquire) else {
            return false;
        };
        let ahead = now.0.wrapping_sub(start);
        ahead > popped && ahead <= self.queue.size()
    }
}

/// Writes as much of `data` as fits into the chain's buffers; returns how much that was.
fn write_chain(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    data: &[u8],
) -> Result<usize, RxDrop> {
    let mut written = 0;
    for (i, desc) in chain.enumerate() {
        if written == data.len() {
            break;
        }
        if i == MAX_RX_DESCRIPTORS {
            return Err(RxDrop::TooManyDescriptors);
        }
        if !desc.is_write_only() {
            return Err(RxDrop::ReadOnly);
        }
        let n = (desc.len() as usize).min(data.len() - written);
        mem.write_slice(&data[written..written + n], desc.addr())
            .map_err(|_| RxDrop::OutOfBounds {
                addr: desc.addr().0,
                len: desc.len(),
            })?;
        written += n;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::vstate::memory;

    const SIZE: u16 = 16;
    const WRITE: u16 = 2;
    const NEXT: u16 = 1;
    /// Where the tests' RX buffers live, 64 KiB apart.
    const BUFS: u64 = 0x10_0000;

    fn buf_addr(i: u64) -> u64 {
        BUFS + i * 0x1_0000
    }

    /// One single-descriptor chain per size, the i-th buffer at `buf_addr(first + i)`.
    fn post(vq: &MockSplitQueue<GuestMemory>, first: u16, sizes: &[u32]) {
        let descs: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let i = u64::from(first) + i as u64;
                RawDescriptor::from(Descriptor::new(buf_addr(i), len, WRITE, 0))
            })
            .collect();
        vq.add_desc_chains(&descs, first).unwrap();
    }

    /// A header (all zeros but a marker in `flags`) and a frame of `len` patterned bytes.
    fn frame(len: usize) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM, as the tap may hand it over
        f[NUM_BUFFERS] = 0xee; // stale bytes the tap leaves alone: the device must set them
        f.extend((0..len).map(|i| (i % 251) as u8));
        f
    }

    fn pend(rx: &mut Rx, f: &[u8]) {
        rx.frame_buffer()[..f.len()].copy_from_slice(f);
        rx.set_pending(f.len());
    }

    fn used(vq: &MockSplitQueue<GuestMemory>, i: usize) -> (u32, u32) {
        let e = vq.used().ring().ref_at(i).unwrap().load();
        (e.id(), e.len())
    }

    fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn setup() -> GuestMemory {
        memory::create(4 << 20).unwrap()
    }

    #[test]
    fn a_frame_fills_one_buffer_and_num_buffers_is_one() {
        let mem = setup();
        let vq = MockSplitQueue::new(&mem, SIZE);
        post(&vq, 0, &[2048]);
        let mut rx = Rx::new(vq.create_queue().unwrap(), true);
        let f = frame(1000);
        pend(&mut rx, &f);
        assert_eq!(rx.deliver(&mem), Delivery::Delivered { chains: 1 });
        assert!(!rx.has_pending());
        assert_eq!(used(&vq, 0), (0, f.len() as u32));
        let got = read(&mem, buf_addr(0), f.len());
        assert_eq!(&got[NUM_BUFFERS..VNET_HDR_LEN], &[1, 0]);
        assert_eq!(got[0], 1, "the tap's header is passed on");
        assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
    }

    #[test]
    fn a_frame_spans_merged_buffers_counted_in_num_buffers() {
        let mem = setup();
        let vq = MockSplitQueue::new(&mem, SIZE);
        post(&vq, 0, &[1024, 1024, 1024, 1024]);
        let mut rx = Rx::new(vq.create_queue().unwrap(), true);
        let f = frame(2500); // 2512 bytes with the header: three buffers
        pend(&mut rx, &f);
        assert_eq!(rx.deliver(&mem), Delivery::Delivered { chains: 3 });
        assert_eq!(vq.used().idx().load(), 3);
        assert_eq!(used(&vq, 0), (0, 1024));
        assert_eq!(used(&vq, 1), (1, 1024));
        assert_eq!(used(&vq, 2), (2, 464));
        let mut got = read(&mem, buf_addr(0), 1024);
        got.extend(read(&mem, buf_addr(1), 1024));
        got.extend(read(&mem, buf_addr(2), 464));
        assert_eq!(&got[NUM_BUFFERS..VNET_HDR_LEN], &3u16.to_le_bytes());
        assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
    }

    #[test]
    fn a_chain_of_several_descriptors_takes_the_header_split() {
        let mem = setup();
        let vq = MockSplitQueue::new(&mem, SIZE);
        // One chain: 5 bytes, then 7 (the rest of the header), then 4096.
        let descs = [
            RawDescriptor::from(Descriptor::new(buf_addr(0), 5, WRITE | NEXT, 1)),
            RawDescriptor::from(Descriptor::new(buf_addr(1), 7, WRITE | NEXT, 2)),
            RawDescriptor::from(Descriptor::new(buf_addr(2), 4096, WRITE, 0)),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut rx = Rx::new(vq.create_queue().unwrap(), false);
        let f = frame(100);
        pend(&mut rx, &f);
        assert_eq!(rx.deliver(&mem), Delivery::Delivered { chains: 1 });
        assert_eq!(used(&vq, 0), (0, 112));
        let mut got = read(&mem, buf_addr(0), 5);
        got.extend(read(&mem, buf_addr(1), 7));
        got.extend(read(&mem, buf_addr(2), 100));
        assert_eq!(&got[NUM_BUFFERS..VNET_HDR_LEN], &[1, 0]);
        assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
    }

    #[test]
    fn too_few_buffers_leave_the_frame_waiting_and_the_ring_untouched() {
        let mem = setup();
        let vq = MockSplitQueue::new(&mem, SIZE);
        post(&vq, 0, &[1024]);
        let mut rx = Rx::new(vq.create_queue().unwrap(), true);
        let f = frame(1500);
        pend(&mut rx, &f);
        assert_eq!(rx.deliver(&mem), Delivery::NoBuffers);
        assert!(rx.has_pending());
        assert_eq!(vq.used().idx().load(), 0);
        assert_eq!(rx.queue.next_avail(), 0, "the chain is still available");
        post(&vq, 1, &[1024]);
        assert_eq!(rx.deliver(&mem), Delivery::Delivered { chains: 2 });
        assert_eq!(used(&vq, 1), (1, (f.len() - 1024) as u32));
        assert_eq!(read(&mem, buf_addr(0), VNET_HDR_LEN)[NUM_BUFFERS], 2);
    }

    #[test]
    fn no_buffers_at_all_is_waiting_too() {
        let mem = setup();
        let vq = MockSplitQueue::new(&mem, SIZE);
        let mut rx = Rx::new(vq.create_queue().unwrap(), false);
        pend(&mut rx, &frame(60));
        assert_eq!(rx.deliver(&mem), Delivery::NoBuffers);
        assert!(rx.has_pending());
        let mut unready = Rx::new(vq.create_queue().unwrap(), true);
        unready.queue.set_ready(false);
        pend(&mut unready, &frame(60));
        assert_eq!(unready.deliver(&mem), Delivery::NoBuffers);
    }

    #[test]
    fn without_merging_a_frame_larger_than_the_chain_is_dropped_and_the_chain_kept() {
        let mem = setup();
        let vq = MockSplitQueue::new(&mem, SIZE);
        post(&vq, 0, &[1024, 4096]);
        let mut rx = Rx::new(vq.create_queue().unwrap(), false);
        pend(&mut rx, &frame(2000));
        assert_eq!(rx.deliver(&mem), Delivery::Dropped(RxDrop::TooLarge(2000)));
        assert!(!rx.has_pending());
        assert_eq!(vq.used().idx().load(), 0);
        // The next frame that fits takes the same chain.
        pend(&mut rx, &frame(500));
        assert_eq!(rx.deliver(&mem), Delivery::Delivered { chains: 1 });
        assert_eq!(used(&vq, 0), (0, 512));
    }

    #[test]
    fn a_full_ring_too_small_for_the_frame_drops_it() {
        let mem = setup();
        let vq = MockSplitQueue::new(&mem, 4);
        post(&vq, 0, &[100, 100, 100, 100]);
        let mut q: Queue = vq.create_queue().unwrap();
        // A full ring reaches into the mock's used ring: ours goes elsewhere.
        q.set_used_ring_address(Some(USED_RING as u32), Some(0));
        let used_idx = || mem.read_obj::<u16>(GuestAddress(USED_RING + 2)).unwrap();
        let mut rx = Rx::new(q, true);
        pend(&mut rx, &frame(1000));
        assert_eq!(rx.deliver(&mem), Delivery::Dropped(RxDrop::TooLarge(1000)));
        assert_eq!(used_idx(), 0, "the buffers stay for smaller frames");
        pend(&mut rx, &frame(150));
        assert_eq!(rx.deliver(&mem), Delivery::Delivered { chains: 2 });
        assert_eq!(used_idx(), 2);
    }

    #[test]
    fn malformed_chains_are_returned_empty_with_the_frame_dropped() {
        let cases: [(Descriptor, RxDrop); 4] = [
            (Descriptor::new(buf_addr(0), 2048, 0, 0), RxDrop::ReadOnly),
            (
                Descriptor::new(0xffff_0000, 2048, WRITE, 0),
                RxDrop::OutOfBounds {
                    addr: 0xffff_0000,
                    len: 2048,
                },
            ),
            (
                // Runs off the end of guest memory.
                Descriptor::new((4 << 20) - 16, 2048, WRITE, 0),
                RxDrop::OutOfBounds {
                    addr: (4 << 20) - 16,
                    len: 2048,
                },
            ),
            (
                Descriptor::new(buf_addr(0), 8, WRITE, 0),
                RxDrop::NoRoomForHeader(8),
            ),
        ];
        for (desc, why) in cases {
            let mem = setup();
            let vq = MockSplitQueue::new(&mem, SIZE);
            vq.add_desc_chains(&[RawDescriptor::from(desc)], 0).unwrap();
            post(&vq, 1, &[2048]);
            let mut rx = Rx::new(vq.create_queue().unwrap(), true);
            pend(&mut rx, &frame(100));
            assert_eq!(rx.deliver(&mem), Delivery::Dropped(why));
            assert_eq!(vq.used().idx().load(), 1);
            assert_eq!(used(&vq, 0), (0, 0));
            // The next frame takes the good chain.
            pend(&mut rx, &frame(100));
            assert_eq!(rx.deliver(&mem), Delivery::Delivered { chains: 1 });
            assert_eq!(used(&vq, 1), (1, 112));
        }
    }

    #[test]
    fn a_merged_frame_meeting_a_bad_chain_returns_every_chain_it_took() {
        let mem = setup();
        let vq = MockSplitQueue::new(&mem, SIZE);
        post(&vq, 0, &[1024]);
        vq.add_desc_chains(
            &[RawDescriptor::from(Descriptor::new(
                buf_addr(1),
                1024,
                0,
                0,
            ))],
            1,
        )
        .unwrap();
        let mut rx = Rx::new(vq.create_queue().unwrap(), true);
        pend(&mut rx, &frame(1500));
        assert_eq!(rx.deliver(&mem), Delivery::Dropped(RxDrop::ReadOnly));
        assert_eq!(vq.used().idx().load(), 2);
        assert_eq!((used(&vq, 0), used(&vq, 1)), ((0, 0), (1, 0)));
    }

    #[test]
    fn a_chain_looping_through_many_descriptors_is_cut_off() {
        let mem = setup();
        // An indirect table of 300 zero-length writable descriptors, each chained to the next.
        let table = 0x20_0000u64;
        for i in 0..300u16 {
            let d = Descriptor::new(buf_addr(0), 0, WRITE | NEXT, i + 1);
            mem.write_obj(
                RawDescriptor::from(d),
                GuestAddress(table + 16 * u64::from(i)),
            )
            .unwrap();
        }
        let vq = MockSplitQueue::new(&mem, SIZE);
        let indirect = 4;
        vq.add_desc_chains(
            &[RawDescriptor::from(Descriptor::new(
                table,
                16 * 300,
                indirect,
                0,
            ))],
            0,
        )
        .unwrap();
        let mut rx = Rx::new(vq.create_queue().unwrap(), true);
        pend(&mut rx, &frame(100));
        assert_eq!(
            rx.deliver(&mem),
            Delivery::Dropped(RxDrop::TooManyDescriptors)
        );
        assert_eq!(used(&vq, 0), (0, 0));
    }

    #[test]
    fn a_frame_shorter_than_a_header_is_dropped_without_taking_a_buffer() {
        let mem = setup();
        let vq = MockSplitQueue::new(&mem, SIZE);
        post(&vq, 0, &[2048]);
        let mut rx = Rx::new(vq.create_queue().unwrap(), true);
        pend(&mut rx, &[0u8; 6]);
        assert_eq!(rx.deliver(&mem), Delivery::Dropped(RxDrop::TooShort(6)));
        assert_eq!(vq.used().idx().load(), 0);
    }

    #[test]
    fn an_available_index_beyond_the_ring_makes_the_frame_wait_not_spin() {
        let mem = setup();
        let vq = MockSplitQueue::new(&mem, SIZE);
        post(&vq, 0, &[256]);
        vq.avail().idx().store(SIZE + 5);
        for event_idx in [false, true] {
            let mut q: Queue = vq.create_queue().unwrap();
            q.set_used_ring_address(Some(USED_RING as u32), Some(0));
            q.set_event_idx(event_idx);
            let mut rx = Rx::new(q, true);
            pend(&mut rx, &frame(1000));
            assert_eq!(rx.deliver(&mem), Delivery::NoBuffers);
        }
    }

    /// The mock lays its used ring over the tail of the available ring (where `used_event`
    /// lives): the EVENT_IDX test moves the used ring here.
    const USED_RING: u64 = 0x8000;

    #[test]
    fn with_event_idx_waiting_asks_for_a_notification_past_the_drivers_index() {
        let mem = setup();
        let vq = MockSplitQueue::new(&mem, SIZE);
        post(&vq, 0, &[256, 256]);
        let mut q: Queue = vq.create_queue().unwrap();
        q.set_used_ring_address(Some(USED_RING as u32), Some(0));
        q.set_event_idx(true);
        let mut rx = Rx::new(q, true);
        pend(&mut rx, &frame(1000));
        assert_eq!(rx.deliver(&mem), Delivery::NoBuffers);
        // avail_event follows the used ring's elements.
        let avail_event: u16 = mem
            .read_obj(GuestAddress(USED_RING + 4 + 8 * u64::from(SIZE)))
            .unwrap();
        assert_eq!(
            avail_event, 2,
            "the driver notifies once it adds a third buffer"
        );
        assert_eq!(rx.queue.next_avail(), 0);

        // The interrupt follows used_event: none until the used index passes it.
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Interrupt::new(irq.try_clone().unwrap());
        let used_event = vq.avail_addr().unchecked_add(4 + 2 * u64::from(SIZE));
        mem.write_obj(0u16, used_event).unwrap();
        post(&vq, 2, &[256, 256, 256]);
        let mark = rx.used_mark();
        assert_eq!(rx.deliver(&mem), Delivery::Delivered { chains: 4 });
        rx.signal_used(mark, &mem, &interrupt);
        assert_eq!(irq.read().unwrap(), 1);
    }
}
