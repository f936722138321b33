//! The guest physical address map. One place, so that boot code, ACPI and devices agree.
//!
//! ```text
//! 0x0000_0500  GDT, then IDT
//! 0x0000_7000  boot_params ("zero page")
//! 0x0000_8ff0  initial stack of the boot vCPU (grows down)
//! 0x0000_9000  page tables: PML4, PDPT, PD (identity map of the first 1 GiB)
//! 0x0002_0000  kernel command line
//! 0x000e_0000  ACPI tables (RSDP first), marked reserved in the e820 map
//! 0x0010_0000  start of high memory; the kernel loads at its ELF address (16 MiB)
//! 0xc000_0000  start of the 32-bit MMIO hole (guest RAM above 3 GiB moves to 4 GiB)
//! 0xd000_0000  virtio-mmio device windows, 4 KiB each
//! 0xfec0_0000  IOAPIC, 0xfee0_0000 local APIC
//! ```

pub const GDT_START: u64 = 0x500;
pub const IDT_START: u64 = 0x520;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
pub const CMDLINE_START: u64 = 0x2_0000;
/// The x86 kernel's COMMAND_LINE_SIZE, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// End of the usable low memory below the EBDA.
pub const EBDA_START: u64 = 0x9_fc00;
pub const ACPI_START: u64 = 0xe_0000;
pub const ACPI_END: u64 = 0x10_0000;
pub const HIMEM_START: u64 = 0x10_0000;

pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// Where KVM puts its TSS and identity-map pages (needed on Intel), inside the MMIO hole.
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// Legacy I/O ports we emulate.
pub const SERIAL_PORT: u16 = 0x3f8;
pub const SERIAL_IRQ: u32 = 4;
pub const I8042_PORT: u16 = 0x60;
/// ACPI fixed hardware (our choice of ports): PM1a event block (status + enable, 4 bytes),
/// PM1a control block (2 bytes) and the reset register.
pub const ACPI_PM1A_EVT_PORT: u16 = 0x600;
pub const ACPI_PM1A_EVT_LEN: u8 = 4;
pub const ACPI_PM1A_CNT_PORT: u16 = 0x604;
pub const ACPI_PM1A_CNT_LEN: u8 = 2;
pub const ACPI_RESET_PORT: u16 = 0x606;
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// The ACPI system control interrupt; we never raise it, but the guest wants one to exist.
pub const ACPI_SCI_IRQ: u16 = 9;
/// IRQs for virtio-mmio devices: the ISA lines that nothing else uses. Linux identity-maps ISA
/// IRQs 0-15 onto the IOAPIC when ACPI gives no overrides, so these work as command-line devices.
pub const VIRTIO_IRQS: [u32; 9] = [5, 6, 7, 10, 11, 12, 13, 14, 15];

/// The smallest guest we agree to boot.
pub const MIN_MEMORY_MIB: u64 = 64;
