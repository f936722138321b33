//! `kubectl port-forward` for pods in VMs, the host's half (the agent's is agent/src/forward.rs).
//!
//! containerd forwards a port by dialling `localhost:PORT` in the pod's network namespace on the
//! host. The shim follows the guest's listening TCP ports (`WatchListeners`) and listens on each
//! of them at 127.0.0.1 and ::1 in that namespace; each accepted connection is carried over
//! vsock port `FORWARD_PORT` to the agent, which dials the port inside the guest. The ports come
//! from the guest: at most `MAX_PORTS` listeners are bound, and the relays are capped too.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use husk_agent_protocol::agent as pb;
use husk_agent_protocol::agent_ttrpc::AgentServiceClient;
use husk_agent_protocol::FORWARD_PORT;

use crate::agent::hybrid_connect;

/// Listening ports taken from the guest's list; the rest are ignored.
const MAX_PORTS: usize = 256;
/// Forwarded connections open at once per sandbox.
const MAX_RELAYS: usize = 64;

/// Stops following the guest's ports (and closes every listener) when dropped.
pub struct PortForwarder {
    stop: Arc<AtomicBool>,
}

impl Drop for PortForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Starts following the guest's listening ports for the pod namespace `netns`; `conn` is an
/// agent connection of its own (its calls block), `vsock` the VM's hybrid-vsock socket.
pub fn start(netns: &Path, conn: AgentServiceClient, vsock: PathBuf) -> PortForwarder {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let netns = netns.to_path_buf();
    std::thread::spawn(move || follow(&netns, &conn, &vsock, &s));
    PortForwarder { stop }
}

fn follow(netns: &Path, conn: &AgentServiceClient, vsock: &Path, stop: &AtomicBool) {
    let relays = Arc::new(AtomicUsize::new(0));
    let mut bound: BTreeMap<u32, Vec<TcpListener>> = BTreeMap::new();
    let mut known: Vec<u32> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let req = pb::WatchListenersRequest {
            known: known.clone(),
            ..Default::default()
        };
        let ctx = husk_agent_protocol::ttrpc::context::with_timeout(
            Duration::from_secs(60).as_nanos() as i64,
        );
        let ports = match conn.watch_listeners(ctx, &req) {
            Ok(l) => valid_ports(&l.ports),
            Err(e) => {
                tracing::debug!(error = %e, "port forwarding ends");
                break;
            }
        };
        bound.retain(|port, listeners| {
            let keep = ports.contains(port);
            if !keep {
                listeners.iter().for_each(close);
            }
            keep
        });
        for &port in &ports {
            if bound.contains_key(&port) {
                continue;
            }
            let listeners = match crate::network::listen_local(netns, port as u16) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(port, error = %e, "cannot listen in the pod namespace");
                    Vec::new()
                }
            };
            for l in &listeners {
                if let Ok(l) = l.try_clone() {
                    let (vsock, relays) = (vsock.to_path_buf(), relays.clone());
                    std::thread::spawn(move || accept_loop(l, port as u16, &vsock, &relays));
                }
            }
            bound.insert(port, listeners);
        }
        known = ports;
    }
    bound.values().flatten().for_each(close);
}

/// The guest's list, checked: real port numbers, no repeats, at most `MAX_PORTS`.
fn valid_ports(ports: &[u32]) -> Vec<u32> {
    let mut v: Vec<u32> = ports
        .iter()
        .copied()
        .filter(|p| (1..=65535).contains(p))
        .collect();
    v.sort_unstable();
    v.dedup();
    v.truncate(MAX_PORTS);
    v
}

/// Wakes the accept loop of `l` (shutdown makes a blocked accept fail) so that it ends.
fn close(l: &TcpListener) {
    // SAFETY: shutdown on a descriptor `l` owns; it only changes the socket's state.
    unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
}

fn accept_loop(l: TcpListener, port: u16, vsock: &Path, relays: &Arc<AtomicUsize>) {
    while let Ok((client, _)) = l.accept() {
        if relays.fetch_add(1, Ordering::SeqCst) >= MAX_RELAYS {
            relays.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let (vsock, relays) = (vsock.to_path_buf(), relays.clone());
        std::thread::spawn(move || {
            if let Err(e) = relay(client, port, &vsock) {
                tracing::debug!(port, error = %e, "forwarded connection failed");
            }
            relays.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

fn relay(client: TcpStream, port: u16, vsock: &Path) -> io::Result<()> {
    let guest = hybrid_connect(vsock, FORWARD_PORT)?;
    guest.set_read_timeout(Some(Duration::from_secs(15)))?;
    (&guest).write_all(format!("PORT {port}\n").as_bytes())?;
    let answer = husk_agent_protocol::read_header_line(&guest, 256)?;
    if answer != "OK" {
        return Err(io::Error::other(format!("the guest answered {answer:?}")));
    }
    guest.set_read_timeout(None)?;
    let (c2, g2) = (client.try_clone()?, guest.try_clone()?);
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut &c2, &mut &g2);
        let _ = g2.shutdown(Shutdown::Write);
    });
    let _ = io::copy(&mut &guest, &mut &client);
    let _ = client.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ports_are_checked() {
        assert_eq!(valid_ports(&[0, 80, 80, 70000, 22]), vec![22, 80]);
        let many: Vec<u32> = (1..2000).collect();
        assert_eq!(valid_ports(&many).len(), MAX_PORTS);
    }
}
