//! Preparing guest memory for the Linux 64-bit boot protocol: the kernel ELF at its own address,
//! the initramfs at the top of low memory, the command line, boot_params with the e820 map, page
//! tables and a GDT, and the ACPI tables that describe CPUs and power control.

pub mod acpi;
pub mod gdt;
pub mod params;

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::elf::Elf;
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemory as _};

use crate::layout::{CMDLINE_START, HIMEM_START, MMIO_HOLE_START};
use crate::vstate::memory::GuestMemory;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("Kernel {0} does not exist")]
    KernelMissing(PathBuf),
    #[error("Kernel {0} cannot be read")]
    KernelOpen(PathBuf, #[source] std::io::Error),
    #[error("Kernel {0} is not a 64-bit ELF vmlinux that fits in guest memory (husk boots the uncompressed vmlinux, not a bzImage)")]
    KernelLoad(PathBuf, #[source] linux_loader::loader::Error),
    #[error("Initramfs {0} does not exist")]
    InitrdMissing(PathBuf),
    #[error("Initramfs {0} cannot be read")]
    InitrdRead(PathBuf, #[source] std::io::Error),
    #[error("Guest memory of {memory_mib} MiB is too small for the kernel and initramfs ({needed_mib} MiB needed at least)")]
    TooLittleMemory { memory_mib: u64, needed_mib: u64 },
    #[error("Kernel command line is invalid or longer than the kernel accepts")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("Cannot write the {0} into guest memory")]
    Write(&'static str),
}

/// Where things landed in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct BootLayout {
    pub entry: GuestAddress,
    pub initrd: Option<(GuestAddress, u64)>,
}

/// Loads the kernel ELF and returns its entry point and the end of its image.
pub fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<(GuestAddress, u64), BootError> {
    if !path.exists() {
        return Err(BootError::KernelMissing(path.into()));
    }
    let mut file = File::open(path).map_err(|e| BootError::KernelOpen(path.into(), e))?;
    let loaded = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| BootError::KernelLoad(path.into(), e))?;
    Ok((loaded.kernel_load, loaded.kernel_end))
}

/// Loads the initramfs at the top of memory below the MMIO hole, page aligned, above the kernel.
pub fn load_initrd(
    mem: &GuestMemory,
    path: &Path,
    kernel_end: u64,
) -> Result<(GuestAddress, u64), BootError> {
    if !path.exists() {
        return Err(BootError::InitrdMissing(path.into()));
    }
    let mut file = File::open(path).map_err(|e| BootError::InitrdRead(path.into(), e))?;
    let size = file
        .metadata()
        .map_err(|e| BootError::InitrdRead(path.into(), e))?
        .len();
    let low_end = (mem.last_addr().0 + 1).min(MMIO_HOLE_START);
    let addr = low_end.saturating_sub(size) & !0xfff;
    if addr < kernel_end || size > low_end {
        return Err(BootError::TooLittleMemory {
            memory_mib: (mem.last_addr().0 + 1) >> 20,
            needed_mib: (kernel_end + size).div_ceil(1 << 20) + 1,
        });
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| BootError::InitrdRead(path.into(), std::io::Error::other(e)))?;
    Ok((GuestAddress(addr), size))
}

/// Writes everything the boot vCPU needs to start the kernel.
pub fn write_boot_data(
    mem: &GuestMemory,
    cmdline: &Cmdline,
    initrd: Option<(GuestAddress, u64)>,
    vcpu_count: u8,
) -> Result<(), BootError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(|_| BootError::Write("kernel command line"))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(BootError::Cmdline)?
        .as_bytes()
        .len();
    params::write(mem, cmdline_len, initrd)?;
    gdt::write_page_tables(mem)?;
    gdt::write_gdt(mem)?;
    acpi::write_tables(mem, vcpu_count)?;
    Ok(())
}

/// Reads a little-endian value back from guest memory (used by tests of the writers).
#[cfg(test)]
pub(crate) fn read<T: vm_memory::ByteValued>(mem: &GuestMemory, addr: u64) -> T {
    mem.read_obj(GuestAddress(addr)).unwrap()
}
