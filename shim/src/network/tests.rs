//! On the real kernel, as root: namespaces, a veth, our tap and tc filters, and frames through
//! them. Each test has its own namespaces (see `test_net`), deleted even when it fails.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::test_net::*;
use super::*;

fn prefix(s: &str, prefix_len: u8) -> IpPrefix {
    IpPrefix {
        addr: s.parse().unwrap(),
        prefix_len,
    }
}

fn route(dest: Option<IpPrefix>, gateway: Option<&str>, scope: u8) -> GuestRoute {
    GuestRoute {
        dest,
        gateway: gateway.map(|g| g.parse().unwrap()),
        source: None,
        scope,
        device: "eth0".into(),
    }
}

fn eth0(net: &TestNet) -> CniInterface {
    let found = discover(&net.pod_path()).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    found.into_iter().next().unwrap().0
}

fn thread_netns() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
}

#[test]
fn network_model_from_config() {
    assert_eq!(
        "tcfilter".parse::<NetworkModel>().unwrap(),
        NetworkModel::TcFilter
    );
    assert_eq!("none".parse::<NetworkModel>().unwrap(), NetworkModel::None);
    let e = "macvtap".parse::<NetworkModel>().unwrap_err();
    assert!(
        e.to_string().contains("\"macvtap\" is not supported"),
        "{e}"
    );
}

/// discover returns the pod's veth with its MAC, MTU, addresses, routes and permanent
/// neighbours; it skips lo, the kernel's own prefix routes and IPv6 link-local; the calling
/// thread stays in its namespace.
#[test]
fn discover_reads_what_cni_left() {
    let net = TestNet::new("disc");
    let before = thread_netns();
    let found = discover(&net.pod_path()).unwrap();
    assert_eq!(thread_netns(), before);

    assert_eq!(found.len(), 1, "lo must be skipped: {found:?}");
    let (cni, guest) = &found[0];
    assert_eq!(cni.name, "eth0");
    assert_eq!(cni.kind, "veth");
    assert_eq!(cni.mac, net.pod_mac);
    assert_eq!(cni.mtu, MTU);
    assert_eq!(guest.name, "eth0");
    assert_eq!(guest.mac, net.pod_mac);
    assert_eq!(guest.mtu, MTU);
    assert_eq!(
        guest.addresses,
        vec![prefix("10.88.0.2", 24), prefix("fd00:88::2", 64)]
    );

    let expected = [
        route(Some(prefix("10.77.0.0", 16)), None, 253),
        route(None, Some(PEER_IP), 0),
        route(Some(prefix("10.99.0.0", 16)), Some(PEER_IP), 0),
        route(None, Some("fd00:88::1"), 0),
    ];
    assert_eq!(guest.routes.len(), expected.len(), "{:#?}", guest.routes);
    for r in &expected {
        assert!(
            guest.routes.contains(r),
            "missing {r:?} in {:#?}",
            guest.routes
        );
    }
    // A route through a gateway never comes before a route without one.
    let first_gateway = guest
        .routes
        .iter()
        .position(|r| r.gateway.is_some())
        .unwrap();
    assert!(guest.routes[first_gateway..]
        .iter()
        .all(|r| r.gateway.is_some()));

    assert_eq!(
        guest.neighbours,
        vec![GuestNeighbour {
            ip: PEER_IP.parse().unwrap(),
            mac: net.peer_mac
        }]
    );
}

/// The same namespace through /proc/PID/ns/net of a process in it.
#[test]
fn discover_through_a_process_namespace_path() {
    let net = TestNet::new("procpath");
    let sleeper = Sleeper::start(&net.pod);
    let path = PathBuf::from(format!("/proc/{}/ns/net", sleeper.0.id()));
    // `ip netns exec` enters the namespace and then execs sleep: wait for the first.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let inside = std::fs::metadata(&path).map(|m| m.ino()).ok()
            == Some(std::fs::metadata(net.pod_path()).unwrap().ino());
        if inside {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sleep never entered the namespace"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let found = discover(&path).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0.mac, net.pod_mac);
}

/// attach creates the tap and the plumbing; frames flow both ways between the peer and the
/// tap's descriptor; detach leaves the pod namespace exactly as it was.
#[test]
fn attach_forwards_both_ways_and_detach_restores() {
    let net = TestNet::new("flow");
    let before = net.snapshot();
    let iface = eth0(&net);
    let (tap, rec) = attach(&net.pod_path(), &iface).unwrap();

    assert_eq!(rec.netns, net.pod_path());
    assert_eq!(rec.cni_name, "eth0");
    assert_eq!(rec.cni_ifindex, iface.ifindex);
    assert_eq!(rec.tap_name, "tap0_husk");

    // The tap: up, the veth's MTU, a tun device.
    let link = net.link("tap0_husk").expect("the tap exists");
    assert_eq!(link["ifindex"], rec.tap_ifindex);
    assert_eq!(link["mtu"], MTU);
    assert_eq!(link["linkinfo"]["info_kind"], "tun");
    assert!(link["flags"].as_array().unwrap().contains(&"UP".into()));

    // An ingress qdisc on both, and a u32 filter redirecting to the other.
    let qdiscs = net.qdiscs();
    for dev in ["eth0", "tap0_husk"] {
        assert!(
            qdiscs
                .as_array()
                .unwrap()
                .iter()
                .any(|q| q["dev"] == dev && q["kind"] == "ingress"),
            "no ingress qdisc on {dev}: {qdiscs}"
        );
    }
    for (dev, to) in [("eth0", "tap0_husk"), ("tap0_husk", "eth0")] {
        let filters = net.ingress_filters(dev);
        let redirects: Vec<_> = filters
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["kind"] == "u32")
            .flat_map(|f| {
                f["options"]["actions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|a| {
                a["kind"] == "mirred"
                    && a["mirred_action"] == "redirect"
                    && a["direction"] == "egress"
                    && a["to_dev"] == to
            })
            .collect();
        assert_eq!(redirects.len(), 1, "{dev} → {to}: {filters}");
    }

    // The tap is ours: discover skips it, namespace_users sees it.
    assert_eq!(discover(&net.pod_path()).unwrap().len(), 1);
    assert_eq!(
        namespace_users(&net.pod_path()).unwrap().taps,
        vec!["tap0_husk".to_string()]
    );

    // Peer → pod IP: comes out of the tap.
    let peer = net.peer_socket("10.88.0.1:0");
    let to_guest = format!("to the guest {}", std::process::id());
    peer.send_to(to_guest.as_bytes(), "10.88.0.2:5555").unwrap();
    let frame = read_frame(&tap, |f| {
        udp_payload(f, net.pod_mac, 5555) == Some(to_guest.as_bytes())
    });
    assert!(frame.is_some(), "the datagram never came out of the tap");

    // Tap → peer: a datagram from the pod IP and the veth's MAC reaches the peer's socket.
    let listener = net.peer_socket("10.88.0.1:6666");
    let from_guest = format!("from the guest {}", std::process::id());
    let src: SocketAddr = "10.88.0.2:5555".parse().unwrap();
    write_frame(
        &tap,
        &udp_frame(
            net.peer_mac,
            net.pod_mac,
            src,
            "10.88.0.1:6666".parse().unwrap(),
            from_guest.as_bytes(),
        ),
    );
    let mut buf = [0u8; 1500];
    let (n, from) = listener
        .recv_from(&mut buf)
        .expect("the datagram written to the tap never reached the peer");
    assert_eq!(&buf[..n], from_guest.as_bytes());
    assert_eq!(from, src);

    detach(&rec).unwrap();
    assert!(net.link("tap0_husk").is_none());
    assert_eq!(net.snapshot(), before);
    // Again: nothing left to do is fine.
    detach(&rec).unwrap();
    assert_eq!(net.snapshot(), before);
    drop(tap);
}

/// The tap goes with its last descriptor (husk-vmm exiting); detach then removes the veth's
/// qdisc and is content with the tap already gone.
#[test]
fn detach_after_the_tap_vanished() {
    let net = TestNet::new("vanish");
    let before = net.snapshot();
    let (tap, rec) = attach(&net.pod_path(), &eth0(&net)).unwrap();
    drop(tap);
    assert!(
        net.link(&rec.tap_name).is_none(),
        "a non-persistent tap outlived its descriptor"
    );
    assert_ne!(
        net.snapshot(),
        before,
        "the veth's ingress qdisc stays until detach"
    );
    detach(&rec).unwrap();
    assert_eq!(net.snapshot(), before);
}

/// detach leaves alone an interface that took the tap's index or name.
#[test]
fn detach_checks_index_and_name() {
    let net = TestNet::new("ident");
    let (tap, rec) = attach(&net.pod_path(), &eth0(&net)).unwrap();
    let wrong_name = AttachedInterface {
        tap_name: "tap9_husk".into(),
        cni_name: "eth9".into(),
        ..rec.clone()
    };
    detach(&wrong_name).unwrap();
    assert!(
        net.link(&rec.tap_name).is_some(),
        "deleted a tap by index alone"
    );
    assert!(net
        .qdiscs()
        .as_array()
        .unwrap()
        .iter()
        .any(|q| q["dev"] == "eth0" && q["kind"] == "ingress"));
    detach(&rec).unwrap();
    drop(tap);
}

/// Two interfaces' taps get distinct names; each detach removes only its own.
#[test]
fn taps_are_numbered() {
    let net = TestNet::new("two");
    net.pod_exec(&[
        "ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p",
    ]);
    net.pod_exec(&["ip", "link", "set", "eth1", "up"]);
    net.pod_exec(&["ip", "link", "set", "eth1p", "up"]);
    let before = net.snapshot();
    let found = discover(&net.pod_path()).unwrap();
    let names: HashSet<_> = found.iter().map(|(c, _)| c.name.as_str()).collect();
    assert_eq!(names, HashSet::from(["eth0", "eth1", "eth1p"]));
    let eth0 = found.iter().find(|(c, _)| c.name == "eth0").unwrap();
    let eth1 = found.iter().find(|(c, _)| c.name == "eth1").unwrap();
    let (tap0, rec0) = attach(&net.pod_path(), &eth0.0).unwrap();
    let (tap1, rec1) = attach(&net.pod_path(), &eth1.0).unwrap();
    assert_eq!(rec0.tap_name, "tap0_husk");
    assert_eq!(rec1.tap_name, "tap1_husk");
    detach(&rec0).unwrap();
    assert!(net.link("tap1_husk").is_some());
    detach(&rec1).unwrap();
    assert_eq!(net.snapshot(), before);
    drop((tap0, tap1));
}

/// A veth that already has an ingress qdisc is refused and left untouched, and no tap stays.
#[test]
fn existing_ingress_qdisc_is_refused() {
    let net = TestNet::new("refuse");
    net.pod_exec(&["tc", "qdisc", "add", "dev", "eth0", "ingress"]);
    let before = net.snapshot();
    let e = attach(&net.pod_path(), &eth0(&net)).unwrap_err();
    assert!(
        matches!(e, NetworkError::IngressQdiscExists { .. }),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(text.contains("eth0"), "{text}");
    assert!(text.contains(&net.pod), "{text}");
    assert!(text.contains("already has one"), "{text}");
    assert_eq!(net.snapshot(), before);
}

/// A failure half-way (the tap exists, its MTU is refused) leaves nothing behind.
#[test]
fn failed_attach_leaves_nothing() {
    let net = TestNet::new("undo");
    let before = net.snapshot();
    let iface = CniInterface {
        mtu: 1_000_000,
        ..eth0(&net)
    };
    let e = attach(&net.pod_path(), &iface).unwrap_err();
    assert!(
        e.to_string().contains("set tap0_husk up with MTU 1000000"),
        "{e}"
    );
    assert_eq!(net.snapshot(), before);
}

/// An interface that is no longer what discover found is refused.
#[test]
fn attach_checks_the_interface() {
    let net = TestNet::new("gone");
    let iface = CniInterface {
        name: "eth7".into(),
        ..eth0(&net)
    };
    let e = attach(&net.pod_path(), &iface).unwrap_err();
    assert!(matches!(e, NetworkError::InterfaceGone { .. }), "{e:?}");
}

/// namespace_users sees a process we put in the namespace and, after attach, our tap.
#[test]
fn namespace_users_sees_processes_and_taps() {
    let net = TestNet::new("users");
    assert_eq!(
        namespace_users(&net.pod_path()).unwrap(),
        NamespaceUse::default()
    );

    let sleeper = Sleeper::start(&net.pod);
    let pid = sleeper.0.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let users = namespace_users(&net.pod_path()).unwrap();
        if users.pids.contains(&pid) {
            assert!(users.is_shared());
            break;
        }
        assert!(Instant::now() < deadline, "pid {pid} never seen: {users:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The peer namespace is another namespace, whatever the paths look like.
    assert!(!namespace_users(&net.peer_path())
        .unwrap()
        .pids
        .contains(&pid));
    drop(sleeper);

    let (tap, rec) = attach(&net.pod_path(), &eth0(&net)).unwrap();
    let users = namespace_users(&net.pod_path()).unwrap();
    assert_eq!(users.taps, vec!["tap0_husk".to_string()]);
    assert!(users.is_shared());
    detach(&rec).unwrap();
    drop(tap);
}

/// A missing namespace path is a clear error (and nothing to detach); a file that is not a
/// network namespace is refused.
#[test]
fn bad_namespace_paths() {
    let missing = PathBuf::from(format!(
        "/var/run/netns/husk-test-{}-missing",
        std::process::id()
    ));
    let e = discover(&missing).unwrap_err();
    assert!(
        matches!(&e, NetworkError::OpenNamespace { source, .. } if source.kind() == io::ErrorKind::NotFound),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!("Cannot open the network namespace {}", missing.display())
    );
    assert!(namespace_users(&missing).is_err());
    let rec = AttachedInterface {
        netns: missing.clone(),
        cni_ifindex: 2,
        cni_name: "eth0".into(),
        tap_name: "tap0_husk".into(),
        tap_ifindex: 3,
        cni_txqlen: None,
    };
    detach(&rec).unwrap();
    // A namespace file left behind after its unmount is a plain file: nothing to detach
    // either.
    let stale = std::env::temp_dir().join(format!("husk-test-{}-stale", std::process::id()));
    std::fs::write(&stale, b"").unwrap();
    let result = detach(&AttachedInterface {
        netns: stale.clone(),
        ..rec
    });
    std::fs::remove_file(&stale).unwrap();
    result.unwrap();

    for path in ["/proc/self/ns/uts", "/etc/hostname"] {
        let e = discover(Path::new(path)).unwrap_err();
        assert!(
            matches!(e, NetworkError::NotNetworkNamespace { .. }),
            "{path}: {e:?}"
        );
    }
}

/// The record survives a round trip through JSON (state.json).
#[test]
fn record_serialises() {
    let rec = AttachedInterface {
        netns: "/var/run/netns/x".into(),
        cni_ifindex: 2,
        cni_name: "eth0".into(),
        tap_name: "tap0_husk".into(),
        tap_ifindex: 4,
        cni_txqlen: Some(0),
    };
    let text = serde_json::to_string(&rec).unwrap();
    assert_eq!(
        serde_json::from_str::<AttachedInterface>(&text).unwrap(),
        rec
    );
    let ip: IpAddr = "fd00::1".parse().unwrap();
    let n = GuestNeighbour {
        ip,
        mac: [2, 0, 0, 0, 0, 1],
    };
    assert_eq!(
        serde_json::from_str::<GuestNeighbour>(&serde_json::to_string(&n).unwrap()).unwrap(),
        n
    );
}
