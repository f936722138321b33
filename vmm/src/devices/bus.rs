//! Address-decoded buses (port I/O and MMIO) that route vCPU exits to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the start of the device's range.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BusError {
    #[error("Bus range {base:#x}+{len:#x} is empty or overlaps another device")]
    Overlap { base: u64, len: u64 },
}

type Entry = (u64, Arc<Mutex<dyn BusDevice>>);

/// Non-overlapping ranges, each owned by one device.
#[derive(Clone, Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let overlaps = |end: u64| {
            self.ranges
                .range(..end)
                .next_back()
                .is_some_and(|(b, (l, _))| b + l > base)
        };
        match end {
            Some(end) if !overlaps(end) => {
                self.ranges.insert(base, (len, device));
                Ok(())
            }
            _ => Err(BusError::Overlap { base, len }),
        }
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &Arc<Mutex<dyn BusDevice>>)> {
        let (base, (len, dev)) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset + size as u64 <= *len).then_some((offset, dev))
    }

    /// Reads from the device at `addr`; returns false (leaving `data` alone) if none is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                dev.lock().expect("device lock poisoned").read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes to the device at `addr`; returns false if none is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                dev.lock()
                    .expect("device lock poisoned")
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Scratch([u8; 16]);

    impl BusDevice for Scratch {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            let o = offset as usize;
            data.copy_from_slice(&self.0[o..o + data.len()]);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            let o = offset as usize;
            self.0[o..o + data.len()].copy_from_slice(data);
        }
    }

    #[test]
    fn routes_by_address_with_relative_offsets() {
        let mut bus = Bus::default();
        bus.insert(Arc::new(Mutex::new(Scratch::default())), 0x100, 16)
            .unwrap();
        assert!(bus.write(0x104, &[1, 2]));
        let mut buf = [0; 2];
        assert!(bus.read(0x104, &mut buf));
        assert_eq!(buf, [1, 2]);
    }

    #[test]
    fn misses_outside_and_across_the_end() {
        let mut bus = Bus::default();
        bus.insert(Arc::new(Mutex::new(Scratch::default())), 0x100, 16)
            .unwrap();
        let mut buf = [0; 4];
        assert!(!bus.read(0xff, &mut buf[..1]));
        assert!(!bus.read(0x110, &mut buf));
        assert!(!bus.read(0x10e, &mut buf), "access crossing the end");
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = Bus::default();
        let dev = || -> Arc<Mutex<dyn BusDevice>> { Arc::new(Mutex::new(Scratch::default())) };
        bus.insert(dev(), 0x100, 16).unwrap();
        assert!(bus.insert(dev(), 0x10f, 1).is_err());
        assert!(bus.insert(dev(), 0xf0, 0x11).is_err());
        assert!(bus.insert(dev(), 0x200, 0).is_err());
        assert!(bus.insert(dev(), u64::MAX, 2).is_err());
        bus.insert(dev(), 0x110, 1).unwrap();
        bus.insert(dev(), 0xf0, 0x10).unwrap();
    }
}
