//! The muxer driven without a guest: guest packets are handed to it directly, and what it has
//! for the guest is taken with `next_packet_for_guest`.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EpollEvent;

use super::host::parse_connect;
use super::*;
use crate::devices::virtio::vsock::reset_queue::RESET_QUEUE_CAP;

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

/// Runs the muxer's event loop until nothing is ready (for 10 ms); returns the events handled.
fn pump(m: &mut Muxer) -> usize {
    let mut events = vec![EpollEvent::default(); 16];
    let mut handled = 0;
    for _ in 0..100 {
        let n = m.epoll().wait(10, &mut events).unwrap();
        if n == 0 {
            break;
        }
        for e in &events[..n] {
            m.handle_event(e.data(), e.events());
        }
        handled += n;
    }
    handled
}

/// Everything the muxer has for the guest now, with room for 4096 payload bytes each.
fn drain(m: &mut Muxer) -> Vec<(Header, Vec<u8>)> {
    std::iter::from_fn(|| m.next_packet_for_guest(4096)).collect()
}

/// A guest connection from `guest_port` to the host listener for `host_port` (which must be
/// bound), with `buf_alloc` bytes of guest credit; its RESPONSE is taken. Returns the accepted
/// host side.
fn guest_conn(
    m: &mut Muxer,
    listener: &UnixListener,
    guest_port: u32,
    host_port: u32,
    buf_alloc: u32,
) -> UnixStream {
    let mut p = pkt(OP_REQUEST, guest_port, host_port, b"");
    p.hdr.buf_alloc = buf_alloc;
    m.handle_guest_packet(p);
    let (resp, _) = m.next_packet_for_guest(4096).unwrap();
    assert_eq!(resp.op, OP_RESPONSE);
    listener.accept().unwrap().0
}

fn listen(path: &std::path::Path, port: u32) -> UnixListener {
    UnixListener::bind(format!("{}_{port}", path.display())).unwrap()
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
    pump(&mut m);
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
    pump(&mut m);
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
    pump(&mut m);
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

// (a) What the muxer owes the guest is bounded, however long the guest posts no RX buffers.

#[test]
fn stray_packets_queue_at_most_the_reset_cap() {
    let (mut m, _) = muxer("rstcap");
    let strays = RESET_QUEUE_CAP as u32 + 1000;
    for port in 0..strays {
        m.handle_guest_packet(pkt(OP_RW, port, 7, b"x"));
        // The same key again adds nothing.
        m.handle_guest_packet(pkt(OP_CREDIT_REQUEST, port, 7, b""));
    }
    assert_eq!(m.queued_resets(), RESET_QUEUE_CAP);
    let sent = drain(&mut m);
    assert_eq!(sent.len(), RESET_QUEUE_CAP);
    assert!(sent.iter().all(|(h, _)| h.op == OP_RST && h.src_port == 7));
    // The newest are kept, oldest first.
    assert_eq!(sent[0].0.dst_port, strays - RESET_QUEUE_CAP as u32);
    assert_eq!(sent.last().unwrap().0.dst_port, strays - 1);
}

#[test]
fn a_connection_owes_at_most_one_control_packet() {
    let (mut m, path) = muxer("oneowed");
    let _l = listen(&path, 12);
    m.handle_guest_packet(pkt(OP_REQUEST, 90, 12, b""));
    for _ in 0..10_000 {
        m.handle_guest_packet(pkt(OP_CREDIT_REQUEST, 90, 12, b""));
    }
    let sent = drain(&mut m);
    assert_eq!(
        sent.len(),
        1,
        "the credit requests add nothing to the RESPONSE"
    );
    assert_eq!(sent[0].0.op, OP_RESPONSE);
    for _ in 0..10_000 {
        m.handle_guest_packet(pkt(OP_CREDIT_REQUEST, 90, 12, b""));
    }
    let sent = drain(&mut m);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0.op, OP_CREDIT_UPDATE);
}

#[test]
fn a_new_connection_on_the_same_ports_cancels_a_queued_reset() {
    let (mut m, path) = muxer("reuse");
    let _l = listen(&path, 13);
    m.handle_guest_packet(pkt(OP_RW, 91, 13, b"x"));
    m.handle_guest_packet(pkt(OP_REQUEST, 91, 13, b""));
    let sent = drain(&mut m);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].0.op, OP_RESPONSE,
        "no stale RST ends the new connection"
    );
}

#[test]
fn a_host_client_gone_before_the_guest_heard_of_it_costs_no_reset() {
    let (mut m, path) = muxer("unheard");
    let mut client = UnixStream::connect(&path).unwrap();
    client.write_all(b"CONNECT 5\n").unwrap();
    pump(&mut m);
    drop(client);
    pump(&mut m);
    assert_eq!(m.connection_count(), 0);
    assert!(drain(&mut m).is_empty(), "neither the REQUEST nor an RST");
}

// (b) A connection the host closed owes one SHUTDOWN, then waits a bounded time for the RST.

#[test]
fn host_close_sends_one_shutdown_and_then_stays_quiet() {
    let (mut m, path) = muxer("oneshut");
    let l = listen(&path, 14);
    let s = guest_conn(&mut m, &l, 92, 14, 4096);
    drop(s);
    assert!(pump(&mut m) > 0);
    let sent = drain(&mut m);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].0.op, sent[0].0.flags),
        (OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND)
    );
    // The hung-up stream no longer wakes the loop, and nothing more is queued.
    assert_eq!(pump(&mut m), 0);
    assert!(drain(&mut m).is_empty());
    assert_eq!(m.connection_count(), 1, "waiting for the guest's RST");
    m.handle_guest_packet(pkt(OP_RST, 92, 14, b""));
    assert_eq!(m.connection_count(), 0);
    assert!(drain(&mut m).is_empty());
}

#[test]
fn a_guest_shutdown_answering_ours_ends_the_connection() {
    let (mut m, path) = muxer("shutans");
    let l = listen(&path, 15);
    drop(guest_conn(&mut m, &l, 93, 15, 4096));
    pump(&mut m);
    assert_eq!(drain(&mut m)[0].0.op, OP_SHUTDOWN);
    let mut p = pkt(OP_SHUTDOWN, 93, 15, b"");
    p.hdr.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    m.handle_guest_packet(p);
    assert_eq!(m.connection_count(), 0);
    assert_eq!(drain(&mut m)[0].0.op, OP_RST);
}

#[test]
fn a_closing_connection_is_dropped_when_the_guest_never_answers() {
    let (mut m, path) = muxer("closetimeout");
    let l = listen(&path, 16);
    let closed_at = Instant::now();
    drop(guest_conn(&mut m, &l, 94, 16, 4096));
    pump(&mut m);
    assert_eq!(drain(&mut m)[0].0.op, OP_SHUTDOWN);
    assert!(m.timer.is_armed().unwrap());

    m.handle_timer(closed_at + CLOSE_TIMEOUT - Duration::from_secs(1));
    assert_eq!(m.connection_count(), 1, "not yet");
    assert!(m.timer.is_armed().unwrap(), "armed again for the deadline");

    m.handle_timer(Instant::now() + CLOSE_TIMEOUT);
    assert_eq!(m.connection_count(), 0);
    let sent = drain(&mut m);
    assert_eq!((sent.len(), sent[0].0.op), (1, OP_RST));
    assert!(!m.timer.is_armed().unwrap(), "nothing left to wait for");
}

#[test]
fn the_close_timer_wakes_the_muxer_loop() {
    let (mut m, path) = muxer("closetimer");
    let l = listen(&path, 17);
    drop(guest_conn(&mut m, &l, 95, 17, 4096));
    pump(&mut m);
    let _ = drain(&mut m);
    // Bring the deadline near rather than waiting CLOSE_TIMEOUT.
    let soon = Instant::now() + Duration::from_millis(20);
    m.conns.get_mut(&(17, 95)).unwrap().state = State::Closing { deadline: soon };
    m.set_timer(Some(soon), Instant::now());
    let mut events = vec![EpollEvent::default(); 4];
    let n = m.epoll().wait(2000, &mut events).unwrap();
    assert_eq!((n, events[0].data()), (1, TOKEN_TIMER));
    m.handle_event(events[0].data(), events[0].events());
    assert_eq!(m.connection_count(), 0);
    assert_eq!(pump(&mut m), 0, "the timer does not fire again");
}

// (c) Connections are capped per side and per host listener; connecting never blocks.

#[test]
fn guest_connections_are_capped_per_port_and_in_all() {
    let (mut m, path) = muxer("guestcap");
    m.limits = Limits {
        host: 8,
        guest: 3,
        guest_per_port: 2,
    };
    let (l20, l21, l22) = (listen(&path, 20), listen(&path, 21), listen(&path, 22));
    let mut accepted = vec![
        guest_conn(&mut m, &l20, 1, 20, 4096),
        guest_conn(&mut m, &l20, 2, 20, 4096),
    ];
    m.handle_guest_packet(pkt(OP_REQUEST, 3, 20, b""));
    assert_eq!(drain(&mut m)[0].0.op, OP_RST, "a third to one port");
    accepted.push(guest_conn(&mut m, &l21, 4, 21, 4096));
    m.handle_guest_packet(pkt(OP_REQUEST, 5, 22, b""));
    assert_eq!(drain(&mut m)[0].0.op, OP_RST, "a fourth in all");
    assert_eq!(m.connection_count(), 3);
    // One ends: there is room again.
    m.handle_guest_packet(pkt(OP_RST, 1, 20, b""));
    accepted.push(guest_conn(&mut m, &l22, 6, 22, 4096));
    assert_eq!(m.connection_count(), 3);
}

#[test]
fn host_connections_are_capped_and_the_guest_cannot_take_their_room() {
    let (mut m, path) = muxer("hostcap");
    m.limits = Limits {
        host: 2,
        guest: 8,
        guest_per_port: 8,
    };
    let l = listen(&path, 30);
    let _from_guest: Vec<_> = (0..4)
        .map(|p| guest_conn(&mut m, &l, p, 30, 4096))
        .collect();
    // Two host clients fit, one still writing its line; a third is closed at once.
    let mut a = UnixStream::connect(&path).unwrap();
    a.write_all(b"CONNECT 1\n").unwrap();
    let _b = UnixStream::connect(&path).unwrap();
    pump(&mut m);
    let mut c = UnixStream::connect(&path).unwrap();
    pump(&mut m);
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(c.read(&mut byte).unwrap(), 0, "the third client is closed");
    assert_eq!(m.connection_count(), 6);
    let sent = drain(&mut m);
    assert_eq!((sent.len(), sent[0].0.op), (1, OP_REQUEST));
}

#[test]
fn a_host_listener_with_a_full_backlog_refuses_at_once() {
    let (mut m, path) = muxer("backlog");
    let l = listen(&path, 31);
    // SAFETY: listen() on a socket we own; calling it again only changes the backlog.
    assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 1) }, 0);
    // Nobody accepts. Connecting must not block the loop: the backlog fills, then RSTs come.
    let mut responses = 0;
    for port in 0..8 {
        m.handle_guest_packet(pkt(OP_REQUEST, port, 31, b""));
        match drain(&mut m)[0].0.op {
            OP_RESPONSE => responses += 1,
            op => assert_eq!(op, OP_RST),
        }
    }
    assert!(
        (1..8).contains(&responses),
        "{responses} connections queued"
    );
    assert_eq!(m.connection_count(), responses);
}

// (d) Data the guest cannot take yet does not make the loop spin.

#[test]
fn a_readable_stream_wakes_the_loop_once_until_the_guest_reads() {
    let (mut m, path) = muxer("nospin");
    let l = listen(&path, 40);
    let mut s = guest_conn(&mut m, &l, 96, 40, 4096);
    s.write_all(b"for the guest").unwrap();
    assert_eq!(pump(&mut m), 1, "one wake-up for the data");
    // No RX buffers: the data waits and the loop sleeps.
    assert_eq!(pump(&mut m), 0);
    let (h, data) = m.next_packet_for_guest(4096).unwrap();
    assert_eq!((h.op, data.as_slice()), (OP_RW, &b"for the guest"[..]));
    // Drained: the next read finds nothing and watches the stream again.
    assert!(m.next_packet_for_guest(4096).is_none());
    s.write_all(b"more").unwrap();
    assert_eq!(pump(&mut m), 1);
}

#[test]
fn a_buffer_with_room_for_a_header_only_gets_no_data() {
    let (mut m, path) = muxer("noroom");
    let l = listen(&path, 41);
    let mut s = guest_conn(&mut m, &l, 97, 41, 4096);
    s.write_all(b"x").unwrap();
    pump(&mut m);
    assert!(m.next_packet_for_guest(0).is_none());
    assert_eq!(
        m.connection_count(),
        1,
        "a zero-byte read was not taken for EOF"
    );
    assert_eq!(drain(&mut m)[0].1, b"x");
}

#[test]
fn data_left_behind_a_hang_up_reaches_the_guest_before_the_shutdown() {
    let (mut m, path) = muxer("hupdata");
    let l = listen(&path, 42);
    let mut s = guest_conn(&mut m, &l, 98, 42, 10);
    s.write_all(&[5u8; 25]).unwrap();
    drop(s);
    pump(&mut m);
    assert_eq!(pump(&mut m), 0, "the hang-up is reported once");
    let mut got = 0;
    for _ in 0..10 {
        let sent = drain(&mut m);
        assert!(!sent.is_empty(), "stuck after {got} bytes");
        for (h, data) in &sent {
            if h.op == OP_SHUTDOWN {
                assert_eq!(got, 25);
                return;
            }
            assert_eq!(h.op, OP_RW);
            got += data.len() as u32;
        }
        // Out of credit: the guest read what it got.
        let mut upd = pkt(OP_CREDIT_UPDATE, 98, 42, b"");
        (upd.hdr.buf_alloc, upd.hdr.fwd_cnt) = (10, got);
        m.handle_guest_packet(upd);
    }
    panic!("no SHUTDOWN after {got} bytes");
}

#[test]
fn streams_with_data_take_turns() {
    let (mut m, path) = muxer("turns");
    let l = listen(&path, 43);
    let mut a = guest_conn(&mut m, &l, 1, 43, 1 << 20);
    let mut b = guest_conn(&mut m, &l, 2, 43, 1 << 20);
    a.write_all(&[1u8; 8192]).unwrap();
    b.write_all(&[2u8; 8192]).unwrap();
    pump(&mut m);
    let order: Vec<u32> = (0..4)
        .map(|_| m.next_packet_for_guest(1024).unwrap().0.dst_port)
        .collect();
    assert_eq!(order, [1, 2, 1, 2]);
}
