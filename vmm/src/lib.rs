//! husk-vmm: a small KVM virtual machine monitor that boots a Linux guest with virtio-mmio devices.
//!
//! The pieces, from the bottom up:
//! - [`vstate`]: KVM itself — the host check, the VM, guest memory, vCPUs and their CPUID.
//! - [`boot`]: everything written into guest memory before the first instruction runs (kernel,
//!   initramfs, boot parameters, page tables, ACPI tables).
//! - [`devices`]: the emulated hardware (serial console, power/reset ports, virtio devices).
//! - [`device_manager`]: owns the buses, hands out MMIO windows and IRQs.
//! - [`vmm`]: ties them together and runs the guest until it powers off, resets or crashes.
//! - [`jail`]: the namespaces, mounts, capabilities and seccomp filters the VMM runs within.

pub mod boot;
pub mod device_manager;
pub mod devices;
pub mod jail;
pub mod layout;
pub mod vmm;
pub mod vstate;

pub use vmm::{run, ConsoleOutput, ExitReason, VmConfig, VmmError};
