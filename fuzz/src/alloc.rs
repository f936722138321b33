//! A global allocator that refuses any single allocation larger than [`MAX_ALLOC`]: the Rust
//! runtime then aborts with "memory allocation of N bytes failed", which libFuzzer reports as a
//! crash with the input that caused it. Guest-sized allocations must be bounded by the VMM.

use std::alloc::{GlobalAlloc, Layout, System};

/// Far above anything a device needs for one request (the largest are 64 KiB vsock payloads and
/// 1 MiB FUSE buffers), far below what a guest-chosen 32- or 64-bit length would ask for.
pub const MAX_ALLOC: usize = 64 << 20;

pub struct CappedAlloc;

// SAFETY: every call is passed on unchanged to the system allocator, except that oversized
// requests get a null pointer, which `GlobalAlloc` allows for any request.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract for `layout` is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC {
            return std::ptr::null_mut();
        }
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from the system allocator with `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOC {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` came from the system allocator with `layout`; the caller's contract for
        // `new_size` is the system allocator's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
