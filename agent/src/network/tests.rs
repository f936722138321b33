//! On the real kernel, as root, each test in a network namespace of its own where a veth with a
//! chosen MAC stands in for the guest's virtio-net device. The functions under test act on the
//! calling thread's namespace, so they run on a thread that has entered the test's
//! (husk-netlink's `TestNs`).

use std::process::Command;
use std::sync::{Arc, Mutex};

use husk_agent_protocol::agent::{ARPNeighbor, Interface, Route};
use husk_agent_protocol::ttrpc::{self, Code};
use husk_netlink::test_ns::TestNs;
use serde_json::Value;

use super::parse::{MAX_ADDRESSES, MAX_NEIGHBOURS, MAX_ROUTES};
use super::*;
use crate::rpc::rpc_error;

const MAC: &str = "02:00:00:00:88:02";
const PEER_MAC: &str = "02:00:00:00:88:01";

/// What these tests add to husk-netlink's `TestNs`.
trait NsExt {
    /// `ip -j -n <ns> args...`, parsed.
    fn json(&self, args: &[&str]) -> Value;
    /// A veth end `dev` with MAC `mac`, down, as the guest's kernel leaves a virtio-net device;
    /// its peer is up, so the link has a carrier once `dev` is up.
    fn add_nic(&self, dev: &str, mac: &str);
    /// Link `dev` with its addresses, as `ip -j addr show` gives it.
    fn link(&self, dev: &str) -> Value;
}

impl NsExt for TestNs {
    fn json(&self, args: &[&str]) -> Value {
        let out = Command::new("ip")
            .args(["-j", "-n", &self.name])
            .args(args)
            .output()
            .expect("run ip");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Value::Array(Vec::new());
        }
        serde_json::from_slice(&out.stdout).expect("ip -j prints JSON")
    }

    fn add_nic(&self, dev: &str, mac: &str) {
        let peer = format!("{dev}p");
        self.ip(&[
            "link", "add", dev, "address", mac, "type", "veth", "peer", "name", &peer,
        ]);
        self.ip(&["link", "set", &peer, "up"]);
    }

    fn link(&self, dev: &str) -> Value {
        let links = self.json(&["addr", "show"]);
        links
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["ifname"] == dev)
            .cloned()
            .unwrap_or_else(|| panic!("no {dev} in {links:#}"))
    }
}

fn eth0_request() -> Interface {
    Interface {
        name: "eth0".into(),
        // Upper case: the MAC matches whatever its case.
        hw_addr: MAC.to_uppercase(),
        mtu: 1450,
        ip_addresses: vec!["10.88.0.2/24".into(), "fd00:88::2/64".into()],
        ..Default::default()
    }
}

fn route(dest: &str, gateway: &str, scope: u32) -> Route {
    Route {
        dest: dest.into(),
        gateway: gateway.into(),
        device: "eth0".into(),
        scope,
        ..Default::default()
    }
}

/// The status the host would get for `e`.
fn status(e: NetworkError) -> (Code, String) {
    match rpc_error(e) {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message),
        other => panic!("not a status: {other:?}"),
    }
}

/// Runs `work` on this thread and returns what it logged at info, as the agent's log would
/// show it.
fn logged<T>(work: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .without_time()
        .with_max_level(tracing::Level::INFO)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, work);
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

fn is_up(link: &Value) -> bool {
    link["flags"].as_array().unwrap().iter().any(|f| f == "UP")
}

fn has_address(link: &Value, local: &str, prefixlen: u64) -> bool {
    link["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["local"] == local && a["prefixlen"] == prefixlen)
}

/// The link with MAC `MAC` becomes eth0 with MTU 1450, a v4 address (with its broadcast) and a
/// v6 one (not tentative: no DAD), and is up, as is lo; one log line says so. A second
/// identical call changes nothing and answers the same.
#[test]
fn update_interface_finds_the_link_by_mac() {
    let ns = TestNs::new("iface");
    ns.add_nic("ens3", MAC);
    let (first, log) = ns.run(|| logged(|| update_interface(&eth0_request())));
    let first = first.unwrap();
    assert_eq!(log.lines().count(), 1, "{log}");
    for part in [
        "interface updated",
        "iface=eth0",
        "renamed_from=\"ens3\"",
        "mtu=1450",
        "10.88.0.2/24",
        "fd00:88::2/64",
        "lo_up=true",
    ] {
        assert!(log.contains(part), "{part} in {log}");
    }
    assert_eq!(first.name, "eth0");
    assert_eq!(first.hw_addr, MAC);
    assert_eq!(first.mtu, 1450);
    for a in ["10.88.0.2/24", "fd00:88::2/64"] {
        assert!(first.ip_addresses.iter().any(|x| x == a), "{first:?}");
    }

    let eth0 = ns.link("eth0");
    assert_eq!(eth0["address"], MAC);
    assert_eq!(eth0["mtu"], 1450);
    assert!(is_up(&eth0), "{eth0:#}");
    assert!(has_address(&eth0, "10.88.0.2", 24), "{eth0:#}");
    assert!(has_address(&eth0, "fd00:88::2", 64), "{eth0:#}");
    let infos = eth0["addr_info"].as_array().unwrap();
    let v4 = infos.iter().find(|a| a["local"] == "10.88.0.2").unwrap();
    assert_eq!(v4["broadcast"], "10.88.0.255");
    let v6 = infos.iter().find(|a| a["local"] == "fd00:88::2").unwrap();
    assert!(v6.get("tentative").is_none(), "{v6:#}");
    assert!(is_up(&ns.link("lo")));
    assert!(ns
        .json(&["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["ifname"] != "ens3"));

    let (again, log) = ns.run(|| logged(|| update_interface(&eth0_request())));
    assert_eq!(again.unwrap(), first);
    assert!(log.contains("addresses_added=[]"), "{log}");
    assert!(
        !log.contains("renamed_from") && !log.contains("mtu="),
        "{log}"
    );
    let infos = ns.link("eth0")["addr_info"].as_array().unwrap().len();
    assert_eq!(infos, eth0["addr_info"].as_array().unwrap().len());
}

/// The guest's kernel may name the devices in another order than the pod's: the link that
/// holds the wanted name is moved aside (and kept up if it was), and gets its own name next.
#[test]
fn a_link_holding_the_name_is_moved_aside() {
    let ns = TestNs::new("swap");
    ns.add_nic("eth0", "02:00:00:00:99:01");
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.add_nic("eth1", MAC);
    ns.run(|| update_interface(&eth0_request())).unwrap();
    assert_eq!(ns.link("eth0")["address"], MAC);
    let aside = ns
        .json(&["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["address"] == "02:00:00:00:99:01")
        .cloned()
        .unwrap();
    let aside_name = aside["ifname"].as_str().unwrap();
    assert!(aside_name.starts_with("husk"), "{aside:#}");
    assert!(is_up(&aside), "{aside:#}");

    let eth1 = Interface {
        name: "eth1".into(),
        hw_addr: "02:00:00:00:99:01".into(),
        ..Default::default()
    };
    let answer = ns.run(|| update_interface(&eth1)).unwrap();
    assert_eq!(answer.name, "eth1");
    assert!(is_up(&ns.link("eth1")));
}

/// A link-scope /32 and a default route through a gateway on the /24 (v4), a default route
/// through a v6 gateway; the same call again replaces them, no duplicates, no error. The answer
/// lists the main table's routes through eth0.
#[test]
fn update_routes_adds_and_replaces() {
    let ns = TestNs::new("routes");
    ns.add_nic("ens3", MAC);
    ns.run(|| update_interface(&eth0_request())).unwrap();
    let routes = [
        route("10.77.0.1/32", "", 253),
        route("", "10.88.0.1", 0),
        route("", "fd00:88::1", 0),
    ];
    let first = ns.run(|| update_routes(&routes)).unwrap();
    let second = ns.run(|| update_routes(&routes)).unwrap();
    assert_eq!(first, second);
    for r in &routes {
        assert!(second.contains(r), "missing {r:?} in {second:#?}");
    }
    // The kernel's prefix route of the address is there too.
    assert!(
        second.iter().any(|r| r.dest == "10.88.0.0/24"),
        "{second:#?}"
    );

    let v4 = ns.json(&["-4", "route", "show"]);
    let v4 = v4.as_array().unwrap();
    let defaults: Vec<&Value> = v4.iter().filter(|r| r["dst"] == "default").collect();
    assert_eq!(defaults.len(), 1, "{v4:#?}");
    assert_eq!(defaults[0]["gateway"], "10.88.0.1");
    assert_eq!(defaults[0]["dev"], "eth0");
    let link = v4.iter().find(|r| r["dst"] == "10.77.0.1").unwrap();
    assert_eq!(link["scope"], "link");
    assert_eq!(link["dev"], "eth0");
    let v6 = ns.json(&["-6", "route", "show", "default"]);
    let v6 = v6.as_array().unwrap();
    assert_eq!(v6.len(), 1, "{v6:#?}");
    assert_eq!(v6[0]["gateway"], "fd00:88::1");
}

/// A permanent ARP entry and a permanent NDP entry; the same call again replaces them.
#[test]
fn add_neighbours_adds_permanent_entries() {
    let ns = TestNs::new("neigh");
    ns.add_nic("ens3", MAC);
    ns.run(|| update_interface(&eth0_request())).unwrap();
    let neighbours: Vec<ARPNeighbor> = ["10.88.0.1", "fd00:88::1"]
        .iter()
        .map(|ip| ARPNeighbor {
            to_ip: ip.to_string(),
            lladdr: PEER_MAC.to_uppercase(),
            device: "eth0".into(),
            ..Default::default()
        })
        .collect();
    ns.run(|| add_neighbours(&neighbours)).unwrap();
    ns.run(|| add_neighbours(&neighbours)).unwrap();

    let table = ns.json(&["neigh", "show"]);
    for ip in ["10.88.0.1", "fd00:88::1"] {
        let entries: Vec<&Value> = table
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["dst"] == ip)
            .collect();
        assert_eq!(entries.len(), 1, "{table:#}");
        assert_eq!(entries[0]["dev"], "eth0");
        assert_eq!(entries[0]["lladdr"], PEER_MAC);
        assert_eq!(entries[0]["state"], serde_json::json!(["PERMANENT"]));
    }
}

/// No link with the MAC, no device of that name: NOT_FOUND, naming what was missing.
#[test]
fn unknown_mac_and_device_are_not_found() {
    let ns = TestNs::new("notfound");
    ns.add_nic("ens3", MAC);
    let mut req = eth0_request();
    req.hw_addr = "02:00:00:00:77:77".into();
    let e = ns.run(|| update_interface(&req)).unwrap_err();
    assert!(matches!(e, NetworkError::NoSuchMac(_)), "{e}");
    let (code, message) = status(e);
    assert_eq!(code, Code::NOT_FOUND);
    assert!(message.contains("02:00:00:00:77:77"), "{message}");

    let mut r = route("", "10.88.0.1", 0);
    r.device = "eth9".into();
    let (code, message) = status(ns.run(|| update_routes(&[r])).unwrap_err());
    assert_eq!(code, Code::NOT_FOUND);
    assert!(message.contains("eth9"), "{message}");
}

/// A gateway the link does not reach: the kernel refuses, and the host gets INTERNAL with the
/// route and the kernel's words.
#[test]
fn kernel_refusal_is_internal_with_its_text() {
    let ns = TestNs::new("refused");
    ns.add_nic("ens3", MAC);
    ns.run(|| update_interface(&eth0_request())).unwrap();
    let e = ns
        .run(|| update_routes(&[route("", "10.99.0.1", 0)]))
        .unwrap_err();
    let errno = match &e {
        NetworkError::Kernel { source, .. } => husk_netlink::errno(source),
        other => panic!("{other}"),
    };
    assert_eq!(errno, Some(libc::ENETUNREACH));
    let (code, message) = status(e);
    assert_eq!(code, Code::INTERNAL);
    assert!(
        message.starts_with("Cannot add the route default via 10.99.0.1 dev eth0: "),
        "{message}"
    );
    assert!(message.contains("unreachable"), "{message}");
}

/// Too many routes, addresses or neighbours, malformed text: INVALID_ARGUMENT, and nothing in
/// the namespace changed (not even lo, which UpdateInterface would bring up).
#[test]
fn bad_requests_change_nothing() {
    let ns = TestNs::new("bad");
    ns.add_nic("ens3", MAC);
    let before = (ns.link("lo"), ns.link("ens3"));

    let many = vec![route("", "10.88.0.1", 0); MAX_ROUTES + 1];
    let (code, message) = status(ns.run(|| update_routes(&many)).unwrap_err());
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert!(message.contains("257"), "{message}");

    let mut req = eth0_request();
    req.ip_addresses = vec!["10.88.0.2/24".into(); MAX_ADDRESSES + 1];
    let (code, _) = status(ns.run(|| update_interface(&req)).unwrap_err());
    assert_eq!(code, Code::INVALID_ARGUMENT);

    let mut req = eth0_request();
    req.ip_addresses.push("10.88.0.300/24".into());
    let (code, message) = status(ns.run(|| update_interface(&req)).unwrap_err());
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert!(message.contains("10.88.0.300/24"), "{message}");

    let neighbour = ARPNeighbor {
        to_ip: "10.88.0.1".into(),
        lladdr: "02:00:00:00:88".into(),
        device: "eth0".into(),
        ..Default::default()
    };
    let (code, message) = status(ns.run(|| add_neighbours(&[neighbour])).unwrap_err());
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert!(message.contains("02:00:00:00:88"), "{message}");

    let many = vec![ARPNeighbor::default(); MAX_NEIGHBOURS + 1];
    let (code, _) = status(ns.run(|| add_neighbours(&many)).unwrap_err());
    assert_eq!(code, Code::INVALID_ARGUMENT);

    assert_eq!((ns.link("lo"), ns.link("ens3")), before);
}
