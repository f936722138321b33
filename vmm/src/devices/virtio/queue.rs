//! The loop every device runs over a queue the driver filled: take each descriptor chain, let
//! the device handle it, return it on the used ring, and interrupt the driver if it wants that.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::{Interrupt, INT_VRING};
use crate::vstate::memory::GuestMemory;

/// What the device made of one descriptor chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Done: return the chain to the driver with this many bytes written into it. A malformed
    /// chain is returned with 0 after the device has logged why.
    Used(u32),
    /// The device has nothing for this chain yet (an RX buffer with no data to fill it): leave it
    /// on the available ring and stop.
    NotNow,
}

/// Hands every chain available on `queue` to `handle` and returns the finished ones to the
/// driver; then signals the interrupt if anything was returned and the driver asked for it
/// (with EVENT_IDX, only when the used index passes the driver's `used_event`). Returns how many
/// chains were returned.
///
/// A chain whose head index lies outside the queue is logged and skipped, never handed on.
pub fn drain<'m, F>(
    queue: &mut Queue,
    mem: &'m GuestMemory,
    interrupt: &Interrupt,
    mut handle: F,
) -> usize
where
    F: FnMut(DescriptorChain<&'m GuestMemory>) -> Completion,
{
    // A queue the driver did not enable has no rings: nothing may be read or written there.
    if !queue.ready() {
        return 0;
    }
    let mut used = 0;
    let mut first_round = true;
    loop {
        let mut paused = false;
        let start = queue.next_avail();
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            if head >= queue.size() {
                tracing::debug!(head, "virtio: chain head outside the queue skipped");
                continue;
            }
            let len = match handle(chain) {
                Completion::Used(len) => len,
                Completion::NotNow => {
                    queue.go_to_previous_position();
                    paused = true;
                    break;
                }
            };
            match queue.add_used(mem, head, len) {
                Ok(()) => used += 1,
                Err(e) => tracing::debug!(head, error = %e, "virtio: cannot return a used chain"),
            }
        }
        // With EVENT_IDX the driver only notifies once the available index passes the
        // `avail_event` we publish here; chains it added meanwhile are served now. A round after
        // the first that took nothing, although the index says there is more, means an index
        // beyond the ring (which the queue refuses to pop): asking again would spin forever.
        if !queue.event_idx_enabled() {
            break;
        }
        let progressed = first_round || queue.next_avail() != start;
        first_round = false;
        match queue.enable_notification(mem) {
            Ok(true) if !paused && progressed => continue,
            Ok(_) => break,
            Err(e) => {
                tracing::debug!(error = %e, "virtio: cannot publish the available event index");
                break;
            }
        }
    }
    if used > 0 && queue.needs_notification(mem).unwrap_or(true) {
        interrupt.signal(INT_VRING);
    }
    used
}

#[cfg(test)]
mod tests {
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::vstate::memory;

    const SIZE: u16 = 16;
    const WRITE: u16 = 2;

    struct Setup {
        mem: GuestMemory,
        irq: EventFd,
        interrupt: Interrupt,
    }

    fn setup() -> Setup {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        Setup {
            mem: memory::create(1 << 20).unwrap(),
            interrupt: Interrupt::new(irq.try_clone().unwrap()),
            irq,
        }
    }

    /// `count` one-descriptor chains, the i-th at descriptor i.
    fn add_chains(vq: &MockSplitQueue<GuestMemory>, count: u16) {
        let descs: Vec<_> = (0..count)
            .map(|i| {
                RawDescriptor::from(Descriptor::new(
                    0x8000 + u64::from(i) * 0x100,
                    0x100,
                    WRITE,
                    0,
                ))
            })
            .collect();
        vq.add_desc_chains(&descs, 0).unwrap();
    }

    fn used_elem(vq: &MockSplitQueue<GuestMemory>, i: usize) -> (u32, u32) {
        let e = vq.used().ring().ref_at(i).unwrap().load();
        (e.id(), e.len())
    }

    #[test]
    fn every_chain_is_returned_with_its_length_and_one_interrupt() {
        let s = setup();
        let vq = MockSplitQueue::new(&s.mem, SIZE);
        add_chains(&vq, 3);
        let mut q: Queue = vq.create_queue().unwrap();
        let mut heads = Vec::new();
        let n = drain(&mut q, &s.mem, &s.interrupt, |chain| {
            heads.push(chain.head_index());
            Completion::Used(10 + u32::from(chain.head_index()))
        });
        assert_eq!(n, 3);
        assert_eq!(heads, [0, 1, 2]);
        assert_eq!(vq.used().idx().load(), 3);
        assert_eq!(used_elem(&vq, 2), (2, 12));
        assert_eq!(s.irq.read().unwrap(), 1);
        assert_ne!(s.interrupt.status() & INT_VRING, 0);
    }

    #[test]
    fn empty_queue_raises_no_interrupt() {
        let s = setup();
        let vq = MockSplitQueue::new(&s.mem, SIZE);
        let mut q: Queue = vq.create_queue().unwrap();
        assert_eq!(
            drain(&mut q, &s.mem, &s.interrupt, |_| Completion::Used(0)),
            0
        );
        assert!(s.irq.read().is_err());
    }

    #[test]
    fn not_now_leaves_the_chain_for_the_next_drain() {
        let s = setup();
        let vq = MockSplitQueue::new(&s.mem, SIZE);
        add_chains(&vq, 2);
        let mut q: Queue = vq.create_queue().unwrap();
        let mut calls = 0;
        let n = drain(&mut q, &s.mem, &s.interrupt, |_| {
            calls += 1;
            Completion::NotNow
        });
        assert_eq!(
            (n, calls),
            (0, 1),
            "draining stops at the first chain put back"
        );
        assert!(s.irq.read().is_err());
        let n = drain(&mut q, &s.mem, &s.interrupt, |_| Completion::Used(4));
        assert_eq!(n, 2);
        assert_eq!(used_elem(&vq, 0), (0, 4));
    }

    #[test]
    fn head_outside_the_queue_is_skipped_and_later_chains_served() {
        let s = setup();
        let vq = MockSplitQueue::new(&s.mem, SIZE);
        add_chains(&vq, 2);
        // The driver's first available entry names descriptor 200 of a 16-entry table.
        vq.avail().ring().ref_at(0).unwrap().store(200);
        let mut q: Queue = vq.create_queue().unwrap();
        let mut heads = Vec::new();
        let n = drain(&mut q, &s.mem, &s.interrupt, |chain| {
            heads.push(chain.head_index());
            Completion::Used(0)
        });
        assert_eq!(n, 1);
        assert_eq!(heads, [1]);
        assert_eq!(used_elem(&vq, 0), (1, 0));
    }

    #[test]
    fn queue_that_is_not_ready_is_left_alone() {
        let s = setup();
        let vq = MockSplitQueue::new(&s.mem, SIZE);
        add_chains(&vq, 1);
        let mut q: Queue = vq.create_queue().unwrap();
        q.set_ready(false);
        assert_eq!(
            drain(&mut q, &s.mem, &s.interrupt, |_| Completion::Used(0)),
            0
        );
        assert_eq!(vq.used().idx().load(), 0);
    }

    /// The mock lays its used ring over the tail of the available ring (where `used_event`
    /// lives), so the EVENT_IDX test moves the used ring here.
    const USED_RING: u64 = 0x4000;

    /// `avail_event` sits after the used ring's elements, `used_event` after the available
    /// ring's.
    fn avail_event(mem: &GuestMemory) -> u16 {
        mem.read_obj(GuestAddress(USED_RING + 4 + 8 * u64::from(SIZE)))
            .unwrap()
    }

    fn set_used_event(vq: &MockSplitQueue<GuestMemory>, mem: &GuestMemory, v: u16) {
        let addr = vq.avail_addr().unchecked_add(4 + 2 * u64::from(SIZE));
        mem.write_obj(v, addr).unwrap();
    }

    #[test]
    fn event_idx_publishes_avail_event_and_honours_used_event() {
        let s = setup();
        let vq = MockSplitQueue::new(&s.mem, SIZE);
        add_chains(&vq, 2);
        let mut q: Queue = vq.create_queue().unwrap();
        q.set_used_ring_address(Some(USED_RING as u32), Some(0));
        q.set_event_idx(true);
        // The driver wants an interrupt only once the used index passes 5.
        set_used_event(&vq, &s.mem, 5);
        assert_eq!(
            drain(&mut q, &s.mem, &s.interrupt, |_| Completion::Used(1)),
            2
        );
        let used_idx = GuestAddress(USED_RING + 2);
        assert_eq!(s.mem.read_obj::<u16>(used_idx).unwrap(), 2);
        assert_eq!(avail_event(&s.mem), 2, "the driver notifies past index 2");
        assert!(s.irq.read().is_err(), "used index 2 has not passed 5");

        // Now it wants one as soon as the next chain is used.
        set_used_event(&vq, &s.mem, 2);
        vq.add_desc_chains(
            &[RawDescriptor::from(Descriptor::new(0x9000, 8, WRITE, 0))],
            2,
        )
        .unwrap();
        assert_eq!(
            drain(&mut q, &s.mem, &s.interrupt, |_| Completion::Used(1)),
            1
        );
        assert_eq!(s.mem.read_obj::<u16>(used_idx).unwrap(), 3);
        assert_eq!(avail_event(&s.mem), 3);
        assert_eq!(s.irq.read().unwrap(), 1);
    }

    #[test]
    fn with_event_idx_an_index_beyond_the_ring_ends_the_drain() {
        let s = setup();
        let vq = MockSplitQueue::new(&s.mem, SIZE);
        add_chains(&vq, 1);
        let mut q: Queue = vq.create_queue().unwrap();
        q.set_used_ring_address(Some(USED_RING as u32), Some(0));
        q.set_event_idx(true);
        // More than a ring's worth available: no chain can be taken, and the index never
        // catches up. The drain must return rather than ask again forever.
        vq.avail().idx().store(SIZE + 5);
        let (done_tx, done) = std::sync::mpsc::channel();
        let mem = s.mem.clone();
        std::thread::spawn(move || {
            let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
            let n = drain(&mut q, &mem, &irq, |_| Completion::Used(0));
            let _ = done_tx.send(n);
        });
        let n = done.recv_timeout(std::time::Duration::from_secs(5));
        assert_eq!(n, Ok(0), "the drain did not return");
    }

    #[test]
    fn without_event_idx_the_used_ring_flags_are_untouched() {
        let s = setup();
        let vq = MockSplitQueue::new(&s.mem, SIZE);
        add_chains(&vq, 1);
        s.mem.write_obj(0xabcd_u16, vq.used_addr()).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert_eq!(
            drain(&mut q, &s.mem, &s.interrupt, |_| Completion::Used(0)),
            1
        );
        assert_eq!(s.mem.read_obj::<u16>(vq.used_addr()).unwrap(), 0xabcd);
    }
}
