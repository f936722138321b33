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

use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::packet::*;

/// What we advertise to the guest as our receive buffer, per connection.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// The most connections (established or being set up) at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// A `CONNECT <port>\n` line longer than this is garbage.
const MAX_HANDSHAKE: usize = 32;
/// Host ports we hand out for host-initiated connections start here.
const FIRST_HOST_PORT: u32 = 1 << 30;

/// Epoll tokens: fixed ones below `FIRST_CONN_TOKEN`, then one per stream.
pub const TOKEN_LISTENER: u64 = 4;
const FIRST_CONN_TOKEN: u64 = 16;

/// (host port, guest port): how both sides name a connection.
type Key = (u32, u32);

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum State {
    /// We sent REQUEST for a host client and wait for the guest's RESPONSE.
    Connecting,
    Established,
    /// We sent SHUTDOWN (host side closed); waiting for the guest's RST.
    Closing,
}

struct Conn {
    stream: UnixStream,
    token: u64,
    state: State,
    /// Bytes from the guest not yet written to the stream.
    to_host: VecDeque<u8>,
    /// How many bytes at the front of `to_host` are ours (the `OK` line), not guest payload:
    /// they do not count towards `fwd_cnt`.
    own_bytes: usize,
    /// Bytes we delivered to the stream (our fwd_cnt) and last told the guest.
    fwd_cnt: Wrapping<u32>,
    fwd_cnt_sent: Wrapping<u32>,
    /// Bytes we sent the guest, and the guest's last buffer size and fwd_cnt.
    tx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    host_eof: bool,
    guest_no_send: bool,
    guest_no_recv: bool,
    /// The epoll events currently registered for `stream`.
    registered: u32,
}

impl Conn {
    fn new(stream: UnixStream, token: u64, state: State) -> Self {
        Conn {
            stream,
            token,
            state,
            to_host: VecDeque::new(),
            own_bytes: 0,
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            tx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            host_eof: false,
            guest_no_send: false,
            guest_no_recv: false,
            registered: 0,
        }
    }

    /// How many more bytes the guest can take now.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn wants_read(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && !self.guest_no_recv
            && self.peer_credit() > 0
    }

    fn wanted_events(&self) -> u32 {
        let mut ev = 0;
        if self.wants_read() {
            ev |= EventSet::IN.bits();
        }
        if !self.to_host.is_empty() {
            ev |= EventSet::OUT.bits();
        }
        ev
    }
}

/// A host client that has not finished its `CONNECT <port>\n` line yet.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: BTreeMap<Key, Conn>,
    by_token: BTreeMap<u64, Key>,
    handshakes: BTreeMap<u64, Handshake>,
    /// Control packets waiting for a guest RX buffer.
    control: VecDeque<Header>,
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
        let listener =
            UnixListener::bind(uds_path).map_err(|e| MuxerError::Bind(uds_path.into(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| MuxerError::Bind(uds_path.into(), e))?;
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
            )
            .map_err(MuxerError::Epoll)?;
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.into(),
            listener,
            epoll,
            conns: BTreeMap::new(),
            by_token: BTreeMap::new(),
            handshakes: BTreeMap::new(),
            control: VecDeque::new(),
            next_token: FIRST_CONN_TOKEN,
            next_host_port: FIRST_HOST_PORT,
        })
    }

    pub fn epoll(&self) -> &Epoll {
        &self.epoll
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    fn header(&self, key: Key, op: u16, flags: u32, len: u32) -> Header {
        let fwd_cnt = self.conns.get(&key).map_or(0, |c| c.fwd_cnt.0);
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

    fn push_control(&mut self, key: Key, op: u16, flags: u32) {
        let h = self.header(key, op, flags, 0);
        if let Some(c) = self.conns.get_mut(&key) {
            c.fwd_cnt_sent = c.fwd_cnt;
        }
        self.control.push_back(h);
    }

    fn alloc_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn register(&self, fd: &impl AsRawFd, token: u64, events: u32) {
        let ev = EpollEvent::new(EventSet::from_bits_truncate(events), token);
        if let Err(e) = self.epoll.ctl(ControlOperation::Add, fd.as_raw_fd(), ev) {
            tracing::warn!(error = %e, "vsock: cannot watch a stream");
        }
    }

    /// Brings the epoll registration of `key` in line with what the connection wants.
    fn sync_interest(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let wanted = c.wanted_events();
        if wanted != c.registered {
            let ev = EpollEvent::new(EventSet::from_bits_truncate(wanted), c.token);
            let _ = self
                .epoll
                .ctl(ControlOperation::Modify, c.stream.as_raw_fd(), ev);
            c.registered = wanted;
        }
    }

    fn remove(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
            self.by_token.remove(&c.token);
        }
    }

    fn reset(&mut self, key: Key) {
        self.remove(key);
        self.push_control(key, OP_RST, 0);
    }

    /// Handles one validated packet from the guest.
    pub fn handle_guest_packet(&mut self, pkt: GuestPacket) {
        let h = pkt.hdr;
        let key = (h.dst_port, h.src_port);
        if h.type_ != TYPE_STREAM {
            if h.op != OP_RST {
                self.push_control(key, OP_RST, 0);
            }
            return;
        }
        if h.op == OP_REQUEST {
            self.guest_connect(key, h);
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            if h.op != OP_RST {
                self.push_control(key, OP_RST, 0);
            }
            return;
        };
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
                if c.guest_no_send || c.to_host.len() + pkt.payload.len() > BUF_ALLOC as usize {
                    // The guest overran the credit we gave it.
                    self.reset(key);
                    return;
                }
                c.to_host.extend(&pkt.payload);
                self.flush_to_host(key);
            }
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, _) => self.push_control(key, OP_CREDIT_UPDATE, 0),
            (OP_SHUTDOWN, _) => {
                c.guest_no_recv |= h.flags & SHUTDOWN_RCV != 0;
                c.guest_no_send |= h.flags & SHUTDOWN_SEND != 0;
                if c.guest_no_send && c.guest_no_recv {
                    // Deliver what we have, then end the connection on both sides.
                    self.flush_to_host(key);
                    self.reset(key);
                    return;
                }
                if c.guest_no_send && c.to_host.is_empty() {
                    let _ = c.stream.shutdown(std::net::Shutdown::Write);
                }
            }
            (OP_RST, _) => {
                self.remove(key);
                return;
            }
            _ => {
                self.reset(key);
                return;
            }
        }
        self.sync_interest(key);
    }

    fn guest_connect(&mut self, key: Key, h: Header) {
        if self.conns.contains_key(&key) || self.connection_count() >= MAX_CONNECTIONS {
            self.push_control(key, OP_RST, 0);
            return;
        }
        let path = format!("{}_{}", self.uds_path.display(), key.0);
        let stream = match UnixStream::connect(&path) {
            Ok(s) if s.set_nonblocking(true).is_ok() => s,
            _ => {
                tracing::debug!(path, "vsock: nothing listens for the guest's connection");
                self.push_control(key, OP_RST, 0);
                return;
            }
        };
        let token = self.alloc_token();
        let mut c = Conn::new(stream, token, State::Established);
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        c.registered = c.wanted_events();
        self.register(&c.stream, token, c.registered);
        self.by_token.insert(token, key);
        self.conns.insert(key, c);
        self.push_control(key, OP_RESPONSE, 0);
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
            self.push_control(key, OP_CREDIT_UPDATE, 0);
        }
        self.sync_interest(key);
    }

    /// Handles an epoll event for a host-side socket.
    pub fn handle_event(&mut self, token: u64, events: u32) {
        if token == TOKEN_LISTENER {
            self.accept();
        } else if self.handshakes.contains_key(&token) {
            self.read_handshake(token);
        } else if let Some(&key) = self.by_token.get(&token) {
            if events & EventSet::OUT.bits() != 0 {
                self.flush_to_host(key);
            }
            // Reading happens when the guest has RX buffers: see `next_packet_for_guest`.
            if events & (EventSet::HANG_UP.bits() | EventSet::ERROR.bits()) != 0
                && events & EventSet::IN.bits() == 0
            {
                self.host_closed(key);
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.connection_count() >= MAX_CONNECTIONS
                        || stream.set_nonblocking(true).is_err()
                    {
                        continue; // dropped: the client sees the connection closed
                    }
                    let token = self.alloc_token();
                    self.register(&stream, token, EventSet::IN.bits());
                    self.handshakes.insert(
                        token,
                        Handshake {
                            stream,
                            line: Vec::new(),
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    /// Reads the client's `CONNECT <port>\n` one byte at a time, so that nothing past the line
    /// is consumed before the guest accepted.
    fn read_handshake(&mut self, token: u64) {
        let Some(hs) = self.handshakes.get_mut(&token) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match hs.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(&hs.line),
                Ok(1) if hs.line.len() < MAX_HANDSHAKE => hs.line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                _ => break None, // EOF, error or an overlong line
            }
        };
        let hs = self.handshakes.remove(&token).expect("handshake exists");
        let Some(guest_port) = port else {
            tracing::debug!("vsock: bad CONNECT line from a host client");
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                hs.stream.as_raw_fd(),
                EpollEvent::default(),
            );
            return;
        };
        let host_port = self.alloc_host_port(guest_port);
        let key = (host_port, guest_port);
        // Until the guest answers, watch nothing: its RESPONSE or RST decides.
        let _ = self.epoll.ctl(
            ControlOperation::Modify,
            hs.stream.as_raw_fd(),
            EpollEvent::new(EventSet::empty(), token),
        );
        self.by_token.insert(token, key);
        self.conns
            .insert(key, Conn::new(hs.stream, token, State::Connecting));
        self.push_control(key, OP_REQUEST, 0);
    }

    fn alloc_host_port(&mut self, guest_port: u32) -> u32 {
        loop {
            let p = self.next_host_port;
            self.next_host_port = self
                .next_host_port
                .checked_add(1)
                .unwrap_or(FIRST_HOST_PORT);
            if !self.conns.contains_key(&(p, guest_port)) {
                return p;
            }
        }
    }

    fn host_closed(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.state == State::Connecting {
            self.reset(key);
            return;
        }
        c.host_eof = true;
        c.state = State::Closing;
        self.push_control(key, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND);
        self.sync_interest(key);
    }

    /// The next packet for the guest, with at most `room` payload bytes: control packets first,
    /// then data from a stream the guest has credit for. `None` when there is nothing to send.
    pub fn next_packet_for_guest(&mut self, room: usize) -> Option<(Header, Vec<u8>)> {
        if let Some(h) = self.control.pop_front() {
            return Some((h, Vec::new()));
        }
        let keys: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.wants_read())
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let c = self.conns.get_mut(&key).expect("key listed above");
            let n = (c.peer_credit() as usize)
                .min(room)
                .min(MAX_PAYLOAD as usize);
            let mut buf = vec![0u8; n];
            match c.stream.read(&mut buf) {
                Ok(0) => self.host_closed(key),
                Ok(n) => {
                    buf.truncate(n);
                    c.tx_cnt += Wrapping(n as u32);
                    c.fwd_cnt_sent = c.fwd_cnt;
                    let h = self.header(key, OP_RW, 0, n as u32);
                    self.sync_interest(key);
                    return Some((h, buf));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.host_closed(key),
            }
            self.sync_interest(key);
        }
        self.control.pop_front().map(|h| (h, Vec::new()))
    }

    /// True when packets are waiting for guest RX buffers that are not there.
    pub fn has_control(&self) -> bool {
        !self.control.is_empty()
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

/// Parses `CONNECT <port>` (any case, surrounding blanks allowed).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?.trim();
    let (verb, port) = s.split_once(char::is_whitespace)?;
    if !verb.eq_ignore_ascii_case("connect") {
        return None;
    }
    port.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const GUEST: u64 = 3;

    fn muxer(name: &str) -> (Muxer, PathBuf) {
        let dir = std::env::temp_dir().join(format!("husk-vsock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        (Muxer::new(GUEST, &path).unwrap(), path)
    }

    fn pkt(op: u16, src_port: u32, dst_port: u32, payload: &[u8]) -> GuestPacket {
        GuestPacket {
            hdr: Header {
                src_cid: GUEST,
                dst_cid: HOST_CID,
                src_port,
                dst_port,
                len: payload.len() as u32,
                type_: TYPE_STREAM,
                op,
                flags: 0,
                buf_alloc: 4096,
                fwd_cnt: 0,
            },
            payload: payload.to_vec(),
        }
    }

    /// Runs the muxer's event loop for a moment.
    fn pump(m: &mut Muxer) {
        let mut events = vec![EpollEvent::default(); 16];
        for _ in 0..20 {
            let n = m.epoll().wait(10, &mut events).unwrap();
            for e in &events[..n] {
                m.handle_event(e.data(), e.events());
            }
        }
    }

    #[test]
    fn connect_line_parsing() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"connect 52 "), Some(52));
        assert_eq!(parse_connect(b"Connect\t7"), Some(7));
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT x"), None);
        assert_eq!(parse_connect(b"LISTEN 5"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
        assert_eq!(parse_connect(&[0xff, 0xfe]), None);
    }

    #[test]
    fn host_connect_becomes_a_request_then_ok_then_data() {
        let (mut m, path) = muxer("hostconn");
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"CONNECT 1024\n").unwrap();
        pump(&mut m);
        let (req, _) = m.next_packet_for_guest(4096).expect("a REQUEST");
        assert_eq!(
            (req.op, req.dst_port, req.dst_cid),
            (OP_REQUEST, 1024, GUEST)
        );
        let host_port = req.src_port;

        m.handle_guest_packet(pkt(OP_RESPONSE, 1024, host_port, b""));
        let mut line = [0u8; 64];
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let n = client.read(&mut line).unwrap();
        assert_eq!(
            std::str::from_utf8(&line[..n]).unwrap(),
            format!("OK {host_port}\n")
        );

        // Guest to host; our OK line does not count as guest bytes forwarded.
        m.handle_guest_packet(pkt(OP_RW, 1024, host_port, b"hello"));
        let n = client.read(&mut line).unwrap();
        assert_eq!(&line[..n], b"hello");
        m.handle_guest_packet(pkt(OP_CREDIT_REQUEST, 1024, host_port, b""));
        let (upd, _) = m.next_packet_for_guest(4096).unwrap();
        assert_eq!((upd.op, upd.fwd_cnt), (OP_CREDIT_UPDATE, 5));

        // Host to guest, within the guest's credit of 4096.
        client.write_all(b"world").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let (rw, data) = m.next_packet_for_guest(4096).expect("an RW");
        assert_eq!((rw.op, rw.src_port, rw.dst_port), (OP_RW, host_port, 1024));
        assert_eq!(data, b"world");
        assert_eq!(rw.buf_alloc, BUF_ALLOC);
    }

    #[test]
    fn guest_refusal_closes_the_host_client() {
        let (mut m, path) = muxer("refused");
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"connect 9\n").unwrap();
        pump(&mut m);
        let (req, _) = m.next_packet_for_guest(4096).unwrap();
        m.handle_guest_packet(pkt(OP_RST, 9, req.src_port, b""));
        assert_eq!(m.connection_count(), 0);
        let mut b = [0u8; 8];
        assert_eq!(client.read(&mut b).unwrap(), 0, "closed without OK");
    }

    #[test]
    fn garbage_handshake_is_dropped_and_others_go_on() {
        let (mut m, path) = muxer("garbage");
        let mut bad = UnixStream::connect(&path).unwrap();
        bad.write_all(&[b'x'; 100]).unwrap();
        let mut good = UnixStream::connect(&path).unwrap();
        good.write_all(b"CONNECT 5\n").unwrap();
        pump(&mut m);
        let (req, _) = m.next_packet_for_guest(4096).unwrap();
        assert_eq!(req.dst_port, 5);
        assert!(m.next_packet_for_guest(4096).is_none());
        let mut b = [0u8; 8];
        // Closed with unread bytes: the client sees EOF or a reset.
        match bad.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("garbage client still open: {other:?}"),
        }
    }

    #[test]
    fn guest_connect_reaches_a_host_listener() {
        let (mut m, path) = muxer("guestconn");
        let listener = UnixListener::bind(format!("{}_1025", path.display())).unwrap();
        m.handle_guest_packet(pkt(OP_REQUEST, 40000, 1025, b""));
        let (resp, _) = m.next_packet_for_guest(4096).unwrap();
        assert_eq!(
            (resp.op, resp.src_port, resp.dst_port),
            (OP_RESPONSE, 1025, 40000)
        );
        let (mut s, _) = listener.accept().unwrap();
        m.handle_guest_packet(pkt(OP_RW, 40000, 1025, b"log line\n"));
        let mut b = [0u8; 64];
        let n = s.read(&mut b).unwrap();
        assert_eq!(&b[..n], b"log line\n");
    }

    #[test]
    fn guest_connect_without_listener_is_reset() {
        let (mut m, _) = muxer("nolistener");
        m.handle_guest_packet(pkt(OP_REQUEST, 40000, 7777, b""));
        let (rst, _) = m.next_packet_for_guest(4096).unwrap();
        assert_eq!(rst.op, OP_RST);
    }

    #[test]
    fn data_for_an_unknown_connection_is_reset() {
        let (mut m, _) = muxer("unknown");
        m.handle_guest_packet(pkt(OP_RW, 1, 2, b"x"));
        assert_eq!(m.next_packet_for_guest(4096).unwrap().0.op, OP_RST);
        m.handle_guest_packet(pkt(OP_RST, 1, 2, b""));
        assert!(
            m.next_packet_for_guest(4096).is_none(),
            "no RST answers an RST"
        );
    }

    #[test]
    fn guest_overrunning_our_credit_is_reset() {
        let (mut m, path) = muxer("overrun");
        let _listener = UnixListener::bind(format!("{}_6", path.display())).unwrap();
        m.handle_guest_packet(pkt(OP_REQUEST, 50, 6, b""));
        let _ = m.next_packet_for_guest(4096);
        // Nobody reads the host side: after BUF_ALLOC bytes are queued, more is a violation.
        let chunk = vec![0u8; MAX_PAYLOAD as usize];
        let mut reset = false;
        for _ in 0..(2 * BUF_ALLOC / MAX_PAYLOAD + 64) {
            m.handle_guest_packet(pkt(OP_RW, 50, 6, &chunk));
            while let Some((h, _)) = m.next_packet_for_guest(4096) {
                reset |= h.op == OP_RST;
            }
            if reset {
                break;
            }
        }
        assert!(reset, "the connection was reset");
        assert_eq!(m.connection_count(), 0);
    }

    #[test]
    fn no_data_is_read_beyond_the_guest_credit() {
        let (mut m, path) = muxer("credit");
        let listener = UnixListener::bind(format!("{}_8", path.display())).unwrap();
        let mut p = pkt(OP_REQUEST, 60, 8, b"");
        p.hdr.buf_alloc = 10;
        m.handle_guest_packet(p);
        let _ = m.next_packet_for_guest(4096);
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(&[7u8; 100]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let (h, data) = m.next_packet_for_guest(4096).unwrap();
        assert_eq!((h.op, data.len()), (OP_RW, 10));
        assert!(m.next_packet_for_guest(4096).is_none(), "credit used up");
        // The guest consumed the 10 bytes: credit again.
        let mut upd = pkt(OP_CREDIT_UPDATE, 60, 8, b"");
        upd.hdr.buf_alloc = 10;
        upd.hdr.fwd_cnt = 10;
        m.handle_guest_packet(upd);
        let (_, data) = m.next_packet_for_guest(4096).unwrap();
        assert_eq!(data.len(), 10);
    }

    #[test]
    fn credit_request_is_answered() {
        let (mut m, path) = muxer("creditreq");
        let _l = UnixListener::bind(format!("{}_9", path.display())).unwrap();
        m.handle_guest_packet(pkt(OP_REQUEST, 70, 9, b""));
        let _ = m.next_packet_for_guest(4096);
        m.handle_guest_packet(pkt(OP_CREDIT_REQUEST, 70, 9, b""));
        let (h, _) = m.next_packet_for_guest(4096).unwrap();
        assert_eq!((h.op, h.buf_alloc), (OP_CREDIT_UPDATE, BUF_ALLOC));
    }

    #[test]
    fn host_eof_sends_shutdown() {
        let (mut m, path) = muxer("eof");
        let listener = UnixListener::bind(format!("{}_10", path.display())).unwrap();
        m.handle_guest_packet(pkt(OP_REQUEST, 80, 10, b""));
        let _ = m.next_packet_for_guest(4096);
        let (s, _) = listener.accept().unwrap();
        drop(s);
        std::thread::sleep(Duration::from_millis(20));
        let (h, _) = m.next_packet_for_guest(4096).unwrap();
        assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND));
    }

    #[test]
    fn existing_socket_path_is_refused() {
        let (_m, path) = muxer("exists");
        assert!(matches!(
            Muxer::new(GUEST, &path),
            Err(MuxerError::SocketExists(_))
        ));
    }
}
