//! virtio-rng: fills the guest's buffers from the host's `/dev/urandom`, so the guest kernel's
//! entropy pool is seeded at boot without waiting for jitter.

use std::fs::File;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryError};

use super::{ActivateError, DeviceState, Interrupt, VirtioDevice, INT_VRING, TYPE_RNG};
use crate::vstate::memory::GuestMemory;

const QUEUE_SIZES: [u16; 1] = [256];
/// The most we hand out per request, so one guest request cannot make us read without bound.
const MAX_REQUEST: u32 = 64 * 1024;

pub struct Rng {
    source: File,
    state: DeviceState,
}

impl Rng {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            source: File::open("/dev/urandom")?,
            state: DeviceState::Inactive,
        })
    }

    fn process_queue(&mut self) {
        let DeviceState::Activated {
            mem,
            interrupt,
            queues,
        } = &mut self.state
        else {
            return;
        };
        let mem: &GuestMemory = mem;
        let queue = &mut queues[0];
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let mut written = 0u32;
            for desc in chain {
                if !desc.is_write_only() || written >= MAX_REQUEST {
                    continue;
                }
                let len = desc.len().min(MAX_REQUEST - written) as usize;
                match fill(mem, &mut self.source, desc.addr(), len) {
                    Ok(n) => written += n as u32,
                    Err(e) => {
                        tracing::debug!(error = %e, "virtio-rng: bad descriptor");
                        break;
                    }
                }
            }
            if queue.add_used(mem, head, written).is_err() {
                tracing::debug!("virtio-rng: cannot return a used descriptor");
                break;
            }
            used_any = true;
        }
        if used_any && queue.needs_notification(mem).unwrap_or(true) {
            interrupt.signal(INT_VRING);
        }
    }
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
        self.state = DeviceState::Activated {
            mem,
            interrupt,
            queues,
        };
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        if index == 0 {
            self.process_queue();
        }
    }

    fn reset(&mut self) {
        self.state = DeviceState::Inactive;
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::vstate::memory;

    const VRING_DESC_F_WRITE: u16 = 2;

    fn run(descs: &[RawDescriptor]) -> (u32, Vec<u8>, bool) {
        let mem = memory::create(1 << 20).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.build_desc_chain(descs).unwrap();
        let q: Queue = vq.create_queue().unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        let mut rng = Rng::new().unwrap();
        rng.activate(mem.clone(), interrupt, vec![q], 0).unwrap();
        rng.queue_notify(0);
        let used = vq.used();
        let elem = used.ring().ref_at(0).unwrap().load();
        let mut buf = vec![0u8; 64];
        mem.read_slice(&mut buf, GuestAddress(0x8000)).unwrap();
        (elem.len(), buf, irq.read().is_ok())
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
}
