//! virtio-rng: fills the guest's buffers from the host's `/dev/urandom`, so the guest kernel's
//! entropy pool is seeded at boot without waiting for jitter.

use std::fs::File;
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Bytes, GuestMemoryError};
use vmm_sys_util::epoll::EventSet;

use super::queue::{self, Completion};
use super::worker::{EventHandler, Interest, QueueEvents, Worker, WorkerError};
use super::{ActivateError, DeviceState, Interrupt, VirtioDevice, TYPE_RNG};
use crate::vstate::memory::GuestMemory;

const NAME: &str = "virtio-rng";
const QUEUE_SIZES: [u16; 1] = [256];
/// The most we hand out per request, so one guest request cannot make us read without bound.
const MAX_REQUEST: u32 = 64 * 1024;

pub struct Rng {
    source: File,
    queue_evts: QueueEvents,
    state: DeviceState<Worker<RngHandler>>,
}

impl Rng {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            source: File::open("/dev/urandom")?,
            queue_evts: QueueEvents::new(QUEUE_SIZES.len())?,
            state: DeviceState::Inactive,
        })
    }
}

/// The activated device, on its worker thread.
struct RngHandler {
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    queue: Queue,
    source: File,
    queue_evts: QueueEvents,
}

impl RngHandler {
    fn process_queue(&mut self) {
        let (mem, source) = (&self.mem, &mut self.source);
        queue::drain(&mut self.queue, mem, &self.interrupt, |chain| {
            fill_chain(mem, source, chain)
        });
    }
}

impl EventHandler for RngHandler {
    fn register(&mut self, interest: &Interest<'_>) -> Result<(), WorkerError> {
        self.queue_evts.register(interest)
    }

    fn handle_event(&mut self, token: u64, _events: EventSet) -> Result<(), WorkerError> {
        if self.queue_evts.consume(token).is_some() {
            self.process_queue();
        }
        Ok(())
    }
}

/// Fills the chain's device-writable buffers, up to [`MAX_REQUEST`] bytes in all; a buffer that
/// is not in guest memory ends the request with what was written so far. Public for the fuzz
/// targets.
#[doc(hidden)]
pub fn fill_chain(
    mem: &GuestMemory,
    source: &mut File,
    chain: DescriptorChain<&GuestMemory>,
) -> Completion {
    let mut written = 0u32;
    for desc in chain {
        if !desc.is_write_only() || written >= MAX_REQUEST {
            continue;
        }
        let len = desc.len().min(MAX_REQUEST - written) as usize;
        match fill(mem, source, desc.addr(), len) {
            Ok(n) => written += n as u32,
            Err(e) => {
                tracing::debug!(error = %e, "virtio-rng: bad descriptor");
                break;
            }
        }
    }
    Completion::Used(written)
}

fn fill(
    mem: &GuestMemory,
    source: &mut File,
    addr: vm_memory::GuestAddress,
    len: usize,
) -> Result<usize, GuestMemoryError> {
    mem.read_volatile_from(addr, source, len)
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
        _acked_features: u64,
    ) -> Result<(), ActivateError> {
        if self.state.is_activated() {
            return Err(ActivateError::AlreadyActive(NAME));
        }
        let queue = queues
            .into_iter()
            .next()
            .ok_or(ActivateError::BadQueue(0))?;
        let err = |e| ActivateError::Device(NAME, e);
        let handler = RngHandler {
            mem,
            interrupt,
            queue,
            source: self.source.try_clone().map_err(err)?,
            queue_evts: self.queue_evts.try_clone().map_err(err)?,
        };
        let worker = Worker::spawn(NAME, handler).map_err(|e| ActivateError::Worker(NAME, e))?;
        self.state = DeviceState::Activated(worker);
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        if self.state.is_activated() {
            self.queue_evts.notify(index);
        }
    }

    fn reset(&mut self) {
        self.state.stop_worker();
        self.queue_evts.clear();
    }

    fn shutdown(&mut self) {
        self.state.shut_down_worker();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::vstate::memory;

    const VRING_DESC_F_WRITE: u16 = 2;

    /// Waits (a few seconds at most) for the worker to raise the interrupt.
    fn wait_for_irq(irq: &EventFd) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if irq.read().is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    fn activated(mem: &GuestMemory, vq: &MockSplitQueue<GuestMemory>) -> (Rng, EventFd) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        let mut rng = Rng::new().unwrap();
        let q: Queue = vq.create_queue().unwrap();
        rng.activate(mem.clone(), interrupt, vec![q], 0).unwrap();
        (rng, irq)
    }

    fn run(descs: &[RawDescriptor]) -> (u32, Vec<u8>, bool) {
        let mem = memory::create(1 << 20).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.build_desc_chain(descs).unwrap();
        let (mut rng, irq) = activated(&mem, &vq);
        rng.queue_notify(0);
        let irq = wait_for_irq(&irq);
        rng.reset();
        let used = vq.used();
        let elem = used.ring().ref_at(0).unwrap().load();
        let mut buf = vec![0u8; 64];
        mem.read_slice(&mut buf, GuestAddress(0x8000)).unwrap();
        (elem.len(), buf, irq)
    }

    #[test]
    fn fills_write_only_buffers() {
        let d = SplitDescriptor::new(0x8000, 64, VRING_DESC_F_WRITE, 0);
        let (len, buf, irq) = run(&[RawDescriptor::from(d)]);
        assert_eq!(len, 64);
        assert!(buf.iter().any(|&b| b != 0));
        assert!(irq);
    }

    #[test]
    fn skips_read_only_buffers() {
        let d = SplitDescriptor::new(0x8000, 64, 0, 0);
        let (len, buf, _) = run(&[RawDescriptor::from(d)]);
        assert_eq!(len, 0);
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn buffer_outside_memory_is_not_filled() {
        let d = SplitDescriptor::new(0xffff_0000, 64, VRING_DESC_F_WRITE, 0);
        let (len, _, _) = run(&[RawDescriptor::from(d)]);
        assert_eq!(len, 0);
    }

    #[test]
    fn notification_before_activation_is_ignored() {
        let mem = memory::create(1 << 20).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let d = SplitDescriptor::new(0x8000, 64, VRING_DESC_F_WRITE, 0);
        vq.build_desc_chain(&[RawDescriptor::from(d)]).unwrap();
        let mut early = Rng::new().unwrap();
        early.queue_notify(0);
        assert!(!early.state.is_activated());
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        early
            .activate(mem.clone(), interrupt, vec![vq.create_queue().unwrap()], 0)
            .unwrap();
        // The early notification left nothing behind for the worker to act on.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(vq.used().idx().load(), 0);
        assert!(irq.read().is_err());
        early.queue_notify(0);
        assert!(wait_for_irq(&irq));
        assert_eq!(vq.used().idx().load(), 1);
    }

    #[test]
    fn reset_stops_the_worker_and_a_new_activation_serves_again() {
        let mem = memory::create(1 << 20).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let (mut rng, _irq) = activated(&mem, &vq);
        assert!(rng.state.is_activated());
        assert!(matches!(
            rng.activate(
                mem.clone(),
                Arc::new(Interrupt::new(EventFd::new(0).unwrap())),
                vec![],
                0
            ),
            Err(ActivateError::AlreadyActive(_))
        ));
        rng.reset();
        assert!(!rng.state.is_activated());
        // Notifications of the reset device go nowhere.
        rng.queue_notify(0);
        let d = SplitDescriptor::new(0x8000, 64, VRING_DESC_F_WRITE, 0);
        vq.build_desc_chain(&[RawDescriptor::from(d)]).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        rng.activate(mem.clone(), interrupt, vec![vq.create_queue().unwrap()], 0)
            .unwrap();
        rng.queue_notify(0);
        assert!(wait_for_irq(&irq));
        assert_eq!(vq.used().ring().ref_at(0).unwrap().load().len(), 64);
    }
}
