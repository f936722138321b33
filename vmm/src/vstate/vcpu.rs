//! vCPUs: their start-up state and the thread that runs each one.

use std::sync::mpsc::Sender;

use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestAddress;

use crate::boot::gdt::{CODE_SELECTOR, DATA_SELECTOR, GDT, TSS_SELECTOR};
use crate::devices::bus::Bus;
use crate::devices::StopReason;
use crate::layout::{BOOT_STACK_POINTER, GDT_START, IDT_START, PML4_START, ZERO_PAGE_START};
use crate::vstate::cpuid::{self, Topology};

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("Cannot create vCPU {0}")]
    Create(u8, #[source] kvm_ioctls::Error),
    #[error("Cannot read the CPUID KVM supports")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    #[error("Cannot set up vCPU {0} ({1})")]
    Setup(u8, &'static str, #[source] kvm_ioctls::Error),
    #[error("Cannot start the thread of vCPU {0}")]
    Thread(u8, #[source] std::io::Error),
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// The CPUID table KVM supports, read once and adapted per vCPU.
pub fn supported_cpuid(kvm: &kvm_ioctls::Kvm) -> Result<CpuId, VcpuError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(VcpuError::SupportedCpuid)
}

/// Creates vCPU `id` and sets the state it starts from. vCPU 0 starts at the kernel's 64-bit
/// entry point; the others wait in the in-kernel local APIC for the guest's start-up IPI.
pub fn create(
    vm: &VmFd,
    id: u8,
    count: u8,
    base_cpuid: &CpuId,
    tsc_deadline: bool,
    entry: GuestAddress,
) -> Result<VcpuFd, VcpuError> {
    let err = |what| move |e| VcpuError::Setup(id, what, e);
    let fd = vm
        .create_vcpu(u64::from(id))
        .map_err(|e| VcpuError::Create(id, e))?;

    let mut cpuid = base_cpuid.clone();
    cpuid::sanitize(
        cpuid.as_mut_slice(),
        Topology {
            vcpu_id: id,
            vcpu_count: count,
            tsc_deadline,
        },
    );
    fd.set_cpuid2(&cpuid).map_err(err("CPUID"))?;

    let msrs = Msrs::from_entries(&boot_msrs()).expect("boot MSR list fits");
    fd.set_msrs(&msrs).map_err(err("MSRs"))?;

    let mut lapic = fd.get_lapic().map_err(err("local APIC"))?;
    set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    fd.set_lapic(&lapic).map_err(err("local APIC"))?;

    if id == 0 {
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        fd.set_fpu(&fpu).map_err(err("FPU"))?;
        let mut sregs = fd.get_sregs().map_err(err("special registers"))?;
        long_mode_sregs(&mut sregs);
        fd.set_sregs(&sregs).map_err(err("special registers"))?;
        fd.set_regs(&boot_regs(entry)).map_err(err("registers"))?;
    }
    Ok(fd)
}

fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

fn set_lvt_mode(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let mut bytes = [0u8; 4];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = regs[offset + i] as u8;
    }
    let v = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

/// A KVM segment for GDT entry `index` of our boot GDT.
fn segment(index: u16) -> kvm_segment {
    let e = GDT[index as usize];
    let limit = ((e & 0xffff) | ((e >> 32) & 0xf_0000)) as u32;
    let g = ((e >> 55) & 1) as u8;
    kvm_segment {
        base: ((e >> 16) & 0xff_ffff) | ((e >> 32) & 0xff00_0000),
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: index * 8,
        type_: ((e >> 40) & 0xf) as u8,
        present: ((e >> 47) & 1) as u8,
        dpl: ((e >> 45) & 3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g,
        avl: ((e >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Long mode with paging on, flat segments from our GDT, our page tables.
pub fn long_mode_sregs(sregs: &mut kvm_sregs) {
    let code = segment(CODE_SELECTOR / 8);
    let data = segment(DATA_SELECTOR / 8);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(TSS_SELECTOR / 8);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
}

/// The Linux 64-bit boot protocol: RSI points at boot_params, interrupts off.
pub fn boot_regs(entry: GuestAddress) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry.0,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// Runs vCPU `id` until the guest stops; reports why on `stop`.
pub fn run(mut fd: VcpuFd, id: u8, pio: Bus, mmio: Bus, stop: Sender<StopReason>) {
    let reason = loop {
        match fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !pio.read(u64::from(port), data) {
                    // Nothing there: an open bus reads all ones.
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                pio.write(u64::from(port), data);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !mmio.read(addr, data) {
                    data.fill(0);
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                mmio.write(addr, data);
            }
            Ok(VcpuExit::Shutdown) => break StopReason::Reset(triple_fault(&fd, id)),
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => break StopReason::PowerOff,
                KVM_SYSTEM_EVENT_RESET => break StopReason::Reset("a KVM reset event".into()),
                KVM_SYSTEM_EVENT_CRASH => {
                    break StopReason::Crash("the guest reported a crash".into())
                }
                other => tracing::warn!(vcpu = id, kind = other, "unknown KVM system event"),
            },
            Ok(VcpuExit::Hlt) => {
                break StopReason::Crash(format!("vCPU {id} halted with interrupts off"));
            }
            Ok(VcpuExit::InternalError) => {
                let run = fd.get_kvm_run();
                // SAFETY: KVM filled the `internal` member of the exit union for this exit reason.
                let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                break StopReason::Crash(format!(
                    "KVM internal error on vCPU {id} (suberror {suberror}): KVM could not emulate the guest"
                ));
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                break StopReason::Crash(format!(
                    "KVM could not enter vCPU {id} (hardware reason {reason:#x} on host CPU {cpu})"
                ));
            }
            Ok(VcpuExit::IrqWindowOpen | VcpuExit::Intr) => {}
            Ok(other) => {
                break StopReason::Crash(format!("unexpected exit on vCPU {id}: {other:?}"));
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => break StopReason::Crash(format!("KVM_RUN failed on vCPU {id}: {e}")),
        }
    };
    tracing::debug!(vcpu = id, ?reason, "vCPU stopped");
    let _ = stop.send(reason);
}

/// What a triple fault (KVM_EXIT_SHUTDOWN) left in vCPU `id`: the registers that say where the
/// guest was, for the log line that reports the reset. KVM on AMD resets the vCPU before it
/// reports the shutdown, so there they only show the reset vector; on Intel they are the
/// faulting state.
fn triple_fault(fd: &VcpuFd, id: u8) -> String {
    let regs = match (fd.get_regs(), fd.get_sregs()) {
        (Ok(r), Ok(s)) if r.rip == 0xfff0 && s.cs.selector == 0xf000 => {
            "KVM already reset the registers (AMD), so they do not show where".to_string()
        }
        (Ok(r), Ok(s)) => format!(
            "rip={:#x} rsp={:#x} rflags={:#x} cs={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} idt={:#x}/{:#x}",
            r.rip, r.rsp, r.rflags, s.cs.selector, s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.idt.base, s.idt.limit
        ),
        (Err(e), _) | (_, Err(e)) => format!("registers unreadable: {e}"),
    };
    format!("a triple fault on vCPU {id} (KVM_EXIT_SHUTDOWN): {regs}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit() {
        let cs = segment(1);
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.type_), (1, 0, 1, 1, 0xb));
        assert_eq!(cs.selector, 0x8);
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
    }

    #[test]
    fn data_and_tss_segments() {
        let ds = segment(2);
        assert_eq!((ds.l, ds.db, ds.type_, ds.selector), (0, 1, 3, 0x10));
        let tr = segment(3);
        assert_eq!((tr.s, tr.type_, tr.selector), (0, 0xb, 0x18));
    }

    #[test]
    fn long_mode_control_registers() {
        let mut sregs = kvm_sregs::default();
        long_mode_sregs(&mut sregs);
        assert_eq!(
            sregs.cr0 & (X86_CR0_PE | X86_CR0_PG),
            X86_CR0_PE | X86_CR0_PG
        );
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr4 & X86_CR4_PAE, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(sregs.gdt.base, GDT_START);
    }

    #[test]
    fn boot_regs_follow_the_64_bit_protocol() {
        let regs = boot_regs(GuestAddress(0x100_0000));
        assert_eq!(regs.rip, 0x100_0000);
        assert_eq!(regs.rsi, ZERO_PAGE_START);
        assert_eq!(regs.rflags, 2);
    }

    #[test]
    fn lvt_mode_is_set_without_touching_other_bits() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0] = 0x30;
        regs[APIC_LVT0 + 2] = 0x01; // masked bit (16)
        set_lvt_mode(&mut regs, APIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT0] as u8, 0x30);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x07);
        assert_eq!(regs[APIC_LVT0 + 2] as u8, 0x01);
    }
}
