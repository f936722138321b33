//! The KVM VM: memory slots and the in-kernel interrupt controllers.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemory as _, GuestMemoryRegion};

use crate::layout::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};
use crate::vstate::memory::GuestMemory;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("Cannot create the KVM VM")]
    Create(#[source] kvm_ioctls::Error),
    #[error("Cannot set up the KVM VM ({0})")]
    Setup(&'static str, #[source] kvm_ioctls::Error),
}

pub fn create(kvm: &Kvm, mem: &GuestMemory) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(VmError::Create)?;
    vm.set_tss_address(KVM_TSS_ADDR)
        .map_err(|e| VmError::Setup("TSS address", e))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
        .map_err(|e| VmError::Setup("identity map address", e))?;
    // PIC, IOAPIC and local APICs in the kernel: interrupts never need a trip to userspace.
    vm.create_irq_chip()
        .map_err(|e| VmError::Setup("interrupt controller", e))?;
    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM (the VMM
        // keeps both until the process exits), and the slots do not overlap.
        unsafe { vm.set_user_memory_region(region_desc) }
            .map_err(|e| VmError::Setup("guest memory", e))?;
    }
    Ok(vm)
}
