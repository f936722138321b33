//! ACPI tables: the CPU list (MADT), power-off through the PM1a control register and reset
//! through the reset register (FADT), and `\_S5` in the DSDT so that the guest knows it may
//! power off. Nothing else: no PCI, no PM timer, no GPEs, no buttons, no CMOS RTC.
//!
//! The FADT is a full (not hardware-reduced) one on purpose: Linux drops the legacy PIC and its
//! ISA IRQs on hardware-reduced platforms, and our serial port and command-line virtio-mmio
//! devices live on those IRQs.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress};

use super::BootError;
use crate::layout::{
    ACPI_END, ACPI_PM1A_CNT_LEN, ACPI_PM1A_CNT_PORT, ACPI_PM1A_EVT_LEN, ACPI_PM1A_EVT_PORT,
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_SCI_IRQ, ACPI_START, APIC_ADDR, IOAPIC_ADDR,
};
use crate::vstate::memory::GuestMemory;

const OEM_ID: [u8; 6] = *b"HUSK  ";
const OEM_TABLE_ID: [u8; 8] = *b"HUSKVMM ";
const OEM_REVISION: u32 = 1;
/// The sleep type we give S5; the guest writes `(S5_TYPE << 10) | SLP_EN` to PM1a control.
pub const S5_SLEEP_TYPE: u8 = 5;
/// SLP_EN in the PM1 control register.
pub const PM1_SLEEP_ENABLE: u16 = 1 << 13;
/// SCI_EN in the PM1 control register: the platform is in ACPI mode (always, for us).
pub const PM1_SCI_ENABLE: u16 = 1;
/// IA-PC boot architecture flags: no VGA, no MSI, no CMOS RTC (we emulate none of them).
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 3) | (1 << 5);

/// Builds every table; returns (guest address, bytes) pairs, RSDP first.
pub fn build_tables(vcpu_count: u8) -> Vec<(u64, Vec<u8>)> {
    let align = |a: u64| (a + 15) & !15;
    let rsdp_addr = ACPI_START;
    let xsdt_addr = align(rsdp_addr + Rsdp::len() as u64);

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&S5_SLEEP_TYPE, &0u8]),
    )
    .to_aml_bytes(&mut dsdt);
    let dsdt = dsdt.as_slice().to_vec();

    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_ADDR),
    );
    for id in 0..vcpu_count {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    let madt = to_bytes(&madt);

    let io = |port: u16, bytes: u8, access| {
        GAS::new(AddressSpace::SystemIo, bytes * 8, 0, access, port.into())
    };
    let fadt_len = acpi_tables::fadt::FADT::len() as u64;
    let fadt_addr = align(xsdt_addr + 36 + 3 * 8);
    let madt_addr = align(fadt_addr + fadt_len);
    let dsdt_addr = align(madt_addr + madt.len() as u64);

    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::Wbinvd)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup)
        .flag(Flags::Headless);
    fadt.sci_int = ACPI_SCI_IRQ.into();
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.pm1a_evt_blk = u32::from(ACPI_PM1A_EVT_PORT).into();
    fadt.pm1_evt_len = ACPI_PM1A_EVT_LEN;
    fadt.x_pm1a_evt_blk = io(
        ACPI_PM1A_EVT_PORT,
        ACPI_PM1A_EVT_LEN,
        AccessSize::WordAccess,
    );
    fadt.pm1a_cnt_blk = u32::from(ACPI_PM1A_CNT_PORT).into();
    fadt.pm1_cnt_len = ACPI_PM1A_CNT_LEN;
    fadt.x_pm1a_cnt_blk = io(
        ACPI_PM1A_CNT_PORT,
        ACPI_PM1A_CNT_LEN,
        AccessSize::WordAccess,
    );
    fadt.reset_reg = io(ACPI_RESET_PORT, 1, AccessSize::ByteAccess);
    fadt.reset_value = ACPI_RESET_VALUE;
    let fadt = to_bytes(&fadt.finalize());

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = to_bytes(&xsdt);

    vec![
        (rsdp_addr, to_bytes(&Rsdp::new(OEM_ID, xsdt_addr))),
        (xsdt_addr, xsdt),
        (fadt_addr, fadt),
        (madt_addr, madt),
        (dsdt_addr, dsdt),
    ]
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

pub fn write_tables(mem: &GuestMemory, vcpu_count: u8) -> Result<(), BootError> {
    for (addr, bytes) in build_tables(vcpu_count) {
        if addr + bytes.len() as u64 > ACPI_END {
            return Err(BootError::Write(
                "ACPI tables (too many vCPUs for the table area)",
            ));
        }
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(|_| BootError::Write("ACPI tables"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn tables_are_checksummed_and_do_not_overlap() {
        let tables = build_tables(4);
        let mut end = 0;
        for (i, (addr, bytes)) in tables.iter().enumerate() {
            assert!(*addr >= end, "table {i} overlaps the previous one");
            end = addr + bytes.len() as u64;
            if i == 0 {
                assert_eq!(&bytes[..8], b"RSD PTR ");
                assert_eq!(sum(&bytes[..20]), 0);
                assert_eq!(sum(bytes), 0);
            } else {
                let len = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
                assert_eq!(len as usize, bytes.len(), "table {i} length field");
                assert_eq!(sum(bytes), 0, "table {i} checksum");
            }
        }
        assert!(end <= ACPI_END);
    }

    #[test]
    fn xsdt_points_at_fadt_and_madt_and_fadt_at_dsdt() {
        let tables = build_tables(2);
        let xsdt = &tables[1].1;
        let entry = |i: usize| u64::from_le_bytes(xsdt[36 + i * 8..44 + i * 8].try_into().unwrap());
        assert_eq!(entry(0), tables[2].0);
        assert_eq!(&tables[2].1[..4], b"FACP");
        assert_eq!(entry(1), tables[3].0);
        assert_eq!(&tables[3].1[..4], b"APIC");
        let fadt = &tables[2].1;
        let x_dsdt = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        assert_eq!(x_dsdt, tables[4].0);
        assert_eq!(&tables[4].1[..4], b"DSDT");
    }

    #[test]
    fn madt_lists_every_vcpu() {
        let tables = build_tables(3);
        let madt = &tables[3].1;
        // Header (36) + local APIC address and flags (8), then 8-byte local APIC entries.
        let apics: Vec<u8> = madt[44..]
            .chunks(8)
            .take_while(|c| c[0] == 0)
            .map(|c| c[3])
            .collect();
        assert_eq!(apics, vec![0, 1, 2]);
    }

    #[test]
    fn dsdt_names_s5() {
        let tables = build_tables(1);
        let dsdt = &tables[4].1;
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
    }
}
