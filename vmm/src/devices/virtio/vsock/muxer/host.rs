//! Host clients of the muxer's socket: accepting them, reading their `CONNECT <port>` line,
//! and pausing the listener when `accept` fails for want of resources.

use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};

use super::{Muxer, ACCEPT_RETRY, FIRST_HOST_PORT, MAX_HANDSHAKE, TOKEN_LISTENER};
use crate::devices::virtio::vsock::conn::{Conn, Origin, State};
use crate::devices::virtio::vsock::packet::OP_REQUEST;

/// A host client that has not finished its `CONNECT <port>\n` line yet.
pub(super) struct Handshake {
    pub(super) stream: UnixStream,
    pub(super) line: Vec<u8>,
}

impl Muxer {
    pub(super) fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.count(Origin::Host) >= self.limits.host {
                        tracing::debug!("vsock: too many host connections; one refused");
                        continue; // dropped: the client sees the connection closed
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let token = self.alloc_token();
                    let ev = EpollEvent::new(EventSet::IN, token);
                    if let Err(e) = self
                        .epoll
                        .ctl(ControlOperation::Add, stream.as_raw_fd(), ev)
                    {
                        tracing::warn!(error = %e, "vsock: cannot watch a host client");
                        continue;
                    }
                    let line = Vec::new();
                    self.handshakes.insert(token, Handshake { stream, line });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // Most likely out of file descriptors. The client stays in the backlog and
                    // the listener readable: watching it now would wake us in a loop.
                    tracing::warn!(error = %e, "vsock: cannot accept a host client; pausing");
                    self.pause_accepting();
                    break;
                }
            }
        }
    }

    fn pause_accepting(&mut self) {
        if self.listener_watched {
            let fd = self.listener.as_raw_fd();
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            self.listener_watched = false;
        }
        self.accept_retry_at = Some(Instant::now() + ACCEPT_RETRY);
        self.arm_timer_by(Instant::now() + ACCEPT_RETRY);
    }

    /// Watches the listener again, if accepting was paused: called when a connection ends (a
    /// descriptor is free again) and when the retry time is up.
    pub(super) fn resume_accepting(&mut self) {
        if self.listener_watched {
            return;
        }
        let fd = self.listener.as_raw_fd();
        let ev = EpollEvent::new(EventSet::IN, TOKEN_LISTENER);
        match self.epoll.ctl(ControlOperation::Add, fd, ev) {
            Ok(()) => {
                self.listener_watched = true;
                self.accept_retry_at = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "vsock: cannot watch the socket again");
                self.pause_accepting();
            }
        }
    }

    /// Reads the client's `CONNECT <port>\n` one byte at a time, so that nothing past the line
    /// is consumed before the guest accepted.
    pub(super) fn read_handshake(&mut self, token: u64) {
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
        let Some(hs) = self.handshakes.remove(&token) else {
            return;
        };
        let Some(guest_port) = port else {
            tracing::debug!("vsock: bad CONNECT line from a host client");
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                hs.stream.as_raw_fd(),
                EpollEvent::default(),
            );
            self.resume_accepting();
            return;
        };
        let host_port = self.alloc_host_port(guest_port);
        let key = (host_port, guest_port);
        // Until the guest answers, watch for nothing but a hang-up: its RESPONSE or RST decides.
        let mut c = Conn::new(hs.stream, token, Origin::Host, State::Connecting);
        c.registered = Some(EventSet::IN.bits());
        self.by_token.insert(token, key);
        self.conns.insert(key, c);
        self.sync_interest(key);
        self.owe(key, OP_REQUEST);
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
}

/// Parses `CONNECT <port>` (any case, surrounding blanks allowed).
pub(super) fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?.trim();
    let (verb, port) = s.split_once(char::is_whitespace)?;
    if !verb.eq_ignore_ascii_case("connect") {
        return None;
    }
    port.trim().parse().ok()
}
