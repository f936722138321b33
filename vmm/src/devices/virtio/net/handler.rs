//! The activated device on its worker thread: the tap and both queues.
//!
//! The worker waits on the RX and TX queue events and on the tap. The tap is watched only while
//! the device holds no frame: once a frame waits for RX buffers the guest has not posted, the tap
//! leaves the worker's epoll set ([`ReadWatch`]) until the guest notifies the RX queue, so a
//! guest that posts no buffers costs no CPU, and further frames wait in the tap's own queue
//! (bounded by the kernel), never in ours.

use std::io;
use std::os::raw::c_uint;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::Queue;
use vmm_sys_util::epoll::EventSet;

use super::rx::{Delivery, Rx};
use super::tap::{offload_flags, Tap};
use super::tx;
use super::{RX, TX};
use crate::devices::virtio::queue::{self, Completion};
use crate::devices::virtio::worker::{EventHandler, Interest, QueueEvents, ReadWatch, WorkerError};
use crate::devices::virtio::Interrupt;
use crate::vstate::memory::GuestMemory;

/// The worker's token for the tap (queue tokens are their indices).
pub const TOKEN_TAP: u64 = 2;
/// The most frames read from the tap per wake-up, so that TX gets its turn.
pub const RX_BURST: usize = 64;
/// The most frames sent per wake-up, so that RX gets its turn; the rest after the other events.
pub const TX_BURST: usize = 64;
/// The least time between two warnings of one kind; those in between are counted.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

pub struct NetHandler {
    pub(super) mem: GuestMemory,
    pub(super) interrupt: Arc<Interrupt>,
    pub(super) rx: Rx,
    pub(super) tx_queue: Queue,
    pub(super) tap: Tap,
    pub(super) queue_evts: QueueEvents,
    /// The features the driver acked, which decide the tap's offloads.
    pub(super) acked_features: u64,
    /// Set by `register`.
    pub(super) tap_watch: Option<ReadWatch>,
    /// The tap reported an error: nothing more is read from it.
    pub(super) tap_failed: bool,
    pub(super) rx_drops: Throttle,
    pub(super) tx_drops: Throttle,
}

impl NetHandler {
    pub(super) fn new(
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        rx: Rx,
        tx_queue: Queue,
        tap: Tap,
        queue_evts: QueueEvents,
        acked_features: u64,
    ) -> Self {
        NetHandler {
            mem,
            interrupt,
            rx,
            tx_queue,
            tap,
            queue_evts,
            acked_features,
            tap_watch: None,
            tap_failed: false,
            rx_drops: Throttle::new("dropped a frame for the guest"),
            tx_drops: Throttle::new("dropped a frame from the guest"),
        }
    }

    /// Sets the tap's offloads from the acked features; without them, it gets none.
    fn set_offloads(&self) {
        let flags: c_uint = offload_flags(self.acked_features);
        tracing::debug!(tap = self.tap.name(), flags, "virtio-net: tap offloads");
        if let Err(e) = self.tap.set_offload(flags) {
            tracing::warn!(
                tap = self.tap.name(),
                flags,
                error = %e,
                "virtio-net: cannot set the tap's offloads; trying none"
            );
            if let Err(e) = self.tap.set_offload(0) {
                tracing::error!(
                    tap = self.tap.name(),
                    error = %e,
                    "virtio-net: cannot clear the tap's offloads"
                );
            }
        }
    }

    /// Sends what the guest queued on TX, at most [`TX_BURST`] frames; wakes itself for the rest.
    pub(super) fn process_tx(&mut self) {
        let (mem, tap, drops) = (&self.mem, &self.tap, &mut self.tx_drops);
        let mut sent = 0;
        let mut more = false;
        queue::drain(&mut self.tx_queue, mem, &self.interrupt, |chain| {
            if sent == TX_BURST {
                more = true;
                return Completion::NotNow;
            }
            sent += 1;
            if let Err(e) = tx::send(mem, tap, chain) {
                drops.warn(&e);
            }
            Completion::Used(0)
        });
        if more {
            self.queue_evts.notify(TX as u16);
        }
    }

    /// Moves frames from the tap into the guest's RX buffers until the tap is empty, the guest
    /// has no room, or [`RX_BURST`] frames were read; then watches the tap only if no frame waits.
    pub(super) fn process_rx(&mut self) -> Result<(), WorkerError> {
        let mark = self.rx.used_mark();
        let mut frames = 0;
        while !self.tap_failed {
            if !self.rx.has_pending() {
                if frames == RX_BURST {
                    break;
                }
                match self.tap.read_frame(self.rx.frame_buffer()) {
                    Ok(n) => {
                        frames += 1;
                        self.rx.set_pending(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // The kernel dropped a frame it could not give us (EFAULT, EINVAL); the
                    // next one may be fine.
                    Err(e) if frame_lost(&e) => {
                        frames += 1;
                        self.rx_drops.warn(&e);
                        continue;
                    }
                    Err(e) => {
                        self.fail_tap(&e);
                        break;
                    }
                }
            }
            match self.rx.deliver(&self.mem) {
                Delivery::Delivered { .. } => {}
                Delivery::Dropped(why) => self.rx_drops.warn(&why),
                Delivery::NoBuffers => break,
            }
        }
        self.rx.signal_used(mark, &self.mem, &self.interrupt);
        let watch = !self.tap_failed && !self.rx.has_pending();
        if let Some(w) = &mut self.tap_watch {
            // Left watching with a frame held, the worker would spin: better to stop.
            w.set(watch).map_err(WorkerError::Device)?;
        }
        Ok(())
    }

    /// The tap failed (its interface was deleted, say): no more reading from it. TX chains are
    /// still returned to the guest, their frames dropped.
    fn fail_tap(&mut self, e: &dyn std::fmt::Display) {
        if !self.tap_failed {
            tracing::error!(
                tap = self.tap.name(),
                error = %e,
                "virtio-net: the tap failed; the guest receives nothing more"
            );
        }
        self.tap_failed = true;
        self.rx.drop_pending();
    }
}

/// A read error after which the tap has dropped one frame and may have more.
fn frame_lost(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EFAULT | libc::EINVAL | libc::EMSGSIZE)
    )
}

impl EventHandler for NetHandler {
    fn register(&mut self, interest: &Interest<'_>) -> Result<(), WorkerError> {
        self.queue_evts.register(interest)?;
        self.tap_watch = Some(interest.readable_watch(&self.tap, TOKEN_TAP)?);
        Ok(())
    }

    fn on_start(&mut self) -> Result<(), WorkerError> {
        // TUNSETOFFLOAD: a tap ioctl the vCPU that activated us may not make; we may.
        self.set_offloads();
        Ok(())
    }

    fn handle_event(&mut self, token: u64, events: EventSet) -> Result<(), WorkerError> {
        if token == TOKEN_TAP {
            // A tap reports an error only once it is detached from its interface.
            if events.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                self.fail_tap(&"error or hang-up on the tap");
                if let Some(w) = &mut self.tap_watch {
                    w.set(false).map_err(WorkerError::Device)?;
                }
                return Ok(());
            }
            return self.process_rx();
        }
        match self.queue_evts.consume(token) {
            // New RX buffers: the waiting frame (if any) and the tap's queue can move.
            Some(RX) => self.process_rx()?,
            Some(TX) => self.process_tx(),
            _ => tracing::debug!(token, "virtio-net: unexpected worker event"),
        }
        Ok(())
    }
}

/// Rate-limits one kind of warning: at most one line per [`WARN_INTERVAL`], which counts the
/// ones left out since the last.
pub struct Throttle {
    what: &'static str,
    last: Option<Instant>,
    skipped: u64,
}

impl Throttle {
    pub fn new(what: &'static str) -> Self {
        Throttle {
            what,
            last: None,
            skipped: 0,
        }
    }

    pub fn warn(&mut self, reason: &dyn std::error::Error) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < WARN_INTERVAL)
        {
            self.skipped += 1;
            return;
        }
        let mut msg = reason.to_string();
        let mut source = reason.source();
        while let Some(s) = source {
            msg.push_str(&format!(": {s}"));
            source = s.source();
        }
        tracing::warn!(reason = %msg, skipped = self.skipped, "virtio-net: {}", self.what);
        self.last = Some(now);
        self.skipped = 0;
    }

    /// How many warnings were left out since the last line.
    #[cfg(test)]
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_logs_once_per_interval_and_counts_the_rest() {
        let mut t = Throttle::new("test");
        let e = io::Error::other("x");
        t.warn(&e);
        assert_eq!(t.skipped(), 0);
        t.warn(&e);
        t.warn(&e);
        assert_eq!(t.skipped(), 2);
        t.last = Some(Instant::now() - WARN_INTERVAL);
        t.warn(&e);
        assert_eq!(t.skipped(), 0);
    }
}
