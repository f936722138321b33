//! One vsock connection as the muxer keeps it: its host stream, its state, the credit accounting
//! of both directions, and the one control packet it may owe the guest.

use std::collections::VecDeque;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use super::packet::OP_CREDIT_UPDATE;

/// (host port, guest port): how both sides name a connection.
pub type Key = (u32, u32);

/// Who opened a connection. Each side has its own cap, so that a guest opening connections
/// cannot lock the host out of its agent.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Origin {
    Host,
    Guest,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum State {
    /// We owe or sent the guest a REQUEST for a host client and wait for its RESPONSE.
    Connecting,
    Established,
    /// The host side ended: SHUTDOWN is owed or sent, the stream is shut and out of epoll, and
    /// we wait for the guest's RST until `deadline`, when the muxer drops the connection anyway.
    Closing {
        deadline: Instant,
    },
}

pub struct Conn {
    pub stream: UnixStream,
    pub token: u64,
    pub origin: Origin,
    pub state: State,
    /// Bytes from the guest not yet written to the stream.
    pub to_host: VecDeque<u8>,
    /// How many bytes at the front of `to_host` are ours (the `OK` line), not guest payload:
    /// they do not count towards `fwd_cnt`.
    pub own_bytes: usize,
    /// Bytes we delivered to the stream (our fwd_cnt) and last told the guest.
    pub fwd_cnt: Wrapping<u32>,
    pub fwd_cnt_sent: Wrapping<u32>,
    /// Bytes we sent the guest, and the guest's last buffer size and fwd_cnt.
    pub tx_cnt: Wrapping<u32>,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: Wrapping<u32>,
    pub guest_no_send: bool,
    pub guest_no_recv: bool,
    /// Epoll reported the stream readable (data, EOF or an error) and no read has hit
    /// `WouldBlock` since. While this is set, epoll is not asked about input again: the data
    /// waits for the guest's RX buffers without waking the worker.
    pub readable: bool,
    /// The stream hung up. Epoll reports a hang-up whatever it was asked for, so the stream has
    /// left epoll; what is left to read is read as the guest takes it, up to the EOF.
    pub hung_up: bool,
    /// The events the stream is registered for in the muxer's epoll; `None` once it left it.
    pub registered: Option<u32>,
    /// The control packet (REQUEST, RESPONSE, SHUTDOWN or CREDIT_UPDATE) the guest is owed.
    /// One slot per connection, so that what a connection owes the guest is bounded by the
    /// number of connections, not by how long the guest leaves its RX queue empty.
    pub pending: Option<u16>,
    /// The guest has heard of this connection (it sent us a packet for it, or we sent it one):
    /// only then does ending it on the host need an RST.
    pub guest_knows: bool,
}

impl Conn {
    pub fn new(stream: UnixStream, token: u64, origin: Origin, state: State) -> Self {
        Conn {
            stream,
            token,
            origin,
            state,
            to_host: VecDeque::new(),
            own_bytes: 0,
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            tx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            guest_no_send: false,
            guest_no_recv: false,
            readable: false,
            hung_up: false,
            registered: None,
            pending: None,
            guest_knows: false,
        }
    }

    /// How many more bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// The guest wants and has room for what the stream may have.
    pub fn wants_read(&self) -> bool {
        self.state == State::Established && !self.guest_no_recv && self.peer_credit() > 0
    }

    /// The stream has something the guest can take now.
    pub fn can_read_now(&self) -> bool {
        self.readable && self.wants_read()
    }

    /// Guest bytes waiting for the stream (our `OK` line aside).
    pub fn queued_payload(&self) -> usize {
        self.to_host.len() - self.own_bytes
    }

    pub fn closing_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Closing { deadline } => Some(deadline),
            _ => None,
        }
    }

    /// What the stream should be registered for in epoll, or `None` for not at all. Input is
    /// asked for only while we do not know of any yet and the guest can take it.
    pub fn wanted_registration(&self) -> Option<u32> {
        if self.hung_up || self.closing_deadline().is_some() {
            return None;
        }
        let mut ev = 0;
        if self.wants_read() && !self.readable {
            ev |= EventSet::IN.bits();
        }
        if !self.to_host.is_empty() {
            ev |= EventSet::OUT.bits();
        }
        Some(ev)
    }

    /// Owes the guest `op`. A credit update never displaces another packet: every packet
    /// carries our current credit anyway. Any other packet displaces what was owed before.
    /// Returns false if nothing changed.
    pub fn owe(&mut self, op: u16) -> bool {
        if op == OP_CREDIT_UPDATE && self.pending.is_some() {
            return false;
        }
        self.pending = Some(op);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::devices::virtio::vsock::packet::{OP_REQUEST, OP_SHUTDOWN};

    fn conn(state: State) -> Conn {
        let (a, _b) = UnixStream::pair().unwrap();
        Conn::new(a, 16, Origin::Guest, state)
    }

    #[test]
    fn credit_counts_bytes_in_flight() {
        let mut c = conn(State::Established);
        c.peer_buf_alloc = 100;
        c.tx_cnt = Wrapping(u32::MAX - 9);
        c.peer_fwd_cnt = Wrapping(u32::MAX - 39);
        assert_eq!(c.peer_credit(), 70);
        c.tx_cnt += Wrapping(80);
        assert_eq!(c.peer_credit(), 0, "an overrun counts as no credit");
    }

    #[test]
    fn input_is_watched_only_until_it_is_known() {
        let mut c = conn(State::Established);
        c.peer_buf_alloc = 10;
        assert_eq!(c.wanted_registration(), Some(EventSet::IN.bits()));
        c.readable = true;
        assert_eq!(c.wanted_registration(), Some(0));
        assert!(c.can_read_now());
        c.to_host.push_back(1);
        assert_eq!(c.wanted_registration(), Some(EventSet::OUT.bits()));
        c.hung_up = true;
        assert_eq!(c.wanted_registration(), None);
        let closing = conn(State::Closing {
            deadline: Instant::now() + Duration::from_secs(1),
        });
        assert_eq!(closing.wanted_registration(), None);
        assert!(!closing.wants_read());
    }

    #[test]
    fn a_credit_update_never_displaces_another_packet() {
        let mut c = conn(State::Connecting);
        assert!(c.owe(OP_REQUEST));
        assert!(!c.owe(OP_CREDIT_UPDATE));
        assert_eq!(c.pending, Some(OP_REQUEST));
        assert!(c.owe(OP_SHUTDOWN));
        assert_eq!(c.pending, Some(OP_SHUTDOWN));
    }
}
