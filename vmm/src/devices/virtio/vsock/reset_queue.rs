//! RST packets owed to the guest for connections the host has no state for any more, waiting
//! for RX buffers. A bounded queue: the guest decides how many of these it provokes (a packet for
//! an unknown connection, a refused connect) and whether it posts the RX buffers that drain them.

use std::collections::{BTreeSet, VecDeque};

use super::conn::Key;

/// The most RSTs waiting for the guest at once.
pub const RESET_QUEUE_CAP: usize = 256;

/// A FIFO of connection keys to send an RST to, each at most once, at most
/// [`RESET_QUEUE_CAP`] of them.
///
/// When it is full, the oldest RST is dropped to make room for the new one. Every key in it
/// names a connection the host has already forgotten, so a dropped RST costs the host nothing,
/// and the guest is not left without recourse: any later packet it sends on that key is
/// answered with a fresh RST. Keeping the newest instead of the oldest means the guest's latest
/// connection attempt hears its refusal now rather than after its connect timeout. (Holding back
/// the guest's TX queue until the RSTs drain was the other option; it was not taken because a
/// Linux guest stops taking RX buffers while too many of its own replies wait on TX, and the two
/// queues would then wait on each other for good.)
#[derive(Default)]
pub struct ResetQueue {
    order: VecDeque<Key>,
    queued: BTreeSet<Key>,
    dropped: u64,
}

impl ResetQueue {
    /// Queues an RST for `key`, unless one is queued already.
    pub fn push(&mut self, key: Key) {
        if !self.queued.insert(key) {
            return;
        }
        if self.order.len() >= RESET_QUEUE_CAP {
            if let Some(oldest) = self.order.pop_front() {
                self.queued.remove(&oldest);
            }
            self.dropped += 1;
            // Logged at 1, 2, 4, 8… drops, so that a flood cannot flood the log too.
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.dropped,
                    "vsock: the guest takes no RX buffers; dropped its oldest pending RST"
                );
            }
        }
        self.order.push_back(key);
    }

    pub fn pop(&mut self) -> Option<Key> {
        let key = self.order.pop_front()?;
        self.queued.remove(&key);
        Some(key)
    }

    /// Withdraws the RST queued for `key`, if there is one.
    pub fn cancel(&mut self, key: Key) {
        if self.queued.remove(&key) {
            self.order.retain(|k| *k != key);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// How many RSTs were dropped because the queue was full.
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_leave_in_order_and_once_per_key() {
        let mut q = ResetQueue::default();
        q.push((1, 1));
        q.push((2, 2));
        q.push((1, 1));
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop(), Some((1, 1)));
        q.push((1, 1));
        assert_eq!(q.pop(), Some((2, 2)));
        assert_eq!(q.pop(), Some((1, 1)));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn a_full_queue_drops_its_oldest_reset() {
        let mut q = ResetQueue::default();
        for port in 0..RESET_QUEUE_CAP as u32 + 10 {
            q.push((7, port));
        }
        assert_eq!(q.len(), RESET_QUEUE_CAP);
        assert_eq!(q.dropped(), 10);
        assert_eq!(q.pop(), Some((7, 10)), "the ten oldest went");
        // A dropped key can be queued again; the set and the FIFO agree.
        q.push((7, 0));
        assert_eq!(q.len(), RESET_QUEUE_CAP);
        let mut last = None;
        while let Some(k) = q.pop() {
            last = Some(k);
        }
        assert_eq!(last, Some((7, 0)));
        assert!(q.is_empty());
    }

    #[test]
    fn a_cancelled_reset_is_not_sent() {
        let mut q = ResetQueue::default();
        q.push((1, 1));
        q.push((2, 2));
        q.cancel((1, 1));
        q.cancel((3, 3));
        assert_eq!(q.pop(), Some((2, 2)));
        assert_eq!(q.pop(), None);
        q.push((1, 1));
        assert_eq!(q.pop(), Some((1, 1)));
    }
}
