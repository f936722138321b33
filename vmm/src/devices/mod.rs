//! Emulated hardware.

pub mod bus;
pub mod legacy;
pub mod virtio;

/// Why the guest stopped running. Devices report power-off and reset; vCPUs report crashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest reset: a reboot or a kernel panic (`panic=-1`) through the named device, or a
    /// triple fault (KVM_EXIT_SHUTDOWN, with the vCPU's registers).
    Reset(String),
    /// The guest cannot go on: KVM could not run or emulate it.
    Crash(String),
}

/// Where devices and vCPUs report why the guest stopped; the VMM's main thread receives it.
pub type StopSender = std::sync::mpsc::Sender<StopReason>;
