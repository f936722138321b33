//! The page tables and GDT that put the boot vCPU straight into 64-bit mode.

use vm_memory::{Bytes, GuestAddress};

use super::BootError;
use crate::layout::{GDT_START, IDT_START, PDE_START, PDPTE_START, PML4_START};
use crate::vstate::memory::GuestMemory;

/// GDT entries: null, 64-bit code, data, TSS. Selectors are index * 8.
pub const GDT: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];
pub const CODE_SELECTOR: u16 = 1 << 3;
pub const DATA_SELECTOR: u16 = 2 << 3;
pub const TSS_SELECTOR: u16 = 3 << 3;

/// Packs a segment descriptor from its flags (access byte in bits 0-7, flags in 12-15), base and
/// limit, as the x86 GDT stores them.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Identity-maps the first 1 GiB with 2 MiB pages: enough for the kernel's own start-up code,
/// which builds its real page tables early.
pub fn write_page_tables(mem: &GuestMemory) -> Result<(), BootError> {
    let err = |_| BootError::Write("page tables");
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))
        .map_err(err)?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))
        .map_err(err)?;
    for i in 0..512u64 {
        // Present, writable, 2 MiB page.
        mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8))
            .map_err(err)?;
    }
    Ok(())
}

pub fn write_gdt(mem: &GuestMemory) -> Result<(), BootError> {
    let err = |_| BootError::Write("GDT");
    for (i, entry) in GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_START + i as u64 * 8))
            .map_err(err)?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START)).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::read;
    use crate::vstate::memory;

    #[test]
    fn gdt_entries_match_the_architecture() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0x808b, 0, 0xfffff), 0x008f_8b00_0000_ffff);
        assert_eq!(
            gdt_entry(0x0093, 0x1234_5678, 0xabcd),
            0x1200_9334_5678_abcd
        );
    }

    #[test]
    fn page_tables_identity_map_the_first_gigabyte() {
        let mem = memory::create(16 << 20).unwrap();
        write_page_tables(&mem).unwrap();
        assert_eq!(read::<u64>(&mem, PML4_START), PDPTE_START | 3);
        assert_eq!(read::<u64>(&mem, PDPTE_START), PDE_START | 3);
        assert_eq!(read::<u64>(&mem, PDE_START), 0x83);
        assert_eq!(read::<u64>(&mem, PDE_START + 8), (1 << 21) | 0x83);
        assert_eq!(read::<u64>(&mem, PDE_START + 511 * 8), (511 << 21) | 0x83);
    }

    #[test]
    fn gdt_is_written_in_order() {
        let mem = memory::create(16 << 20).unwrap();
        write_gdt(&mem).unwrap();
        for (i, e) in GDT.iter().enumerate() {
            assert_eq!(read::<u64>(&mem, GDT_START + i as u64 * 8), *e);
        }
    }
}
