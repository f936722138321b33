//! The transports virtio devices are reached through. Only MMIO for now.

pub mod mmio;
