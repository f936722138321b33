//! Guest memory with split virtqueues laid out in it, written the way a driver (or a hostile
//! guest) would: descriptors, available ring entries and buffers come from the fuzz input.
//!
//! Layout of the [`MEM_SIZE`] bytes: queue `i`'s descriptor table at `i * 0x4000`, its
//! available ring 0x1000 above, its used ring 0x2000 above; buffers in the upper half, from
//! [`DATA`] on. A descriptor normally points into the buffer half, but may carry any address.

use husk_vmm::vstate::memory::{self, GuestMemory};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::input::Input;

pub const MEM_SIZE: u64 = 0x2_0000;
/// Start of the buffer half of guest memory.
pub const DATA: u64 = 0x1_0000;
pub const MAX_QUEUES: usize = 4;
pub const MAX_QUEUE_SIZE: u16 = 256;
const RING_STRIDE: u64 = 0x4000;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

#[derive(Clone, Copy, Debug, Default)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Desc {
    /// A descriptor from the input: mostly a buffer in the data half with a 16-bit length and
    /// any of NEXT, WRITE and INDIRECT, sometimes (by bits of its first byte) any address,
    /// length, flags or next.
    pub fn decode(input: &mut Input) -> Desc {
        let mode = input.u8();
        let addr = if mode & 0x08 != 0 {
            input.u64()
        } else {
            DATA + u64::from(input.u16())
        };
        let len = if mode & 0x10 != 0 {
            input.u32()
        } else {
            u32::from(input.u16())
        };
        let next = if mode & 0x20 != 0 {
            input.u16()
        } else {
            u16::from(input.u8())
        };
        let flags = if mode & 0x80 != 0 {
            input.u16()
        } else {
            u16::from(mode & 0x7)
        };
        Desc {
            addr,
            len,
            flags,
            next,
        }
    }

    fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// The driver's view of one queue.
struct Ring {
    size: u16,
    /// Next available index the driver publishes, and next free descriptor slot.
    avail_idx: u16,
    next_slot: u16,
}

/// Guest memory and the rings of up to [`MAX_QUEUES`] queues.
pub struct Guest {
    pub mem: GuestMemory,
    rings: Vec<Ring>,
    /// Bump allocator for buffers in the data half.
    data_top: u64,
}

impl Guest {
    /// Fresh, zeroed guest memory with one ring per entry of `sizes` (each a power of two of at
    /// most [`MAX_QUEUE_SIZE`]).
    pub fn new(sizes: &[u16]) -> Guest {
        assert!(sizes.len() <= MAX_QUEUES);
        Guest {
            mem: memory::create(MEM_SIZE).expect("guest memory"),
            rings: sizes
                .iter()
                .map(|&size| {
                    assert!(size.is_power_of_two() && size <= MAX_QUEUE_SIZE);
                    Ring {
                        size,
                        avail_idx: 0,
                        next_slot: 0,
                    }
                })
                .collect(),
            data_top: DATA,
        }
    }

    fn desc_table(q: usize) -> u64 {
        q as u64 * RING_STRIDE
    }

    fn avail_ring(q: usize) -> u64 {
        Self::desc_table(q) + 0x1000
    }

    fn used_ring(q: usize) -> u64 {
        Self::desc_table(q) + 0x2000
    }

    /// The device's side of queue `q`, as the transport hands it over after the driver set it
    /// up: enabled, and valid in guest memory.
    pub fn queue(&self, q: usize, event_idx: bool) -> Queue {
        let mut queue = Queue::new(MAX_QUEUE_SIZE).expect("queue");
        queue.set_size(self.rings[q].size);
        let addr = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = addr(Self::desc_table(q));
        queue.set_desc_table_address(lo, hi);
        let (lo, hi) = addr(Self::avail_ring(q));
        queue.set_avail_ring_address(lo, hi);
        let (lo, hi) = addr(Self::used_ring(q));
        queue.set_used_ring_address(lo, hi);
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        assert!(queue.is_valid(&self.mem), "the fixed ring layout is valid");
        queue
    }

    /// Writes `bytes` at `addr`, as far as guest memory goes.
    pub fn write(&self, addr: u64, bytes: &[u8]) {
        let _ = self.mem.write(bytes, GuestAddress(addr));
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        let _ = self.mem.read_slice(&mut v, GuestAddress(addr));
        v
    }

    /// Writes `d` into slot `slot` (modulo the queue size) of queue `q`'s descriptor table.
    pub fn set_desc(&self, q: usize, slot: u16, d: Desc) {
        let slot = slot & (self.rings[q].size - 1);
        let at = Self::desc_table(q) + 16 * u64::from(slot);
        self.write(at, &d.to_bytes());
    }

    /// Writes descriptors at `addr` as an indirect table would hold them.
    pub fn write_table(&self, addr: u64, descs: &[Desc]) {
        for (i, d) in descs.iter().enumerate() {
            self.write(addr + 16 * i as u64, &d.to_bytes());
        }
    }

    /// Publishes `head` on queue `q`'s available ring.
    pub fn push_avail(&mut self, q: usize, head: u16) {
        let ring = &mut self.rings[q];
        let pos = u64::from(ring.avail_idx & (ring.size - 1));
        ring.avail_idx = ring.avail_idx.wrapping_add(1);
        let (idx, avail) = (ring.avail_idx, Self::avail_ring(q));
        self.write(avail + 4 + 2 * pos, &head.to_le_bytes());
        self.write(avail + 2, &idx.to_le_bytes());
    }

    /// Sets the available index to anything, past entries never written included.
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        self.rings[q].avail_idx = idx;
        self.write(Self::avail_ring(q) + 2, &idx.to_le_bytes());
    }

    /// Sets the `used_event` field (read by the device with EVENT_IDX) and the avail flags.
    pub fn set_used_event(&self, q: usize, flags: u16, used_event: u16) {
        let size = u64::from(self.rings[q].size);
        self.write(Self::avail_ring(q), &flags.to_le_bytes());
        self.write(
            Self::avail_ring(q) + 4 + 2 * size,
            &used_event.to_le_bytes(),
        );
    }

    /// Lays `buffers` (readable ones first, then `(len, WRITE)` ones) out as one chain in fresh
    /// descriptor slots of queue `q` and in fresh space of the data half, and publishes it.
    /// Returns the head slot and the addresses of the buffers, or `None` when out of room.
    pub fn add_chain(&mut self, q: usize, buffers: &[Buffer]) -> Option<(u16, Vec<u64>)> {
        let size = self.rings[q].size;
        if buffers.is_empty() || buffers.len() > usize::from(size) {
            return None;
        }
        let mut addrs = Vec::with_capacity(buffers.len());
        for b in buffers {
            let (len, bytes) = match b {
                Buffer::Read(bytes) => (bytes.len() as u64, Some(bytes)),
                Buffer::Write(len) => (u64::from(*len), None),
            };
            if self.data_top + len > MEM_SIZE {
                return None;
            }
            if let Some(bytes) = bytes {
                self.write(self.data_top, bytes);
            }
            addrs.push(self.data_top);
            self.data_top += len;
        }
        let head = self.rings[q].next_slot & (size - 1);
        for (i, (b, &addr)) in buffers.iter().zip(&addrs).enumerate() {
            let slot = head.wrapping_add(i as u16) & (size - 1);
            let last = i + 1 == buffers.len();
            let (len, mut flags) = match b {
                Buffer::Read(bytes) => (bytes.len() as u32, 0),
                Buffer::Write(len) => (*len, F_WRITE),
            };
            if !last {
                flags |= F_NEXT;
            }
            let next = slot.wrapping_add(1) & (size - 1);
            self.set_desc(
                q,
                slot,
                Desc {
                    addr,
                    len,
                    flags,
                    next,
                },
            );
        }
        self.rings[q].next_slot = head.wrapping_add(buffers.len() as u16);
        self.push_avail(q, head);
        Some((head, addrs))
    }

    /// The used ring of queue `q`: its index and the `(id, len)` entries up to it.
    pub fn used(&self, q: usize) -> (u16, Vec<(u32, u32)>) {
        let used = Self::used_ring(q);
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap_or(0);
        let size = self.rings[q].size;
        let count = idx.min(size);
        let entries = (0..count)
            .map(|i| {
                let at = used + 4 + 8 * u64::from(i);
                let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap_or(0);
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap_or(0);
                (id, len)
            })
            .collect();
        (idx, entries)
    }
}

/// One buffer of a chain built by [`Guest::add_chain`].
pub enum Buffer<'a> {
    /// Device-readable, with these contents.
    Read(&'a [u8]),
    /// Device-writable, this long.
    Write(u32),
}
