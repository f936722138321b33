//! The host side of hybrid vsock: guest streams become Unix socket connections.
//!
//! - Host to guest: a client connects to the device's Unix socket and writes `CONNECT <port>\n`
//!   (any case); once the guest's listener accepts, it reads `OK <host port>\n` and then has a
//!   byte stream. If nothing listens on the guest port, its connection is closed.
//! - Guest to host: a guest connection to port P reaches a listener at `<socket path>_P`.
//!
//! Flow control follows virtio-vsock's credit scheme in both directions, so neither side can
//! make the other buffer without bound: we only read from a Unix stream what the guest has room
//! for, and we advertise a fixed buffer (`BUF_ALLOC`) that a guest must not overrun.
//!
//! Nothing the guest does grows host state without a cap: connections are capped per side and
//! per host listener; each connection owes the guest at most one control packet; RSTs for
//! connections already gone wait in a bounded [`ResetQueue`]; a connection the host closed waits
//! at most [`CLOSE_TIMEOUT`] for the guest's RST. And nothing makes the worker spin: a stream
//! with data the guest cannot take yet (no RX buffers, no credit) is not watched for input until
//! the guest has read what we know is there.

mod closing;
mod host;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::ops::Bound;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::conn::{Conn, Key, Origin, State};
use super::packet::*;
use super::reset_queue::ResetQueue;
use super::uds::connect_nonblocking;
use host::Handshake;

/// What we advertise to the guest as our receive buffer, per connection.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// The most host-initiated connections at once, including clients still writing their
/// `CONNECT` line. The shim opens two, and one per process it runs in the guest.
pub const MAX_HOST_CONNECTIONS: usize = 512;
/// The most guest-initiated connections at once.
pub const MAX_GUEST_CONNECTIONS: usize = 256;
/// The most guest-initiated connections at once to one host listener (`<socket path>_P`). The
/// listener's own backlog bounds those it has not accepted yet: a full one refuses at once.
pub const MAX_GUEST_CONNECTIONS_PER_PORT: usize = 64;
/// How long a connection the host closed waits for the guest's RST after our SHUTDOWN.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the listener is left alone after `accept` failed for want of resources.
const ACCEPT_RETRY: Duration = Duration::from_secs(1);
/// A `CONNECT <port>\n` line longer than this is garbage.
const MAX_HANDSHAKE: usize = 32;
/// Host ports we hand out for host-initiated connections start here.
const FIRST_HOST_PORT: u32 = 1 << 30;

/// Epoll tokens: fixed ones below `FIRST_CONN_TOKEN`, then one per stream.
pub const TOKEN_LISTENER: u64 = 4;
const TOKEN_TIMER: u64 = 5;
const FIRST_CONN_TOKEN: u64 = 16;

/// How many connections a muxer allows at once: [`Limits::DEFAULT`], or smaller in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Host-initiated connections, clients still writing their `CONNECT` line included.
    pub host: usize,
    /// Guest-initiated connections.
    pub guest: usize,
    /// Guest-initiated connections to one host listener.
    pub guest_per_port: usize,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        host: MAX_HOST_CONNECTIONS,
        guest: MAX_GUEST_CONNECTIONS,
        guest_per_port: MAX_GUEST_CONNECTIONS_PER_PORT,
    };
}

pub struct Muxer {
    guest_cid: u64,
    limits: Limits,
    uds_path: PathBuf,
    listener: UnixListener,
    /// False while accepting is suspended (see [`ACCEPT_RETRY`]).
    listener_watched: bool,
    accept_retry_at: Option<Instant>,
    epoll: Epoll,
    /// Fires at the earliest close deadline or accept retry; `timer_at` is when it is armed for.
    timer: TimerFd,
    timer_at: Option<Instant>,
    conns: BTreeMap<Key, Conn>,
    by_token: BTreeMap<u64, Key>,
    handshakes: BTreeMap<u64, Handshake>,
    /// The connections whose `pending` slot holds a packet for the guest.
    owing: BTreeSet<Key>,
    resets: ResetQueue,
    /// The connection whose data the guest got last: the one after it is read first.
    last_served: Option<Key>,
    next_token: u64,
    next_host_port: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error("Vsock socket {0} already exists: remove it or choose another --vsock-uds path")]
    SocketExists(PathBuf),
    #[error("Cannot listen on the vsock socket {0}")]
    Bind(PathBuf, #[source] std::io::Error),
    #[error("Cannot set up the vsock event loop")]
    Epoll(#[source] std::io::Error),
}

impl Muxer {
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, MuxerError> {
        if uds_path.exists() {
            return Err(MuxerError::SocketExists(uds_path.into()));
        }
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        let timer = TimerFd::new().map_err(|e| MuxerError::Epoll(e.into()))?;
        let listener =
            UnixListener::bind(uds_path).map_err(|e| MuxerError::Bind(uds_path.into(), e))?;
        // From here on, dropping the muxer (on an error too) removes the socket file.
        let mut muxer = Muxer {
            guest_cid,
            limits: Limits::DEFAULT,
            uds_path: uds_path.into(),
            listener,
            listener_watched: false,
            accept_retry_at: None,
            epoll,
            timer,
            timer_at: None,
            conns: BTreeMap::new(),
            by_token: BTreeMap::new(),
            handshakes: BTreeMap::new(),
            owing: BTreeSet::new(),
            resets: ResetQueue::default(),
            last_served: None,
            next_token: FIRST_CONN_TOKEN,
            next_host_port: FIRST_HOST_PORT,
        };
        muxer
            .listener
            .set_nonblocking(true)
            .map_err(|e| MuxerError::Bind(uds_path.into(), e))?;
        for (fd, token) in [
            (muxer.listener.as_raw_fd(), TOKEN_LISTENER),
            (muxer.timer.as_raw_fd(), TOKEN_TIMER),
        ] {
            let ev = EpollEvent::new(EventSet::IN, token);
            muxer
                .epoll
                .ctl(ControlOperation::Add, fd, ev)
                .map_err(MuxerError::Epoll)?;
        }
        muxer.listener_watched = true;
        Ok(muxer)
    }

    pub fn epoll(&self) -> &Epoll {
        &self.epoll
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    /// Connections opened by `origin`, set up or being set up.
    fn count(&self, origin: Origin) -> usize {
        let conns = self.conns.values().filter(|c| c.origin == origin).count();
        match origin {
            Origin::Host => conns + self.handshakes.len(),
            Origin::Guest => conns,
        }
    }

    /// Guest connections to the host listener for `port`.
    fn count_to_port(&self, port: u32) -> usize {
        self.conns
            .range((port, 0)..=(port, u32::MAX))
            .filter(|(_, c)| c.origin == Origin::Guest)
            .count()
    }

    /// A packet header for `key`, with our current credit (which the guest now knows).
    fn header(&mut self, key: Key, op: u16, flags: u32, len: u32) -> Header {
        let fwd_cnt = match self.conns.get_mut(&key) {
            Some(c) => {
                c.fwd_cnt_sent = c.fwd_cnt;
                c.fwd_cnt.0
            }
            None => 0,
        };
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.0,
            dst_port: key.1,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt,
        }
    }

    /// Makes connection `key` owe the guest `op` (see [`Conn::owe`]).
    fn owe(&mut self, key: Key, op: u16) {
        if let Some(c) = self.conns.get_mut(&key) {
            if c.owe(op) {
                self.owing.insert(key);
            }
        }
    }

    fn alloc_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    /// Brings the epoll registration of `key` in line with what the connection wants.
    fn sync_interest(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let wanted = c.wanted_registration();
        if wanted == c.registered {
            return;
        }
        let fd = c.stream.as_raw_fd();
        let event = |ev: u32| EpollEvent::new(EventSet::from_bits_truncate(ev), c.token);
        let res = match (c.registered, wanted) {
            (Some(_), Some(ev)) => self.epoll.ctl(ControlOperation::Modify, fd, event(ev)),
            (None, Some(ev)) => self.epoll.ctl(ControlOperation::Add, fd, event(ev)),
            (_, None) => self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default()),
        };
        if let Err(e) = res {
            tracing::warn!(error = %e, "vsock: cannot change what a stream is watched for");
        }
        c.registered = wanted;
    }

    /// Drops connection `key` (its stream closes) and returns it.
    fn forget(&mut self, key: Key) -> Option<Conn> {
        let c = self.conns.remove(&key)?;
        if c.registered.is_some() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        self.by_token.remove(&c.token);
        self.owing.remove(&key);
        self.resume_accepting();
        Some(c)
    }

    /// Ends connection `key` on both sides: drops it and tells the guest, if it knows of it.
    fn reset(&mut self, key: Key) {
        if self.forget(key).is_some_and(|c| c.guest_knows) {
            self.resets.push(key);
        }
    }

    /// Handles one validated packet from the guest.
    pub fn handle_guest_packet(&mut self, pkt: GuestPacket) {
        let h = pkt.hdr;
        let key = (h.dst_port, h.src_port);
        if h.type_ != TYPE_STREAM {
            if h.op != OP_RST {
                self.resets.push(key);
            }
            return;
        }
        if h.op == OP_REQUEST {
            self.guest_connect(key, h);
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            if h.op != OP_RST {
                self.resets.push(key);
            }
            return;
        };
        if h.op == OP_RST {
            self.forget(key);
            return;
        }
        c.guest_knows = true;
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        match (h.op, c.state) {
            (OP_RESPONSE, State::Connecting) => {
                c.state = State::Established;
                let ok = format!("OK {}\n", key.0);
                c.to_host.extend(ok.as_bytes());
                c.own_bytes = ok.len();
                self.flush_to_host(key);
            }
            (OP_RW, State::Established) => {
                if c.guest_no_send || c.queued_payload() + pkt.payload.len() > BUF_ALLOC as usize {
                    // The guest overran the credit we gave it.
                    self.reset(key);
                    return;
                }
                c.to_host.extend(&pkt.payload);
                self.flush_to_host(key);
            }
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, _) => self.owe(key, OP_CREDIT_UPDATE),
            (OP_SHUTDOWN, State::Established) => {
                c.guest_no_recv |= h.flags & SHUTDOWN_RCV != 0;
                c.guest_no_send |= h.flags & SHUTDOWN_SEND != 0;
                if c.guest_no_send && c.guest_no_recv {
                    // Deliver what we can, then end the connection on both sides.
                    self.flush_to_host(key);
                    self.reset(key);
                    return;
                }
                if c.guest_no_send && c.to_host.is_empty() {
                    let _ = c.stream.shutdown(std::net::Shutdown::Write);
                }
            }
            // Anything else, a SHUTDOWN answering ours included, ends the connection.
            _ => {
                self.reset(key);
                return;
            }
        }
        self.sync_interest(key);
    }

    fn guest_connect(&mut self, key: Key, h: Header) {
        // The guest uses this pair of ports again, so it is done with any earlier connection on
        // them: an RST for that one, still queued, would now end the new one.
        self.resets.cancel(key);
        let refusal = if self.conns.contains_key(&key) {
            Some("this pair of ports is in use")
        } else if self.count(Origin::Guest) >= self.limits.guest {
            Some("too many guest connections")
        } else if self.count_to_port(key.0) >= self.limits.guest_per_port {
            Some("too many guest connections to this port")
        } else {
            None
        };
        let path = format!("{}_{}", self.uds_path.display(), key.0);
        let stream = match refusal {
            Some(why) => Err(why.to_string()),
            None => connect_nonblocking(Path::new(&path)).map_err(|e| e.to_string()),
        };
        let stream = match stream {
            Ok(s) => s,
            Err(why) => {
                tracing::debug!(path, why, "vsock: refused a guest connection");
                self.resets.push(key);
                return;
            }
        };
        let token = self.alloc_token();
        let mut c = Conn::new(stream, token, Origin::Guest, State::Established);
        c.guest_knows = true;
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        self.by_token.insert(token, key);
        self.conns.insert(key, c);
        self.sync_interest(key);
        self.owe(key, OP_RESPONSE);
    }

    /// Writes what the guest sent to the host stream, as far as it goes without blocking.
    fn flush_to_host(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let mut broken = false;
        while !c.to_host.is_empty() {
            let (front, _) = c.to_host.as_slices();
            match c.stream.write(front) {
                Ok(0) => {
                    broken = true;
                    break;
                }
                Ok(n) => {
                    c.to_host.drain(..n);
                    let own = n.min(c.own_bytes);
                    c.own_bytes -= own;
                    c.fwd_cnt += Wrapping((n - own) as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        if broken {
            self.reset(key);
            return;
        }
        if c.guest_no_send && c.to_host.is_empty() {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
        // Tell the guest about freed buffer space before it runs dry.
        if (c.fwd_cnt - c.fwd_cnt_sent).0 >= BUF_ALLOC / 4 {
            self.owe(key, OP_CREDIT_UPDATE);
        }
        self.sync_interest(key);
    }

    /// Handles an epoll event of the muxer's own epoll.
    pub fn handle_event(&mut self, token: u64, events: u32) {
        if token == TOKEN_LISTENER {
            self.accept();
        } else if token == TOKEN_TIMER {
            self.handle_timer(Instant::now());
        } else if self.handshakes.contains_key(&token) {
            self.read_handshake(token);
        } else if let Some(&key) = self.by_token.get(&token) {
            if events & EventSet::OUT.bits() != 0 {
                self.flush_to_host(key);
            }
            if events & EventSet::IN.bits() != 0 {
                // Read when the guest has RX buffers (see `next_packet_for_guest`); until then
                // epoll is not asked again.
                if let Some(c) = self.conns.get_mut(&key) {
                    c.readable = true;
                }
            }
            if events & (EventSet::HANG_UP.bits() | EventSet::ERROR.bits()) != 0 {
                self.host_hung_up(key);
            }
            self.sync_interest(key);
        }
    }

    /// The next packet for the guest, with at most `room` payload bytes: RSTs first, then the
    /// control packets connections owe, then data from streams, taking turns. `None` when
    /// there is nothing to send.
    pub fn next_packet_for_guest(&mut self, room: usize) -> Option<(Header, Vec<u8>)> {
        loop {
            if let Some(key) = self.resets.pop() {
                return Some((self.header(key, OP_RST, 0, 0), Vec::new()));
            }
            if let Some(h) = self.next_owed() {
                return Some((h, Vec::new()));
            }
            if room == 0 {
                return None;
            }
            let key = self.next_readable()?;
            if let Some(p) = self.read_for_guest(key, room) {
                return Some(p);
            }
            // The stream had nothing after all, or it ended: it is no longer readable.
        }
    }

    fn next_owed(&mut self) -> Option<Header> {
        while let Some(key) = self.owing.pop_first() {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            let Some(op) = c.pending.take() else {
                continue;
            };
            c.guest_knows = true;
            let flags = match op {
                OP_SHUTDOWN => SHUTDOWN_RCV | SHUTDOWN_SEND,
                _ => 0,
            };
            return Some(self.header(key, op, flags, 0));
        }
        None
    }

    /// The next connection with data the guest can take, after the last one served.
    fn next_readable(&self) -> Option<Key> {
        let ready = |(k, c): (&Key, &Conn)| c.can_read_now().then_some(*k);
        let Some(last) = self.last_served else {
            return self.conns.iter().find_map(ready);
        };
        self.conns
            .range((Bound::Excluded(last), Bound::Unbounded))
            .find_map(ready)
            .or_else(|| self.conns.range(..=last).find_map(ready))
    }

    /// Reads what the guest can take from the stream of `key`; `None` if it had nothing, in
    /// which case it is no longer readable (drained, or ended).
    fn read_for_guest(&mut self, key: Key, room: usize) -> Option<(Header, Vec<u8>)> {
        let c = self.conns.get_mut(&key)?;
        let n = (c.peer_credit() as usize)
            .min(room)
            .min(MAX_PAYLOAD as usize);
        let mut buf = vec![0u8; n];
        let res = loop {
            match c.stream.read(&mut buf) {
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                res => break res,
            }
        };
        match res {
            Ok(0) => self.host_closed(key),
            Ok(n) => {
                buf.truncate(n);
                c.tx_cnt += Wrapping(n as u32);
                self.last_served = Some(key);
                return Some((self.header(key, OP_RW, 0, n as u32), buf));
            }
            // A stream that hung up is out of epoll: with nothing left to read, it is done.
            Err(e) if e.kind() == ErrorKind::WouldBlock && c.hung_up => self.host_closed(key),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                c.readable = false;
                self.sync_interest(key);
            }
            Err(_) => self.host_closed(key),
        }
        None
    }

    /// How many RSTs wait for the guest.
    #[cfg(test)]
    pub fn queued_resets(&self) -> usize {
        self.resets.len()
    }

    /// True when packets wait for RX buffers the guest has not posted.
    pub fn has_control(&self) -> bool {
        !self.resets.is_empty() || !self.owing.is_empty()
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}
