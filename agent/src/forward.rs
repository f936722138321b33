//! Port forwarding into the guest (`kubectl port-forward`).
//!
//! containerd forwards a port by dialling `localhost:PORT` inside the pod's network namespace on
//! the host. There nothing listens: the pod's servers run in the guest. So the shim listens there
//! on every port a guest process listens on (it learns them with `WatchListeners`) and carries
//! each connection over vsock to this module, which dials the port inside the guest.
//!
//! On vsock port [`husk_agent_protocol::FORWARD_PORT`] the host opens one stream per forwarded
//! connection and writes `PORT <n>\n`; the agent answers `OK\n` once it has a connection to the
//! guest's port, or `ERR <why>\n`, and then copies bytes both ways until either side closes.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    accept, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};

/// At most this many listening ports are reported: the host binds one listener per port.
pub const MAX_PORTS: usize = 256;
/// Forwarded connections open at once; more are refused until one ends.
const MAX_CONNECTIONS: usize = 64;
/// How long `WatchListeners` waits for a change before answering with what it has.
const WATCH_FOR: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(500);

static OPEN: AtomicUsize = AtomicUsize::new(0);

/// The TCP ports some process in the guest listens on (any address, IPv4 or IPv6), sorted.
pub fn listening_ports() -> Vec<u32> {
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            ports.extend(parse_listeners(&text));
        }
    }
    ports.into_iter().take(MAX_PORTS).collect()
}

/// The local ports of the LISTEN (state 0A) rows of a `/proc/net/tcp` table.
fn parse_listeners(table: &str) -> Vec<u32> {
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let mut cols = row.split_whitespace();
            let local = cols.nth(1)?;
            let state = cols.nth(1)?;
            if state != "0A" {
                return None;
            }
            let port = u32::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            (port != 0).then_some(port)
        })
        .collect()
}

/// Waits until the listening ports differ from `known` (or a while has passed); returns them.
pub fn watch_listeners(known: &[u32]) -> Vec<u32> {
    let deadline = Instant::now() + WATCH_FOR;
    loop {
        let now = listening_ports();
        if now != known || Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// Binds the forwarding port. Called before the vsock filter is installed: afterwards the agent
/// can no longer make vsock sockets.
pub fn bind_listener(port: u32) -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))?;
    listen(&fd, Backlog::new(16).expect("a small backlog"))?;
    Ok(fd)
}

/// Serves forwarded connections on `listener`, on a thread of its own, for the agent's life.
pub fn serve(listener: OwnedFd) {
    std::thread::spawn(move || loop {
        let conn = match accept(listener.as_raw_fd()) {
            // SAFETY: accept returned a new descriptor that nothing else owns.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(e) => {
                crate::log::info(&format!("port forwarding: accept: {e}"));
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        // Only the host forwards: anything in the guest that reached this port over vsock
        // loopback is turned away.
        match crate::rpc::peer_cid(conn.as_raw_fd()) {
            Ok(2) => {}
            _ => continue,
        }
        if OPEN.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            OPEN.fetch_sub(1, Ordering::SeqCst);
            let mut s = UnixStream::from(conn);
            let _ = s.write_all(b"ERR too many forwarded connections\n");
            continue;
        }
        std::thread::spawn(move || {
            if let Err(e) = forward(UnixStream::from(conn)) {
                crate::log::debug(&format!("port forwarding: {e}"));
            }
            OPEN.fetch_sub(1, Ordering::SeqCst);
        });
    });
}

/// One forwarded connection: the header, the dial, then bytes both ways. (A vsock stream is
/// used through `UnixStream`, which only reads, writes and shuts down its descriptor.)
fn forward(host: UnixStream) -> io::Result<()> {
    host.set_read_timeout(Some(Duration::from_secs(10)))?;
    let line = husk_agent_protocol::read_header_line(&host, 32)?;
    host.set_read_timeout(None)?;
    let port = line
        .strip_prefix("PORT ")
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p != 0);
    let Some(port) = port else {
        (&host).write_all(b"ERR expected PORT <1-65535>\n")?;
        return Ok(());
    };
    let guest = match dial(port) {
        Ok(s) => s,
        Err(e) => {
            (&host).write_all(format!("ERR port {port}: {e}\n").as_bytes())?;
            return Ok(());
        }
    };
    (&host).write_all(b"OK\n")?;
    let (host2, guest2) = (host.try_clone()?, guest.try_clone()?);
    let up = std::thread::spawn(move || copy_then_shutdown(host2, guest2));
    copy_then_shutdown_rev(guest, host);
    let _ = up.join();
    Ok(())
}

/// The guest's port: on loopback first (servers on 127.0.0.1, 0.0.0.0 or ::), then on each of
/// the guest's own addresses (servers bound to the pod IP only).
fn dial(port: u16) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::ConnectionRefused, "nothing listens");
    let mut addrs: Vec<SocketAddr> = vec![
        ([127, 0, 0, 1], port).into(),
        (std::net::Ipv6Addr::LOCALHOST, port).into(),
    ];
    if let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() {
        for a in ifaddrs {
            let Some(addr) = a.address else { continue };
            if let Some(v4) = addr.as_sockaddr_in() {
                let ip = v4.ip();
                if !ip.is_loopback() {
                    addrs.push((ip, port).into());
                }
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                let ip = v6.ip();
                // Link-local addresses need a scope; the pod's global ones do not.
                if !ip.is_loopback() && (ip.segments()[0] & 0xffc0) != 0xfe80 {
                    addrs.push((ip, port).into());
                }
            }
        }
    }
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn copy_then_shutdown(mut from: UnixStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

fn copy_then_shutdown_rev(mut from: TcpStream, mut to: UnixStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn listeners_are_the_listen_rows() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0\n\
   2: 0200580A:1F90 0100580A:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(parse_listeners(table), vec![8080, 80]);
        let v6 = "  sl  local_address                         remote_address                        st\n\
   0: 00000000000000000000000000000000:1F91 00000000000000000000000000000000:0000 0A 0\n";
        assert_eq!(parse_listeners(v6), vec![8081]);
        assert!(parse_listeners("header\ngarbage\n 0: x:y z 0A\n").is_empty());
    }

    #[test]
    fn a_forwarded_connection_reaches_a_loopback_server() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf.map(|b| b.to_ascii_uppercase())).unwrap();
        });
        let (mut host, agent) = UnixStream::pair().unwrap();
        let worker = std::thread::spawn(move || forward(agent));
        host.write_all(format!("PORT {port}\nping").as_bytes())
            .unwrap();
        host.shutdown(Shutdown::Write).unwrap();
        let mut answer = String::new();
        host.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "OK\nPING");
        worker.join().unwrap().unwrap();
    }

    #[test]
    fn bad_headers_and_closed_ports_get_err() {
        for header in ["PORT 0\n", "PORT 70000\n", "GET / HTTP/1.0\n"] {
            let (mut host, agent) = UnixStream::pair().unwrap();
            host.write_all(header.as_bytes()).unwrap();
            forward(agent).unwrap();
            let mut answer = String::new();
            host.read_to_string(&mut answer).unwrap();
            assert!(
                answer.starts_with("ERR expected PORT"),
                "{header}: {answer}"
            );
        }
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let (mut host, agent) = UnixStream::pair().unwrap();
        host.write_all(format!("PORT {port}\n").as_bytes()).unwrap();
        forward(agent).unwrap();
        let mut answer = String::new();
        host.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with(&format!("ERR port {port}")), "{answer}");
    }
}
