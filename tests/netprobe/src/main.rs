//! `make bench`'s network probe. One binary on both ends of every measurement, so that a pod
//! and a plain namespace are compared with the same code: the bench runs it in network
//! namespaces on the test host and, linked statically, inside a guest container (whose busybox
//! `nc` moves 1 KiB per system call and would measure itself, not the network).
//!
//! ```text
//! husk-netprobe send HOST PORT MIB   send MIB MiB on one connection; print MiB/s once the peer has it all
//!                                    (waits up to 30 s for the sink to listen)
//! husk-netprobe sink PORT MIB        accept one connection (within 60 s), read MIB MiB, close; print MiB/s
//! husk-netprobe rtt HOST PORT N      N HTTP GETs of /, a connection each; print the median in ms
//! ```

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const CHUNK: usize = 256 << 10;
/// A transfer that stops moving ends the probe with an error rather than hanging the bench.
const STALL: Duration = Duration::from_secs(60);
/// How long `send` waits for its sink to listen.
const LISTEN_WAIT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["send", host, port, mib] => send(host, num(port, "PORT"), num(mib, "MIB")),
        ["sink", port, mib] => sink(num(port, "PORT"), num(mib, "MIB")),
        ["rtt", host, port, n] => rtt(host, num(port, "PORT"), num(n, "N")),
        _ => {
            Err("usage: husk-netprobe send HOST PORT MIB | sink PORT MIB | rtt HOST PORT N".into())
        }
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("husk-netprobe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn num<T: std::str::FromStr>(s: &str, what: &str) -> T {
    s.parse().unwrap_or_else(|_| {
        eprintln!("husk-netprobe: {what} must be a number, not '{s}'");
        std::process::exit(2)
    })
}

/// Connects with the stall timeouts set; the error keeps its kind (a refused connection is
/// worth another try) and says where.
fn connect(host: &str, port: u16) -> io::Result<TcpStream> {
    let context = |e: io::Error, what: &str| io::Error::new(e.kind(), format!("{what}: {e}"));
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| context(e, &format!("cannot resolve {host}")))?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address")))?;
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| context(e, &format!("cannot connect to {addr}")))?;
    s.set_read_timeout(Some(STALL))?;
    s.set_write_timeout(Some(STALL))?;
    Ok(s)
}

fn rate(bytes: u64, elapsed: Duration) -> String {
    let mib = bytes as f64 / f64::from(1 << 20);
    format!("{:.1}", mib / elapsed.as_secs_f64().max(1e-6))
}

fn send(host: &str, port: u16, mib: u64) -> Result<String, String> {
    // The sink may still be starting (in a guest, through `ctr task exec`): a refused connection
    // is tried again, anything else is an error.
    let deadline = Instant::now() + LISTEN_WAIT;
    let mut s = loop {
        match connect(host, port) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            r => break r.map_err(|e| e.to_string())?,
        }
    };
    let data = vec![0u8; CHUNK];
    let total = mib << 20;
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(CHUNK as u64) as usize;
        s.write_all(&data[..n])
            .map_err(|e| format!("sending to {host}:{port} after {sent} bytes: {e}"))?;
        sent += n as u64;
    }
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    // The sink closes once it has read everything: that is when the data has arrived.
    let mut buf = [0u8; 64];
    while s
        .read(&mut buf)
        .map_err(|e| format!("waiting for {host}:{port} to close: {e}"))?
        > 0
    {}
    Ok(rate(total, start.elapsed()))
}

fn sink(port: u16, mib: u64) -> Result<String, String> {
    let listener =
        TcpListener::bind(("::", port)).or_else(|_| TcpListener::bind(("0.0.0.0", port)));
    let listener = listener.map_err(|e| format!("cannot listen on port {port}: {e}"))?;
    // Nobody connecting within the stall time ends the probe too.
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + STALL;
    let (mut c, peer) = loop {
        match listener.accept() {
            Ok(accepted) => break accepted,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(format!("nobody connected to port {port} in {STALL:?}"))
            }
            Err(e) => return Err(format!("accept on port {port}: {e}")),
        }
    };
    c.set_nonblocking(false).map_err(|e| e.to_string())?;
    c.set_read_timeout(Some(STALL)).map_err(|e| e.to_string())?;
    let total = mib << 20;
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    let mut start = None;
    while got < total {
        let n = c
            .read(&mut buf)
            .map_err(|e| format!("reading from {peer} after {got} bytes: {e}"))?;
        if n == 0 {
            return Err(format!("{peer} closed after {got} of {total} bytes"));
        }
        start.get_or_insert_with(Instant::now);
        got += n as u64;
    }
    let elapsed = start.map(|s| s.elapsed()).unwrap_or_default();
    drop(c);
    Ok(rate(got, elapsed))
}

fn rtt(host: &str, port: u16, n: usize) -> Result<String, String> {
    if n == 0 {
        return Err("N must be at least 1".into());
    }
    let request = format!("GET / HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let mut times = Vec::with_capacity(n);
    let mut reply = Vec::new();
    for i in 0..n {
        let start = Instant::now();
        let mut s = connect(host, port).map_err(|e| e.to_string())?;
        s.write_all(request.as_bytes())
            .map_err(|e| format!("request {i} to {host}:{port}: {e}"))?;
        reply.clear();
        s.read_to_end(&mut reply)
            .map_err(|e| format!("reply {i} from {host}:{port}: {e}"))?;
        times.push(start.elapsed());
        if !reply.starts_with(b"HTTP/1.") || !reply.windows(4).any(|w| w == b" 200") {
            let head = String::from_utf8_lossy(&reply[..reply.len().min(40)]).into_owned();
            return Err(format!("{host}:{port} did not answer 200 OK: {head:?}"));
        }
    }
    times.sort();
    Ok(format!("{:.2}", times[n / 2].as_secs_f64() * 1e3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_and_a_request_over_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        // The sink starts after the sender: the sender waits for it.
        let sink = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            sink(port, 2)
        });
        let sent: f64 = send("127.0.0.1", port, 2).unwrap().parse().unwrap();
        let got: f64 = sink.join().unwrap().unwrap().parse().unwrap();
        assert!(sent > 0.0 && got > 0.0);

        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for (i, c) in server.incoming().enumerate() {
                let mut c = c.unwrap();
                let mut req = [0u8; 256];
                let _ = c.read(&mut req).unwrap();
                let status = if i < 3 { "200 OK" } else { "404 Not Found" };
                let _ = write!(c, "HTTP/1.0 {status}\r\n\r\nhello");
            }
        });
        let ms: f64 = rtt("127.0.0.1", port, 3).unwrap().parse().unwrap();
        assert!(ms > 0.0);
        let err = rtt("127.0.0.1", port, 1).unwrap_err();
        assert!(err.contains("did not answer 200 OK"), "{err}");
    }

    #[test]
    fn a_short_transfer_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let sink = std::thread::spawn(move || sink(port, 4));
        let mut c = loop {
            if let Ok(c) = TcpStream::connect(("127.0.0.1", port)) {
                break c;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        c.write_all(&[0u8; 1000]).unwrap();
        drop(c);
        let err = sink.join().unwrap().unwrap_err();
        assert!(err.contains("closed after 1000 of 4194304 bytes"), "{err}");
    }
}
