//! Test harness: a pod namespace and a peer namespace joined by a veth, set up with `ip` the
//! way CNI's bridge plugin leaves a pod (an address, a default route), and deleted on drop,
//! also when a test fails.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const POD_IP: &str = "10.88.0.2";
pub const PEER_IP: &str = "10.88.0.1";
pub const MTU: u32 = 1450;

pub struct TestNet {
    pub pod: String,
    pub peer: String,
    pub pod_mac: [u8; 6],
    pub peer_mac: [u8; 6],
}

impl TestNet {
    /// Namespaces `husk-test-<pid>-<tag>-pod` and `-peer`; `eth0` in the pod, `peer0` in the
    /// peer.
    pub fn new(tag: &str) -> TestNet {
        let base = format!("husk-test-{}-{tag}", std::process::id());
        let mut net = TestNet {
            pod: format!("{base}-pod"),
            peer: format!("{base}-peer"),
            pod_mac: [0; 6],
            peer_mac: [0; 6],
        };
        for ns in [&net.pod, &net.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
        }
        // From here on, `net` deletes both namespaces when dropped.
        let (pod, peer) = (net.pod.clone(), net.peer.clone());
        let (pod, peer) = (pod.as_str(), peer.as_str());
        let mtu = MTU.to_string();
        ip(&[
            "link", "add", "name", "eth0", "netns", pod, "type", "veth", "peer", "name", "peer0",
            "netns", peer,
        ]);
        ip(&["-n", pod, "link", "set", "lo", "up"]);
        ip(&["-n", pod, "link", "set", "eth0", "mtu", &mtu]);
        // CNI's bridge plugin makes its veths without a transmit queue; adding a qdisc gives
        // them the kernel's default, which detach must undo.
        ip(&["-n", pod, "link", "set", "eth0", "txqueuelen", "0"]);
        ip(&["-n", peer, "link", "set", "peer0", "mtu", &mtu]);
        ip(&["-n", pod, "addr", "add", "10.88.0.2/24", "dev", "eth0"]);
        ip(&[
            "-n",
            pod,
            "addr",
            "add",
            "fd00:88::2/64",
            "dev",
            "eth0",
            "nodad",
        ]);
        ip(&["-n", peer, "addr", "add", "10.88.0.1/24", "dev", "peer0"]);
        ip(&[
            "-n",
            peer,
            "addr",
            "add",
            "fd00:88::1/64",
            "dev",
            "peer0",
            "nodad",
        ]);
        ip(&["-n", pod, "link", "set", "eth0", "up"]);
        ip(&["-n", peer, "link", "set", "peer0", "up"]);
        ip(&["-n", pod, "route", "add", "default", "via", PEER_IP]);
        ip(&[
            "-n",
            pod,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:88::1",
        ]);
        ip(&[
            "-n",
            pod,
            "route",
            "add",
            "10.99.0.0/16",
            "via",
            PEER_IP,
            "proto",
            "static",
        ]);
        ip(&[
            "-n",
            pod,
            "route",
            "add",
            "10.77.0.0/16",
            "dev",
            "eth0",
            "scope",
            "link",
        ]);
        net.pod_mac = mac_of(pod, "eth0");
        net.peer_mac = mac_of(peer, "peer0");
        ip(&[
            "-n",
            pod,
            "neigh",
            "add",
            PEER_IP,
            "lladdr",
            &mac_text(net.peer_mac),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
        ip(&[
            "-n",
            peer,
            "neigh",
            "add",
            POD_IP,
            "lladdr",
            &mac_text(net.pod_mac),
            "dev",
            "peer0",
            "nud",
            "permanent",
        ]);
        net.wait_until_up();
        net
    }

    pub fn pod_path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.pod)
    }

    pub fn peer_path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.peer)
    }

    /// Lets the link state settle, so that snapshots taken before and after compare.
    fn wait_until_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let up = |ns: &str, dev: &str| {
                json(Command::new("ip").args(["-j", "-n", ns, "link", "show", "dev", dev]))[0]
                    ["operstate"]
                    == "UP"
            };
            if up(&self.pod, "eth0") && up(&self.peer, "peer0") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the test veth did not come up");
    }

    /// The pod namespace's links and qdiscs, as `ip` and `tc` show them. Taken once every
    /// link with a carrier has its operational state: the kernel sets that a moment after the
    /// carrier (linkwatch), so a link just brought up would otherwise compare unequal later.
    pub fn snapshot(&self) -> (Value, Value) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let links = loop {
            let links = json(Command::new("ip").args(["-j", "-n", &self.pod, "link", "show"]));
            let settled = links.as_array().unwrap().iter().all(|l| {
                let carrier = l["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|f| f == "LOWER_UP"));
                !carrier || l["operstate"] == "UP" || l["operstate"] == "UNKNOWN"
            });
            if settled || Instant::now() > deadline {
                break links;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (links, self.qdiscs())
    }

    pub fn qdiscs(&self) -> Value {
        json(Command::new("ip").args(["netns", "exec", &self.pod, "tc", "-j", "qdisc", "show"]))
    }

    pub fn ingress_filters(&self, dev: &str) -> Value {
        json(Command::new("ip").args([
            "netns", "exec", &self.pod, "tc", "-j", "filter", "show", "dev", dev, "ingress",
        ]))
    }

    pub fn link(&self, dev: &str) -> Option<Value> {
        let links = json(Command::new("ip").args(["-j", "-d", "-n", &self.pod, "link", "show"]));
        links
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["ifname"] == dev)
            .cloned()
    }

    pub fn pod_exec(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.pod];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// A UDP socket bound to `addr` in the peer namespace.
    pub fn peer_socket(&self, addr: &str) -> UdpSocket {
        let addr: SocketAddr = addr.parse().unwrap();
        let socket = super::netns::run_in(&self.peer_path(), || {
            Ok(UdpSocket::bind(addr).expect("bind in the peer namespace"))
        })
        .unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A process started in a namespace, killed on drop.
pub struct Sleeper(pub Child);

impl Sleeper {
    pub fn start(ns: &str) -> Sleeper {
        Sleeper(
            Command::new("ip")
                .args(["netns", "exec", ns, "sleep", "30"])
                .spawn()
                .expect("ip netns exec sleep"),
        )
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn json(cmd: &mut Command) -> Value {
    let out = cmd.output().expect("run a command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Value::Array(Vec::new());
    }
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn mac_of(ns: &str, dev: &str) -> [u8; 6] {
    let link = json(Command::new("ip").args(["-j", "-n", ns, "link", "show", "dev", dev]));
    parse_mac(link[0]["address"].as_str().unwrap())
}

pub fn parse_mac(s: &str) -> [u8; 6] {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Reads frames from the tap until `want` accepts one (returns it without the vnet header),
/// or five seconds pass.
pub fn read_frame(tap: &OwnedFd, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: tap.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, its count, a timeout.
        let ready = unsafe { libc::poll(&mut pfd, 1, 100) };
        if ready <= 0 {
            continue;
        }
        // SAFETY: reads at most `buf.len()` bytes into `buf`, from a descriptor we own.
        let n = unsafe { libc::read(tap.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let Ok(n) = usize::try_from(n) else { continue };
        if n < super::VNET_HDR_LEN {
            continue;
        }
        let frame = &buf[super::VNET_HDR_LEN..n];
        if want(frame) {
            return Some(frame.to_vec());
        }
    }
    None
}

pub fn write_frame(tap: &OwnedFd, frame: &[u8]) {
    let mut packet = vec![0u8; super::VNET_HDR_LEN];
    packet.extend_from_slice(frame);
    // SAFETY: writes `packet.len()` bytes from `packet` to a descriptor we own.
    let n = unsafe { libc::write(tap.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
    assert_eq!(
        n,
        packet.len() as isize,
        "write to the tap: {}",
        std::io::Error::last_os_error()
    );
}

/// An Ethernet frame carrying an IPv4 UDP datagram (UDP checksum 0: none).
pub fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) -> Vec<u8> {
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (src, dst) else {
        panic!("IPv4 only");
    };
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.ip().octets());
    ip.extend_from_slice(&dst.ip().octets());
    let sum = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&src.port().to_be_bytes());
    f.extend_from_slice(&dst.port().to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// The UDP payload of an Ethernet/IPv4 frame to `dst_mac` and UDP port `port`, if it is one.
pub fn udp_payload(frame: &[u8], dst_mac: [u8; 6], port: u16) -> Option<&[u8]> {
    if frame.len() < 14 + 20 + 8 || frame[..6] != dst_mac || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] != 17 || ip.len() < ihl + 8 {
        return None;
    }
    let udp = &ip[ihl..];
    (u16::from_be_bytes([udp[2], udp[3]]) == port).then_some(&udp[8..])
}
