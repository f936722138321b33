//! KVM state: the host's KVM, the VM, its memory and its vCPUs.

pub mod cpuid;
pub mod kvm;
pub mod memory;
pub mod vcpu;
pub mod vm;
