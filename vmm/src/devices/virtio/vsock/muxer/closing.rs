//! The end of connections the host closed: one SHUTDOWN to the guest, then at most
//! [`CLOSE_TIMEOUT`] for its RST, kept by a timer in the muxer's epoll.

use std::time::{Duration, Instant};

use super::{Muxer, CLOSE_TIMEOUT};
use crate::devices::virtio::vsock::conn::{Conn, Key, State};
use crate::devices::virtio::vsock::packet::OP_SHUTDOWN;

impl Muxer {
    /// The stream of `key` reported a hang-up or an error, which epoll reports for as long as
    /// the stream is in it, whatever it was asked for.
    pub(super) fn host_hung_up(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        match c.state {
            State::Connecting => self.reset(key),
            State::Closing { .. } => {}
            State::Established if c.guest_no_recv => self.host_closed(key),
            State::Established => {
                // Data may still wait in the stream: it goes to the guest as the guest takes
                // it, and the EOF behind it closes the connection.
                c.hung_up = true;
                c.readable = true;
                self.sync_interest(key);
            }
        }
    }

    /// The host side of `key` is done (EOF or a read error): owe the guest a SHUTDOWN, once,
    /// and give it [`CLOSE_TIMEOUT`] to answer with an RST.
    pub(super) fn host_closed(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        match c.state {
            State::Connecting => self.reset(key),
            State::Closing { .. } => {}
            State::Established => {
                let deadline = Instant::now() + CLOSE_TIMEOUT;
                c.state = State::Closing { deadline };
                c.readable = false;
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
                self.owe(key, OP_SHUTDOWN);
                self.sync_interest(key);
                self.arm_timer_by(deadline);
            }
        }
    }

    /// Makes sure the timer fires no later than `at`.
    pub(super) fn arm_timer_by(&mut self, at: Instant) {
        if self.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        self.set_timer(Some(at), Instant::now());
    }

    pub(super) fn set_timer(&mut self, at: Option<Instant>, now: Instant) {
        // Setting the timer also clears an expiry not read yet, so the timer fd is readable
        // only once it fires again: it is never read, hence never blocks the worker.
        let res = match at {
            // A zero duration would disarm it.
            Some(at) => self.timer.reset(
                at.saturating_duration_since(now)
                    .max(Duration::from_millis(1)),
                None,
            ),
            None => self.timer.clear(),
        };
        if let Err(e) = res {
            tracing::warn!(error = %e, "vsock: cannot set the connection timer");
        }
        self.timer_at = at;
    }

    /// Drops the closing connections whose guest did not answer our SHUTDOWN by their deadline
    /// (with an RST, the guest's last word on them), resumes a paused listener when its time
    /// has come, and sets the timer for what is next.
    pub fn handle_timer(&mut self, now: Instant) {
        let expired: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.closing_deadline().is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            tracing::debug!(
                ?key,
                "vsock: the guest never acknowledged a closed connection"
            );
            self.reset(key);
        }
        if self.accept_retry_at.is_some_and(|t| t <= now) {
            self.resume_accepting();
        }
        let next = self
            .conns
            .values()
            .filter_map(Conn::closing_deadline)
            .chain(self.accept_retry_at)
            .min();
        self.set_timer(next, now);
    }
}
