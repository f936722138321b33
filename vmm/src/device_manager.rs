//! The device manager: owns the port-I/O and MMIO buses, hands out MMIO windows and IRQs, and
//! tells the kernel command line where the virtio-mmio devices are.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use kvm_ioctls::VmFd;
use linux_loader::cmdline::Cmdline;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::{Bus, BusDevice, BusError};
use crate::devices::legacy::i8042::{self, I8042};
use crate::devices::legacy::power::{self, AcpiPower};
use crate::devices::legacy::serial::SerialConsole;
use crate::devices::virtio::transport::mmio::MmioTransport;
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::devices::StopSender;
use crate::layout::{
    ACPI_PM1A_EVT_PORT, I8042_PORT, SERIAL_IRQ, SERIAL_PORT, VIRTIO_IRQS, VIRTIO_MMIO_SIZE,
    VIRTIO_MMIO_START,
};
use crate::vstate::memory::GuestMemory;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("Cannot create an eventfd for {0}")]
    EventFd(&'static str, #[source] std::io::Error),
    #[error("Cannot connect the interrupt of {0}")]
    Irqfd(&'static str, #[source] kvm_ioctls::Error),
    #[error("Too many virtio devices: at most {} fit", VIRTIO_IRQS.len())]
    NoIrqLeft,
    #[error("Cannot place a device on the bus")]
    Bus(#[source] BusError),
    #[error("Cannot name virtio device {0:#x} on the kernel command line")]
    Cmdline(u64, #[source] linux_loader::cmdline::Error),
}

pub struct DeviceManager {
    pub pio: Bus,
    pub mmio: Bus,
    serial: Option<Arc<Mutex<SerialConsole>>>,
    /// (base, irq) of each virtio-mmio device, in the order they were added.
    virtio: Vec<(u64, u32)>,
    /// The same devices, to stop their workers when the VM stops.
    transports: Vec<Arc<Mutex<MmioTransport>>>,
}

impl Default for DeviceManager {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceManager {
    pub fn new() -> Self {
        Self {
            pio: Bus::default(),
            mmio: Bus::default(),
            serial: None,
            virtio: Vec::new(),
            transports: Vec::new(),
        }
    }

    fn irqfd(vm: &VmFd, gsi: u32, what: &'static str) -> Result<EventFd, DeviceError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| DeviceError::EventFd(what, e))?;
        vm.register_irqfd(&evt, gsi)
            .map_err(|e| DeviceError::Irqfd(what, e))?;
        Ok(evt)
    }

    fn add_pio(
        &mut self,
        dev: Arc<Mutex<dyn BusDevice>>,
        port: u16,
        len: u64,
    ) -> Result<(), DeviceError> {
        self.pio
            .insert(dev, u64::from(port), len)
            .map_err(DeviceError::Bus)
    }

    /// The serial console on COM1, the i8042 reset line and the ACPI power ports.
    pub fn add_legacy(
        &mut self,
        vm: &VmFd,
        console: Box<dyn Write + Send>,
        stop: StopSender,
    ) -> Result<Arc<Mutex<SerialConsole>>, DeviceError> {
        let irq = Self::irqfd(vm, SERIAL_IRQ, "the serial console")?;
        let serial = Arc::new(Mutex::new(SerialConsole::new(irq, console)));
        self.add_pio(serial.clone(), SERIAL_PORT, 8)?;
        self.add_pio(
            Arc::new(Mutex::new(I8042::new(stop.clone()))),
            I8042_PORT,
            i8042::PORT_RANGE,
        )?;
        self.add_pio(
            Arc::new(Mutex::new(AcpiPower::new(stop))),
            ACPI_PM1A_EVT_PORT,
            power::PORT_RANGE,
        )?;
        self.serial = Some(serial.clone());
        Ok(serial)
    }

    /// Puts `device` behind a virtio-mmio transport in the next free window, with the next free
    /// IRQ. Returns the window's base address.
    pub fn add_virtio(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemory,
        device: Box<dyn VirtioDevice>,
    ) -> Result<u64, DeviceError> {
        let index = self.virtio.len();
        let irq = *VIRTIO_IRQS.get(index).ok_or(DeviceError::NoIrqLeft)?;
        let base = VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SIZE;
        let evt = Self::irqfd(vm, irq, "a virtio device")?;
        let transport = MmioTransport::new(device, mem.clone(), Arc::new(Interrupt::new(evt)));
        let transport = Arc::new(Mutex::new(transport));
        self.mmio
            .insert(transport.clone(), base, VIRTIO_MMIO_SIZE)
            .map_err(DeviceError::Bus)?;
        self.virtio.push((base, irq));
        self.transports.push(transport);
        Ok(base)
    }

    /// Stops every virtio device and joins its worker thread. vCPUs may still be running (they
    /// hold the buses), so the devices ignore the guest from then on. Calling it again does
    /// nothing.
    pub fn shutdown_virtio(&self) {
        for transport in &self.transports {
            transport
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .shutdown();
        }
    }

    /// Adds `virtio_mmio.device=` for every virtio device.
    pub fn describe_on_cmdline(&self, cmdline: &mut Cmdline) -> Result<(), DeviceError> {
        for (i, &(base, irq)) in self.virtio.iter().enumerate() {
            cmdline
                .add_virtio_mmio_device(
                    VIRTIO_MMIO_SIZE,
                    vm_memory::GuestAddress(base),
                    irq,
                    Some(i as u32),
                )
                .map_err(|e| DeviceError::Cmdline(base, e))?;
        }
        Ok(())
    }

    /// The last line the guest printed on its console.
    pub fn console_last_line(&self) -> String {
        self.serial
            .as_ref()
            .and_then(|s| s.lock().ok().map(|s| s.last_line()))
            .unwrap_or_default()
    }

    /// Flushes console output that is still buffered.
    pub fn flush_console(&self) {
        if let Some(serial) = &self.serial {
            if let Ok(mut s) = serial.lock() {
                s.flush();
            }
        }
    }
}

impl Drop for DeviceManager {
    /// The vCPU threads keep the buses (and so the devices) alive; the workers are stopped here
    /// even when building the VM fails half-way.
    fn drop(&mut self) {
        self.shutdown_virtio();
    }
}
