//! The virtio-mmio transport (virtio 1.2, section 4.2, version 2 register layout).
//!
//! Everything here is driven by guest writes, so every value is checked: unknown offsets,
//! odd access sizes, out-of-range queue numbers and writes in the wrong device status are
//! ignored (with a debug log), never trusted.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

use crate::devices::bus::BusDevice;
use crate::devices::virtio::{
    ActivateError, Interrupt, VirtioDevice, INT_CONFIG, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use crate::vstate::memory::GuestMemory;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4b53_5548; // "HUSK"

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_SEL: u64 = 0x0ac;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    /// Set when the VMM stops: the device's worker is gone and guest writes are ignored.
    shut_down: bool,
}

impl MmioTransport {
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemory, interrupt: Arc<Interrupt>) -> Self {
        let queues = Self::fresh_queues(device.as_ref());
        Self {
            device,
            mem,
            interrupt,
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            shut_down: false,
        }
    }

    /// Stops the device for good (its worker thread is joined); later guest writes are ignored,
    /// so nothing can start it again.
    pub fn shutdown(&mut self) {
        if !self.shut_down {
            self.shut_down = true;
            self.device.shutdown();
        }
    }

    fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
        device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).expect("device queue sizes are powers of two"))
            .collect()
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    fn device_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// True when the driver is between FEATURES_OK and DRIVER_OK: the only time queues may be
    /// configured.
    fn configuring_queues(&self) -> bool {
        self.status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK | STATUS_FAILED) == STATUS_FEATURES_OK
    }

    fn reset(&mut self) {
        self.device.reset();
        self.queues = Self::fresh_queues(self.device.as_ref());
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.ack(u32::MAX);
    }

    fn set_status(&mut self, new: u32) {
        if new == 0 {
            self.reset();
            return;
        }
        // Bits may only be added, never cleared, except by a reset.
        if new & self.status != self.status {
            tracing::debug!(
                old = self.status,
                new,
                "virtio-mmio: status bits cleared without reset"
            );
            return;
        }
        let mut new = new;
        let added = new & !self.status;
        if added & STATUS_FEATURES_OK != 0 {
            let ok = self.driver_features & !self.device_features() == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                // The driver reads the status back and sees that FEATURES_OK did not stick.
                new &= !STATUS_FEATURES_OK;
            }
        }
        if added & STATUS_DRIVER_OK != 0 {
            if new & STATUS_FEATURES_OK == 0 {
                return;
            }
            if let Err(e) = self.activate() {
                tracing::warn!(device = self.device.device_type(), error = %e, "virtio device failed to activate");
                self.status = new | STATUS_NEEDS_RESET;
                self.interrupt.signal(INT_CONFIG);
                return;
            }
        }
        self.status = new;
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        for (i, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                return Err(ActivateError::BadQueue(i));
            }
        }
        // The device gets its own copy; ours keeps answering register reads (QueueReady).
        let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter().enumerate() {
            let mut q = Queue::try_from(q.state()).map_err(|_| ActivateError::BadQueue(i))?;
            q.set_event_idx(event_idx);
            queues.push(q);
        }
        self.device.activate(
            self.mem.clone(),
            self.interrupt.clone(),
            queues,
            self.driver_features,
        )
    }

    fn read_register(&mut self, offset: u64) -> Option<u32> {
        Some(match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            // No shared memory regions: a length of all ones means "absent".
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => return None,
        })
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        let configuring = self.configuring_queues();
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES if self.status & STATUS_FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM if configuring => {
                if let Some(q) = self.selected_queue() {
                    // Queue rejects sizes that are not a power of two or exceed the maximum.
                    q.set_size(v as u16);
                }
            }
            REG_QUEUE_READY if configuring => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH
                if configuring =>
            {
                let Some(q) = self.selected_queue() else {
                    return;
                };
                let (low, high) = if offset & 4 == 0 {
                    (Some(v), None)
                } else {
                    (None, Some(v))
                };
                match offset & !4 {
                    REG_QUEUE_DESC_LOW => q.set_desc_table_address(low, high),
                    REG_QUEUE_DRIVER_LOW => q.set_avail_ring_address(low, high),
                    _ => q.set_used_ring_address(low, high),
                }
            }
            REG_QUEUE_NOTIFY if self.status & STATUS_DRIVER_OK != 0 => {
                if (v as usize) < self.queues.len() {
                    self.device.queue_notify(v as u16);
                }
            }
            REG_INTERRUPT_ACK => self.interrupt.ack(v),
            REG_STATUS => self.set_status(v),
            REG_SHM_SEL => {}
            _ => tracing::debug!(
                offset,
                value = v,
                status = self.status,
                "virtio-mmio: write ignored"
            ),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        let value = match <&mut [u8; 4]>::try_from(&mut *data) {
            Ok(_) if offset % 4 == 0 => self.read_register(offset),
            _ => None,
        };
        match value {
            Some(v) => data.copy_from_slice(&v.to_le_bytes()),
            None => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if self.shut_down {
            tracing::debug!(offset, "virtio-mmio: write after shutdown ignored");
            return;
        }
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset % 4 == 0 => self.write_register(offset, u32::from_le_bytes(bytes)),
            _ => tracing::debug!(
                offset,
                len = data.len(),
                "virtio-mmio: odd register access ignored"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::vstate::memory;
    use ActivateError;

    #[derive(Default)]
    struct Record {
        activated: Option<(usize, u64)>,
        event_idx: Vec<bool>,
        notified: Vec<u16>,
        resets: usize,
        shutdowns: usize,
    }

    struct Dummy(Arc<Mutex<Record>>, u64);

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn features(&self) -> u64 {
            self.1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 32]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            crate::devices::virtio::read_config_bytes(&[1, 2, 3, 4], offset, data)
        }
        fn activate(
            &mut self,
            _mem: GuestMemory,
            _irq: Arc<Interrupt>,
            queues: Vec<Queue>,
            features: u64,
        ) -> Result<(), ActivateError> {
            let mut rec = self.0.lock().unwrap();
            rec.activated = Some((queues.len(), features));
            rec.event_idx = queues.iter().map(|q| q.event_idx_enabled()).collect();
            Ok(())
        }
        fn queue_notify(&mut self, index: u16) {
            self.0.lock().unwrap().notified.push(index);
        }
        fn reset(&mut self) {
            self.0.lock().unwrap().resets += 1;
        }
        fn shutdown(&mut self) {
            self.0.lock().unwrap().shutdowns += 1;
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Record>>) {
        transport_with_features(0b101)
    }

    fn transport_with_features(features: u64) -> (MmioTransport, Arc<Mutex<Record>>) {
        let rec = Arc::new(Mutex::new(Record::default()));
        let mem = memory::create(1 << 20).unwrap();
        let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        (
            MmioTransport::new(Box::new(Dummy(rec.clone(), features)), mem, irq),
            rec,
        )
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    /// Brings the device up the way Linux's virtio_mmio driver does.
    fn negotiate(t: &mut MmioTransport, features_hi: u32) {
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE);
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, REG_DRIVER_FEATURES_SEL, 0);
        w(t, REG_DRIVER_FEATURES, 0b1);
        w(t, REG_DRIVER_FEATURES_SEL, 1);
        w(t, REG_DRIVER_FEATURES, features_hi);
        w(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
    }

    fn set_up_queue(t: &mut MmioTransport, sel: u32, size: u32, base: u64) {
        w(t, REG_QUEUE_SEL, sel);
        w(t, REG_QUEUE_NUM, size);
        w(t, REG_QUEUE_DESC_LOW, base as u32);
        w(t, REG_QUEUE_DESC_HIGH, 0);
        w(t, REG_QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
        w(t, REG_QUEUE_DRIVER_HIGH, 0);
        w(t, REG_QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
        w(t, REG_QUEUE_DEVICE_HIGH, 0);
        w(t, REG_QUEUE_READY, 1);
    }

    #[test]
    fn identification_registers() {
        let (mut t, _) = transport();
        assert_eq!(r(&mut t, REG_MAGIC), MAGIC);
        assert_eq!(r(&mut t, REG_VERSION), 2);
        assert_eq!(r(&mut t, REG_DEVICE_ID), 42);
        assert_eq!(r(&mut t, REG_VENDOR_ID), VENDOR_ID);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 0);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 0b101);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1, "VERSION_1 is offered");
        w(&mut t, REG_DEVICE_FEATURES_SEL, 7);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 0);
    }

    #[test]
    fn queue_limits_per_selected_queue() {
        let (mut t, _) = transport();
        w(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 32);
        w(&mut t, REG_QUEUE_SEL, 9);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 0, "absent queue");
        w(&mut t, REG_QUEUE_READY, 1); // ignored: no such queue, and not configuring
    }

    #[test]
    fn full_bring_up_activates_with_acked_features() {
        let (mut t, rec) = transport();
        negotiate(&mut t, 1);
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        set_up_queue(&mut t, 0, 16, 0x1_0000);
        set_up_queue(&mut t, 1, 32, 0x2_0000);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 1);
        w(&mut t, REG_STATUS, 0xf);
        assert_eq!(r(&mut t, REG_STATUS), 0xf);
        assert_eq!(
            rec.lock().unwrap().activated,
            Some((2, VIRTIO_F_VERSION_1 | 1))
        );
        w(&mut t, REG_QUEUE_NOTIFY, 1);
        w(&mut t, REG_QUEUE_NOTIFY, 7); // no such queue: ignored
        assert_eq!(rec.lock().unwrap().notified, vec![1]);
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let (mut t, rec) = transport();
        negotiate(&mut t, 0);
        assert_eq!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        w(&mut t, REG_STATUS, 0xf);
        assert!(rec.lock().unwrap().activated.is_none());
    }

    #[test]
    fn features_the_device_lacks_are_refused() {
        let (mut t, _) = transport();
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, REG_DRIVER_FEATURES_SEL, 0);
        w(&mut t, REG_DRIVER_FEATURES, 0b10);
        w(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        w(&mut t, REG_DRIVER_FEATURES, 1);
        w(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn queue_setup_outside_features_ok_is_ignored() {
        let (mut t, _) = transport();
        w(&mut t, REG_QUEUE_SEL, 0);
        w(&mut t, REG_QUEUE_READY, 1);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
    }

    #[test]
    fn queue_outside_guest_memory_fails_activation() {
        let (mut t, rec) = transport();
        negotiate(&mut t, 1);
        set_up_queue(&mut t, 0, 16, 0x4000_0000); // beyond the 1 MiB of memory
        w(&mut t, REG_STATUS, 0xf);
        assert!(rec.lock().unwrap().activated.is_none());
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
        assert_ne!(r(&mut t, REG_INTERRUPT_STATUS) & INT_CONFIG, 0);
    }

    #[test]
    fn writing_zero_resets() {
        let (mut t, rec) = transport();
        negotiate(&mut t, 1);
        set_up_queue(&mut t, 0, 16, 0x1_0000);
        w(&mut t, REG_STATUS, 0);
        assert_eq!(r(&mut t, REG_STATUS), 0);
        assert_eq!(rec.lock().unwrap().resets, 1);
        w(&mut t, REG_QUEUE_SEL, 0);
        assert_eq!(
            r(&mut t, REG_QUEUE_READY),
            0,
            "queues are fresh after reset"
        );
    }

    #[test]
    fn clearing_status_bits_without_reset_is_ignored() {
        let (mut t, _) = transport();
        negotiate(&mut t, 1);
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
        assert_eq!(
            r(&mut t, REG_STATUS),
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK
        );
    }

    #[test]
    fn interrupt_status_and_ack() {
        let (mut t, _) = transport();
        t.interrupt.signal(1);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 1);
        w(&mut t, REG_INTERRUPT_ACK, 1);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn odd_sizes_and_offsets_read_zero_and_config_is_bounded() {
        let (mut t, _) = transport();
        let mut two = [0xff; 2];
        t.read(REG_MAGIC, &mut two);
        assert_eq!(two, [0, 0]);
        let mut four = [0xff; 4];
        t.read(REG_MAGIC + 1, &mut four);
        assert_eq!(four, [0; 4]);
        t.read(0x1c, &mut four); // a hole in the register map
        assert_eq!(four, [0; 4]);
        let mut cfg = [0; 2];
        t.read(CONFIG_SPACE + 2, &mut cfg);
        assert_eq!(cfg, [3, 4]);
        let mut past = [9; 4];
        t.read(CONFIG_SPACE + 2, &mut past);
        assert_eq!(past, [0; 4], "a read past the config space reads zero");
        past = [9; 4];
        t.read(u64::MAX / 2, &mut past);
        assert_eq!(past, [0; 4]);
    }

    #[test]
    fn acked_event_idx_reaches_the_queues() {
        let (mut t, rec) = transport_with_features(VIRTIO_RING_F_EVENT_IDX);
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, REG_DRIVER_FEATURES_SEL, 0);
        w(&mut t, REG_DRIVER_FEATURES, VIRTIO_RING_F_EVENT_IDX as u32);
        w(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        w(&mut t, REG_DRIVER_FEATURES, 1);
        w(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        set_up_queue(&mut t, 0, 16, 0x1_0000);
        w(&mut t, REG_STATUS, 0xf);
        assert_eq!(rec.lock().unwrap().event_idx, vec![true, true]);

        let (mut t, rec) = transport();
        negotiate(&mut t, 1);
        set_up_queue(&mut t, 0, 16, 0x1_0000);
        w(&mut t, REG_STATUS, 0xf);
        assert_eq!(rec.lock().unwrap().event_idx, vec![false, false]);
    }

    #[test]
    fn after_shutdown_the_guest_cannot_restart_the_device() {
        let (mut t, rec) = transport();
        negotiate(&mut t, 1);
        set_up_queue(&mut t, 0, 16, 0x1_0000);
        w(&mut t, REG_STATUS, 0xf);
        t.shutdown();
        t.shutdown();
        assert_eq!(rec.lock().unwrap().shutdowns, 1);
        w(&mut t, REG_STATUS, 0);
        negotiate(&mut t, 1);
        w(&mut t, REG_STATUS, 0xf);
        w(&mut t, REG_QUEUE_NOTIFY, 0);
        let rec = rec.lock().unwrap();
        assert_eq!((rec.resets, rec.notified.len()), (0, 0));
        assert_eq!(r(&mut t, REG_MAGIC), MAGIC, "registers still read");
    }
}
