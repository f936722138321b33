//! The vsock muxer driven by a hostile guest: sequences of guest packets (any op, to any
//! port, with any credit), interleaved with what the host side does (accepting, writing,
//! closing, connecting with a `CONNECT` line), the muxer's event loop and its timer, and the
//! guest taking packets with RX buffers of any size.
//!
//! Besides not panicking or hanging, the muxer must keep to the guest's credit. Inputs that
//! start with an odd byte check that: every guest packet then offers the same buffer size and
//! never acknowledges a byte, so a connection may carry no more than that to the guest.

#![no_main]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use husk_fuzz::host::{Resources, VsockHost, GUEST_CID, LISTENING_PORTS};
use husk_fuzz::input::Input;
use husk_vmm::devices::virtio::vsock::muxer::{Muxer, MAX_GUEST_CONNECTIONS, MAX_HOST_CONNECTIONS};
use husk_vmm::devices::virtio::vsock::packet::*;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::epoll::EpollEvent;

fuzz_target!(|data: &[u8]| {
    let host = VsockHost::get();
    let before = Resources::now();
    run(host, data);
    host.drain();
    before.assert_unchanged();
});

const OPS: [u16; 7] = [
    OP_REQUEST,
    OP_RESPONSE,
    OP_RST,
    OP_SHUTDOWN,
    OP_RW,
    OP_CREDIT_UPDATE,
    OP_CREDIT_REQUEST,
];
const GUEST_PORTS: [u32; 3] = [1000, 1001, 2000];
const CONNECT_LINES: [&[u8]; 6] = [
    b"CONNECT 1000\n",
    b"connect 1001\n",
    b"CONNECT 2000\n",
    b"CONNECT 7\n",
    b"CONNECT 1000",
    b"CONNECT 4294967296\n",
];

struct Harness {
    muxer: Muxer,
    /// Host ports the muxer chose for host-initiated connections (from its REQUESTs).
    host_ports: Vec<u32>,
    /// Host-side streams: accepted guest connections and our own clients.
    streams: Vec<UnixStream>,
    /// The buffer size every guest packet offers, with no byte acknowledged, when the credit
    /// is checked.
    fixed_credit: Option<u32>,
    /// Per (host port, guest port): bytes the guest received since the muxer announced the
    /// connection (with its REQUEST or RESPONSE).
    received: BTreeMap<(u32, u32), u32>,
}

impl Harness {
    fn port(&self, input: &mut Input) -> u32 {
        match input.u8() {
            n @ 0..=0x5f => LISTENING_PORTS[usize::from(n) % LISTENING_PORTS.len()],
            n @ 0x60..=0xdf if !self.host_ports.is_empty() => {
                self.host_ports[usize::from(n) % self.host_ports.len()]
            }
            _ => input.u32(),
        }
    }

    fn guest_packet(&mut self, input: &mut Input) {
        let op = match input.u8() {
            0xff => input.u16(),
            n => OPS[usize::from(n) % OPS.len()],
        };
        let src_port = match input.u8() {
            0xff => input.u32(),
            n => GUEST_PORTS[usize::from(n) % GUEST_PORTS.len()],
        };
        let dst_port = self.port(input);
        let type_ = if input.u8() == 0xff {
            input.u16()
        } else {
            TYPE_STREAM
        };
        let flags = match input.u8() {
            0xff => input.u32(),
            n => u32::from(n & 3),
        };
        let (buf_alloc, fwd_cnt) = match self.fixed_credit {
            Some(b) => (b, 0),
            None => {
                let b = match input.u8() % 4 {
                    0 => 0,
                    1 => 4096,
                    2 => 256 * 1024,
                    _ => input.u32(),
                };
                (b, input.u32())
            }
        };
        // Long payloads without long inputs: a length and one byte to repeat.
        let len = usize::from(input.u16()).min(MAX_PAYLOAD as usize);
        let payload = vec![input.u8(); len];
        let hdr = Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: len as u32,
            type_,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        };
        // Through the parser, as the device's TX path does.
        let mut wire = hdr.to_bytes().to_vec();
        wire.extend_from_slice(&payload);
        let pkt = read_guest_packet(&mut &wire[..], wire.len(), GUEST_CID).expect("valid packet");

        self.muxer.handle_guest_packet(pkt);
    }

    /// The guest takes up to `count` packets with RX buffers of `room` bytes each.
    fn take(&mut self, room: usize, count: u8) {
        for _ in 0..count {
            let Some(payload_room) = room.checked_sub(HDR_SIZE) else {
                return;
            };
            let Some((hdr, data)) = self.muxer.next_packet_for_guest(payload_room) else {
                return;
            };
            assert!(data.len() <= payload_room && data.len() <= MAX_PAYLOAD as usize);
            assert_eq!(hdr.len as usize, data.len());
            assert_eq!((hdr.src_cid, hdr.dst_cid), (HOST_CID, GUEST_CID));
            assert_eq!(hdr.type_, TYPE_STREAM);
            assert!(hdr.op == OP_RW || data.is_empty(), "{hdr:?}");
            let key = (hdr.src_port, hdr.dst_port);
            match hdr.op {
                OP_REQUEST | OP_RESPONSE => {
                    self.received.insert(key, 0);
                    if hdr.op == OP_REQUEST && !self.host_ports.contains(&hdr.src_port) {
                        self.host_ports.push(hdr.src_port);
                        if self.host_ports.len() > 8 {
                            self.host_ports.remove(0);
                        }
                    }
                }
                OP_RW => {
                    let got = self.received.entry(key).or_default();
                    *got = got.saturating_add(hdr.len);
                    if let Some(b) = self.fixed_credit {
                        assert!(
                            *got <= b,
                            "the muxer overran the guest's credit: {got} > {b}"
                        );
                    }
                }
                _ => {}
            }
        }
    }

    /// One round of the muxer's event loop, as the device's worker runs it.
    fn pump(&mut self) {
        let mut events = vec![EpollEvent::default(); 16];
        let n = self.muxer.epoll().wait(0, &mut events).unwrap_or(0);
        for e in &events[..n] {
            self.muxer.handle_event(e.data(), e.events());
        }
    }

    fn stream(&mut self, input: &mut Input) -> Option<usize> {
        let pick = usize::from(input.u8());
        (!self.streams.is_empty()).then(|| pick % self.streams.len())
    }
}

fn run(host: &VsockHost, data: &[u8]) {
    let path = host.socket_path();
    let mut h = Harness {
        muxer: Muxer::new(GUEST_CID, &path).expect("muxer"),
        host_ports: Vec::new(),
        streams: Vec::new(),
        fixed_credit: None,
        received: BTreeMap::new(),
    };
    let mut input = Input::new(data);
    if input.u8() & 1 != 0 {
        h.fixed_credit = Some(u32::from(input.u16()) * 8);
    }
    while !input.is_empty() {
        match input.u8() % 10 {
            0..=2 => h.guest_packet(&mut input),
            3 => {
                let room = match input.u8() % 4 {
                    0 => HDR_SIZE,
                    1 => 4096,
                    2 => HDR_SIZE + MAX_PAYLOAD as usize,
                    _ => usize::from(input.u16()),
                };
                let count = input.u8() % 8 + 1;
                h.take(room, count);
            }
            4 => {
                if let Some(s) = host.accept(usize::from(input.u8())) {
                    h.streams.push(s);
                }
            }
            5 => {
                if let Some(i) = h.stream(&mut input) {
                    let len = usize::from(input.u16());
                    let _ = h.streams[i].write(&vec![input.u8(); len]);
                }
            }
            6 => {
                if let Some(i) = h.stream(&mut input) {
                    match input.u8() % 4 {
                        0 => drop(h.streams.swap_remove(i)),
                        1 => {
                            let _ = h.streams[i].shutdown(std::net::Shutdown::Write);
                        }
                        2 => {
                            let _ = h.streams[i].shutdown(std::net::Shutdown::Read);
                        }
                        _ => {
                            let _ = h.streams[i].shutdown(std::net::Shutdown::Both);
                        }
                    }
                }
            }
            7 => {
                if let Ok(mut s) = UnixStream::connect(&path) {
                    let line = match input.u8() {
                        0xff => input.bytes(64),
                        n => CONNECT_LINES[usize::from(n) % CONNECT_LINES.len()],
                    };
                    let _ = s.write_all(line);
                    let _ = s.set_nonblocking(true);
                    h.streams.push(s);
                }
            }
            8 => h.pump(),
            _ => {
                let later = Duration::from_millis(u64::from(input.u16()) * 10);
                h.muxer.handle_timer(Instant::now() + later);
            }
        }
        assert!(h.muxer.connection_count() <= MAX_HOST_CONNECTIONS + MAX_GUEST_CONNECTIONS);
    }
    // Whatever is left for the guest is bounded: the muxer owes each connection at most one
    // control packet, and its reset queue is capped.
    h.pump();
    h.take(HDR_SIZE + 4096, 255);
    let bound = h.muxer.connection_count() + 256;
    let mut left = 0;
    while h.muxer.next_packet_for_guest(0).is_some() {
        left += 1;
        assert!(
            left <= bound,
            "more control packets than connections and resets"
        );
    }
    drop(h.muxer);
    assert!(!path.exists(), "the muxer left its socket behind");
}
