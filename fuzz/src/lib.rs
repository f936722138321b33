//! What husk's fuzz targets share: structured values read out of the fuzzer's bytes
//! ([`input`]), guest memory with virtio rings in it ([`guest`]), host fixtures that the devices
//! talk to ([`host`]), and the checks every target makes: no allocation beyond
//! [`alloc::MAX_ALLOC`], no file descriptor or thread left behind by an iteration.
//!
//! Every target treats its input as what a hostile guest controls: the contents of guest
//! memory, the descriptors and rings in it, and the values it writes to device registers.

pub mod alloc;
pub mod fuse;
pub mod guest;
pub mod host;
pub mod input;

#[global_allocator]
static ALLOC: alloc::CappedAlloc = alloc::CappedAlloc;
