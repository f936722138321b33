//! virtio devices over the MMIO transport. Every device has the same shape: a type implementing
//! [`VirtioDevice`], an explicit [`DeviceState`], a [`worker::Worker`] that serves its queues
//! while it is activated (each queue drained by [`queue::drain`]), and its tests beside it.

pub mod fs;
pub mod net;
pub mod queue;
pub mod rng;
pub mod transport;
pub mod vsock;
pub mod worker;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::vstate::memory::GuestMemory;
use worker::WorkerError;

/// VIRTIO_F_VERSION_1: we only speak the modern (1.x) interface.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_F_RING_EVENT_IDX: notification suppression by ring indices (virtio-net offers it); the
/// transport and [`queue::drain`] honour it.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Interrupt status bits of the MMIO transport.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

pub const TYPE_NET: u32 = 1;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_BALLOON: u32 = 5;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// The interrupt line of one device and the status bits the driver reads and acknowledges.
pub struct Interrupt {
    status: AtomicU32,
    irq: EventFd,
}

impl Interrupt {
    pub fn new(irq: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irq,
        }
    }

    /// Sets `bits` in the interrupt status and raises the line.
    pub fn signal(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.irq.write(1) {
            tracing::warn!(error = %e, "cannot raise virtio interrupt");
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("Queue {0} is not valid in guest memory")]
    BadQueue(usize),
    #[error("Device {0} cannot start")]
    Device(&'static str, #[source] std::io::Error),
    #[error("Device {0} cannot start its worker")]
    Worker(&'static str, #[source] WorkerError),
    #[error("Device {0} is already active")]
    AlreadyActive(&'static str),
}

/// Whether the driver has activated a device, and what the device runs while it is active
/// (its [`worker::Worker`]). Queue notifications reach an `Inactive` device but do nothing.
pub enum DeviceState<T> {
    /// Before DRIVER_OK, and again after a reset.
    Inactive,
    Activated(T),
}

impl<T> DeviceState<T> {
    pub fn is_activated(&self) -> bool {
        matches!(self, DeviceState::Activated(_))
    }

    /// Goes back to `Inactive` and hands over what the activation held, if anything.
    pub fn deactivate(&mut self) -> Option<T> {
        match std::mem::replace(self, DeviceState::Inactive) {
            DeviceState::Activated(active) => Some(active),
            DeviceState::Inactive => None,
        }
    }
}

/// One virtio device behind the transport.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Feature bits offered to the driver (VIRTIO_F_VERSION_1 is added by the transport).
    fn features(&self) -> u64;
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads device configuration space; the transport has checked nothing but the offset.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device with the queues the driver set up.
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
        acked_features: u64,
    ) -> Result<(), ActivateError>;
    /// The driver notified queue `index`.
    fn queue_notify(&mut self, index: u16);
    /// The driver reset the device: stop its worker, drop all state and go back to `Inactive`.
    fn reset(&mut self);
    /// The VMM is stopping: stop the worker and wait for it. The device is not used again.
    fn shutdown(&mut self) {
        self.reset();
    }
}

/// Copies `src` (a device's config space) into `data` at `offset`; an access that does not lie
/// wholly inside `src` reads zeros. Guest-chosen offsets and lengths cannot index outside `src`.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    let bytes = usize::try_from(offset)
        .ok()
        .and_then(|start| src.get(start..start.checked_add(data.len())?));
    match bytes {
        Some(bytes) => data.copy_from_slice(bytes),
        None => data.fill(0),
    }
}
