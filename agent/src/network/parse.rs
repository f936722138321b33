//! The text of the network requests (MACs, `ADDR/PREFIX`, addresses, interface names), read
//! into what the kernel is asked for. Nothing here touches the kernel.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use husk_agent_protocol::agent::{ARPNeighbor, Interface, Route};

use super::NetworkError;

/// Most addresses on an interface in one UpdateInterface.
pub const MAX_ADDRESSES: usize = 64;
/// Most routes in one UpdateRoutes.
pub const MAX_ROUTES: usize = 256;
/// Most neighbours in one AddARPNeighbors.
pub const MAX_NEIGHBOURS: usize = 256;

/// `IFNAMSIZ`: an interface name is shorter.
const IFNAMSIZ: usize = 16;

/// An address with its prefix length (`10.88.0.2/24`), or a network (`10.88.0.0/16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Prefix {
    /// Whether the host bits are all zero (a network, as a route's destination must be).
    fn is_network(self) -> bool {
        match self.addr {
            IpAddr::V4(a) => u32::from(a).checked_shl(u32::from(self.len)).unwrap_or(0) == 0,
            IpAddr::V6(a) => u128::from(a).checked_shl(u32::from(self.len)).unwrap_or(0) == 0,
        }
    }

    /// The IPv4 broadcast address of the prefix, for prefixes that have one (shorter than /31).
    pub fn broadcast(self) -> Option<Ipv4Addr> {
        match self.addr {
            IpAddr::V4(a) if self.len < 31 => {
                let host = u32::MAX >> self.len;
                Some(Ipv4Addr::from(u32::from(a) | host))
            }
            _ => None,
        }
    }
}

/// An interface as UpdateInterface asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    pub name: String,
    pub mac: [u8; 6],
    /// `None`: keep the MTU the link has.
    pub mtu: Option<u32>,
    pub addresses: Vec<Prefix>,
}

/// A route as UpdateRoutes asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// `None` for a default route.
    pub dest: Option<Prefix>,
    pub gateway: Option<IpAddr>,
    pub source: Option<IpAddr>,
    pub scope: u8,
    pub device: String,
    /// Whether it is an IPv6 route (else IPv4).
    pub ipv6: bool,
}

impl fmt::Display for RouteConfig {
    /// `ip route` style: `default via 10.88.0.1 dev eth0`, `10.77.0.1/32 dev eth0 scope 253`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dest {
            Some(d) => write!(f, "{d}")?,
            None if self.ipv6 => write!(f, "default (IPv6)")?,
            None => write!(f, "default")?,
        }
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        write!(f, " dev {}", self.device)?;
        if let Some(s) = self.source {
            write!(f, " src {s}")?;
        }
        if self.scope != 0 {
            write!(f, " scope {}", self.scope)?;
        }
        Ok(())
    }
}

/// A permanent neighbour entry as AddARPNeighbors asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourConfig {
    pub ip: IpAddr,
    pub mac: [u8; 6],
    pub device: String,
}

impl fmt::Display for NeighbourConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} lladdr {} dev {}",
            self.ip,
            mac_text(self.mac),
            self.device
        )
    }
}

pub fn interface(req: &Interface) -> Result<InterfaceConfig, NetworkError> {
    at_most("addresses", req.ip_addresses.len(), MAX_ADDRESSES)?;
    let mac = mac(&req.hw_addr)?;
    let name = ifname(&req.name)?;
    let mtu = match req.mtu {
        0 => None,
        m => Some(u32::try_from(m).map_err(|_| invalid("MTU", m.to_string(), "too large"))?),
    };
    let addresses = req
        .ip_addresses
        .iter()
        .map(|a| prefix(a).map_err(|why| invalid("address", a, why)))
        .collect::<Result<_, _>>()?;
    Ok(InterfaceConfig {
        name,
        mac,
        mtu,
        addresses,
    })
}

pub fn routes(req: &[Route]) -> Result<Vec<RouteConfig>, NetworkError> {
    at_most("routes", req.len(), MAX_ROUTES)?;
    req.iter().map(route).collect()
}

fn route(r: &Route) -> Result<RouteConfig, NetworkError> {
    let text = || format!("{r:?}");
    let dest = match r.dest.as_str() {
        "" => None,
        d => {
            let p = prefix(d).map_err(|why| invalid("route destination", d, why))?;
            if !p.is_network() {
                return Err(invalid("route destination", d, "host bits are set"));
            }
            Some(p)
        }
    };
    let gateway = optional_ip(&r.gateway).map_err(|why| invalid("gateway", &r.gateway, why))?;
    let source = optional_ip(&r.source).map_err(|why| invalid("source", &r.source, why))?;
    let scope = u8::try_from(r.scope)
        .map_err(|_| invalid("route scope", r.scope.to_string(), "not 0 to 255"))?;
    if r.device.is_empty() {
        return Err(invalid("route", text(), "no device"));
    }
    let families: Vec<bool> = [dest.map(|d| d.addr), gateway, source]
        .into_iter()
        .flatten()
        .map(|a| a.is_ipv6())
        .collect();
    // A default route with neither gateway nor source is an IPv4 one.
    let ipv6 = families.first().copied().unwrap_or(false);
    if families.iter().any(|f| *f != ipv6) {
        return Err(invalid("route", text(), "mixes IPv4 and IPv6"));
    }
    Ok(RouteConfig {
        dest,
        gateway,
        source,
        scope,
        device: r.device.clone(),
        ipv6,
    })
}

pub fn neighbours(req: &[ARPNeighbor]) -> Result<Vec<NeighbourConfig>, NetworkError> {
    at_most("neighbours", req.len(), MAX_NEIGHBOURS)?;
    req.iter()
        .map(|n| {
            let ip = n
                .to_ip
                .parse()
                .map_err(|_| invalid("neighbour address", &n.to_ip, "not an IP address"))?;
            if n.device.is_empty() {
                return Err(invalid("neighbour", format!("{n:?}"), "no device"));
            }
            Ok(NeighbourConfig {
                ip,
                mac: mac(&n.lladdr)?,
                device: n.device.clone(),
            })
        })
        .collect()
}

fn at_most(what: &'static str, count: usize, max: usize) -> Result<(), NetworkError> {
    if count > max {
        return Err(NetworkError::TooMany { what, count, max });
    }
    Ok(())
}

fn invalid(what: &'static str, value: impl Into<String>, why: &'static str) -> NetworkError {
    NetworkError::Invalid {
        what,
        value: value.into(),
        why,
    }
}

/// `aa:bb:cc:dd:ee:ff`, either case.
pub fn mac(text: &str) -> Result<[u8; 6], NetworkError> {
    let bad = || invalid("MAC", text, "not six hex bytes separated by ':'");
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut out {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

/// `aa:bb:cc:dd:ee:ff`, lower case.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `ADDR/PREFIX`, IPv4 or IPv6.
fn prefix(text: &str) -> Result<Prefix, &'static str> {
    let (addr, len) = text.split_once('/').ok_or("not ADDR/PREFIX")?;
    let addr: IpAddr = addr.parse().map_err(|_| "not an IP address")?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = len
        .parse::<u8>()
        .ok()
        .filter(|l| *l <= max)
        .ok_or("bad prefix length")?;
    Ok(Prefix { addr, len })
}

fn optional_ip(text: &str) -> Result<Option<IpAddr>, &'static str> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| "not an IP address")
}

/// A name the kernel takes for a link: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or white
/// space (the kernel's `dev_valid_name`).
fn ifname(name: &str) -> Result<String, NetworkError> {
    let valid = !name.is_empty()
        && name.len() < IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace());
    if !valid {
        return Err(invalid("interface name", name, "not a valid link name"));
    }
    Ok(name.to_string())
}

/// The text of an address the kernel reports (`ADDR/PREFIX`).
pub fn prefix_text(addr: IpAddr, len: u8) -> String {
    Prefix { addr, len }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(addr: &str, len: u8) -> Prefix {
        Prefix {
            addr: addr.parse().unwrap(),
            len,
        }
    }

    #[test]
    fn macs() {
        let m = [0x02, 0xab, 0, 0x10, 0xff, 0x01];
        assert_eq!(mac("02:ab:00:10:ff:01").unwrap(), m);
        assert_eq!(mac("02:AB:00:10:FF:01").unwrap(), m);
        assert_eq!(mac_text(m), "02:ab:00:10:ff:01");
        for bad in [
            "",
            "02:ab:00:10:ff",
            "02:ab:00:10:ff:01:02",
            "02:ab:00:10:ff:1",
            "02-ab-00-10-ff-01",
            "02:ab:00:10:ff:0g",
            "+2:ab:00:10:ff:01",
        ] {
            let e = mac(bad).unwrap_err();
            assert!(matches!(e, NetworkError::Invalid { .. }), "{bad}: {e}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn prefixes() {
        assert_eq!(prefix("10.88.0.2/24"), Ok(p("10.88.0.2", 24)));
        assert_eq!(prefix("fd00:88::2/64"), Ok(p("fd00:88::2", 64)));
        assert_eq!(prefix("0.0.0.0/0"), Ok(p("0.0.0.0", 0)));
        assert_eq!(prefix("10.88.0.2"), Err("not ADDR/PREFIX"));
        assert_eq!(prefix("10.88.0.300/24"), Err("not an IP address"));
        assert_eq!(prefix("10.88.0.2/33"), Err("bad prefix length"));
        assert_eq!(prefix("fd00::1/129"), Err("bad prefix length"));
        assert_eq!(prefix("10.88.0.2/-1"), Err("bad prefix length"));
        assert!(p("10.88.0.0", 24).is_network());
        assert!(!p("10.88.0.2", 24).is_network());
        assert!(p("10.88.0.2", 32).is_network());
        assert!(p("0.0.0.0", 0).is_network());
        assert!(p("fd00:88::", 64).is_network());
        assert!(!p("fd00:88::2", 64).is_network());
        assert_eq!(
            p("10.88.0.2", 24).broadcast(),
            Some("10.88.0.255".parse().unwrap())
        );
        assert_eq!(p("10.88.0.2", 31).broadcast(), None);
        assert_eq!(p("fd00:88::2", 64).broadcast(), None);
    }

    #[test]
    fn interface_names() {
        assert_eq!(ifname("eth0").unwrap(), "eth0");
        assert!(ifname("fifteen-chars-x").is_ok());
        for bad in ["", "sixteen-chars-xx", ".", "..", "a/b", "a:b", "a b"] {
            assert!(ifname(bad).is_err(), "{bad:?}");
        }
    }

    fn r(dest: &str, gateway: &str, source: &str, scope: u32, device: &str) -> Route {
        Route {
            dest: dest.into(),
            gateway: gateway.into(),
            source: source.into(),
            scope,
            device: device.into(),
            ..Default::default()
        }
    }

    #[test]
    fn route_requests() {
        let v4 = route(&r("", "10.88.0.1", "", 0, "eth0")).unwrap();
        assert_eq!(v4.dest, None);
        assert!(!v4.ipv6);
        assert_eq!(v4.to_string(), "default via 10.88.0.1 dev eth0");
        let v6 = route(&r("", "fd00:88::1", "", 0, "eth0")).unwrap();
        assert!(v6.ipv6);
        let link = route(&r("10.77.0.1/32", "", "10.88.0.2", 253, "eth0")).unwrap();
        assert_eq!(link.dest, Some(p("10.77.0.1", 32)));
        assert_eq!(
            link.to_string(),
            "10.77.0.1/32 dev eth0 src 10.88.0.2 scope 253"
        );
        // No address at all: an IPv4 default route on the device.
        assert!(!route(&r("", "", "", 253, "eth0")).unwrap().ipv6);

        for bad in [
            r("10.77.0.1/24", "", "", 0, "eth0"),
            r("10.77.0.0", "", "", 0, "eth0"),
            r("", "10.88.0.1", "", 0, ""),
            r("", "10.88.0.300", "", 0, "eth0"),
            r("", "10.88.0.1", "fd00:88::2", 0, "eth0"),
            r("fd00:77::/64", "10.88.0.1", "", 0, "eth0"),
            r("", "10.88.0.1", "", 256, "eth0"),
        ] {
            assert!(
                matches!(route(&bad), Err(NetworkError::Invalid { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bounds() {
        let many = vec![r("", "10.88.0.1", "", 0, "eth0"); MAX_ROUTES + 1];
        let e = routes(&many).unwrap_err();
        assert!(matches!(e, NetworkError::TooMany { count: 257, .. }), "{e}");
        assert_eq!(routes(&many[..MAX_ROUTES]).unwrap().len(), MAX_ROUTES);

        let iface = Interface {
            name: "eth0".into(),
            hw_addr: "02:00:00:00:00:01".into(),
            ip_addresses: vec!["10.88.0.2/24".into(); MAX_ADDRESSES + 1],
            ..Default::default()
        };
        assert!(matches!(
            interface(&iface),
            Err(NetworkError::TooMany {
                what: "addresses",
                ..
            })
        ));

        let neighbour = ARPNeighbor {
            to_ip: "10.88.0.1".into(),
            lladdr: "02:00:00:00:00:01".into(),
            device: "eth0".into(),
            ..Default::default()
        };
        assert!(matches!(
            neighbours(&vec![neighbour; MAX_NEIGHBOURS + 1]),
            Err(NetworkError::TooMany {
                what: "neighbours",
                ..
            })
        ));
    }

    #[test]
    fn interface_requests() {
        let mut req = Interface {
            name: "eth0".into(),
            hw_addr: "02:AB:00:00:00:01".into(),
            mtu: 1450,
            ip_addresses: vec!["10.88.0.2/24".into(), "fd00:88::2/64".into()],
            ..Default::default()
        };
        let want = interface(&req).unwrap();
        assert_eq!(want.mac, [2, 0xab, 0, 0, 0, 1]);
        assert_eq!(want.mtu, Some(1450));
        assert_eq!(want.addresses, [p("10.88.0.2", 24), p("fd00:88::2", 64)]);
        req.mtu = 0;
        assert_eq!(interface(&req).unwrap().mtu, None);
        req.mtu = u64::from(u32::MAX) + 1;
        assert!(interface(&req).is_err());
        req.mtu = 1450;
        req.ip_addresses.push("10.88.0.3".into());
        let e = interface(&req).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Invalid address \"10.88.0.3\": not ADDR/PREFIX"
        );
    }
}
