//! Guest memory: one memfd holds all guest RAM, so that devices (and later vhost-user back-ends)
//! can share it by file descriptor.

use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::layout::{MMIO_HOLE_END, MMIO_HOLE_START};

pub type GuestMemory = GuestMemoryMmap<()>;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("Cannot create the memfd for guest memory")]
    Memfd(#[source] std::io::Error),
    #[error("Cannot size guest memory to {0} MiB")]
    Truncate(u64, #[source] std::io::Error),
    #[error("Cannot map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
}

/// The guest RAM ranges for `size` bytes: below the 32-bit MMIO hole first, the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_HOLE_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START),
            (GuestAddress(MMIO_HOLE_END), size - MMIO_HOLE_START),
        ]
    }
}

/// Creates `size` bytes of guest memory backed by one memfd.
pub fn create(size: u64) -> Result<GuestMemory, MemoryError> {
    // SAFETY: the name is a valid NUL-terminated string and the flags are valid; the result is
    // checked before use.
    let fd = unsafe { libc::memfd_create(c"husk-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created by memfd_create and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|e| MemoryError::Truncate(size >> 20, e))?;

    let mut offset = 0;
    let mut regions = Vec::new();
    for (addr, len) in ram_ranges(size) {
        let file = file.try_clone().map_err(MemoryError::Memfd)?;
        regions.push((addr, len as usize, Some(FileOffset::new(file, offset))));
        offset += len;
    }
    GuestMemoryMmap::from_ranges_with_files(regions).map_err(MemoryError::Map)
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestMemory as _};

    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
    }

    #[test]
    fn large_memory_skips_the_mmio_hole() {
        let ranges = ram_ranges(4 << 30);
        assert_eq!(ranges[0], (GuestAddress(0), MMIO_HOLE_START));
        assert_eq!(
            ranges[1],
            (GuestAddress(MMIO_HOLE_END), (4 << 30) - MMIO_HOLE_START)
        );
    }

    #[test]
    fn memfd_memory_reads_back() {
        let mem = create(2 << 20).unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert_eq!(mem.last_addr(), GuestAddress((2 << 20) - 1));
    }
}
