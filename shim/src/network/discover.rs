//! Reading what CNI left in the pod's namespace: interfaces, addresses, routes, neighbours.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use husk_netlink::link::{self, Link};
use husk_netlink::route::{self, Route};
use husk_netlink::Netlink;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteProtocol;
use netlink_packet_route::RouteNetlinkMessage;

use super::{tap, CniInterface, GuestInterface, GuestNeighbour, GuestRoute, IpPrefix};

/// Every interface of the namespace the guest should get, with what it should get.
///
/// `op` names each step for errors ("list the links", ...).
pub(super) fn interfaces(
    nl: &mut Netlink,
    mut op: impl FnMut(&'static str, io::Error) -> super::NetworkError,
) -> Result<Vec<(CniInterface, GuestInterface)>, super::NetworkError> {
    let links = link::list(nl).map_err(|e| op("list the links", e))?;
    let addresses = nl
        .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
        .map_err(|e| op("list the addresses", e))?;
    let routes = route::list(nl).map_err(|e| op("list the routes", e))?;
    let neighbours = nl
        .dump(RouteNetlinkMessage::GetNeighbour(
            NeighbourMessage::default(),
        ))
        .map_err(|e| op("list the neighbours", e))?;

    let mut out = Vec::new();
    for link in &links {
        if link.is_loopback() {
            continue;
        }
        if link.is_tun() && tap::is_ours(&link.name) {
            tracing::debug!(iface = %link.name, "skipping a husk tap");
            continue;
        }
        let Some(mac) = link.mac.filter(|_| link.ether) else {
            tracing::debug!(iface = %link.name, "skipping an interface that is not Ethernet");
            continue;
        };
        let addresses = addresses_of(link, &addresses);
        let routes = routes_of(link, &addresses, &routes);
        let neighbours = neighbours_of(link, &neighbours);
        let cni = CniInterface {
            ifindex: link.index,
            name: link.name.clone(),
            kind: link.kind.clone(),
            mac,
            mtu: link.mtu,
        };
        let guest = GuestInterface {
            name: link.name.clone(),
            mac,
            mtu: link.mtu,
            addresses,
            routes,
            neighbours,
        };
        tracing::debug!(?guest, kind = %link.kind, "found an interface");
        out.push((cni, guest));
    }
    Ok(out)
}

/// IPv4 and IPv6 addresses, without IPv6 link-local ones (the guest makes its own).
fn addresses_of(link: &Link, all: &[RouteNetlinkMessage]) -> Vec<IpPrefix> {
    let mut out = Vec::new();
    for message in all {
        let RouteNetlinkMessage::NewAddress(a) = message else {
            continue;
        };
        if a.header.index != link.index {
            continue;
        }
        // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on a
        // point-to-point link, and the same as IFA_LOCAL otherwise. IPv6 often has only
        // IFA_ADDRESS.
        let mut local = None;
        let mut address = None;
        for attribute in &a.attributes {
            match attribute {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                _ => {}
            }
        }
        let Some(addr) = local.or(address) else {
            continue;
        };
        if is_ipv6_link_local(addr) {
            continue;
        }
        out.push(IpPrefix {
            addr,
            prefix_len: a.header.prefix_len,
        });
    }
    out
}

/// Routes of the main table that go out through `link`.
///
/// Kept: unicast routes whose output interface is `link` (default routes, routes through a
/// gateway, link-scope routes to a gateway outside the subnet, as Calico makes), sorted so
/// that routes without a gateway come before routes through one (the guest can only add a
/// route through a gateway it already reaches).
///
/// Skipped:
/// - the routes the kernel derives from the addresses (`proto kernel`, destination the
///   prefix of one of the interface's addresses, and `fe80::/64`): the guest's kernel makes
///   the same ones when the agent adds the addresses, and adding them again would fail;
/// - other tables (local, the kernel's broadcast and local routes), other route types
///   (blackhole, unreachable...), routes of other interfaces, and multipath, `via` and
///   encapsulated routes, which a guest route cannot express.
fn routes_of(link: &Link, addresses: &[IpPrefix], all: &[Route]) -> Vec<GuestRoute> {
    let mut out = Vec::new();
    for r in all {
        if !r.is_main_unicast() || r.oif != Some(link.index) {
            continue;
        }
        let dest = match (r.dst, r.dst_len) {
            (_, 0) => None,
            (Some(addr), prefix_len) => Some(IpPrefix { addr, prefix_len }),
            (None, _) => continue,
        };
        if r.complex_next_hop {
            tracing::debug!(iface = %link.name, ?dest, "skipping a multipath, via or encap route");
            continue;
        }
        if r.protocol == RouteProtocol::Kernel
            && dest.is_some_and(|d| derived_from_addresses(d, addresses))
        {
            continue;
        }
        out.push(GuestRoute {
            dest,
            gateway: r.gateway,
            source: r.source,
            scope: u8::from(r.scope),
            device: link.name.clone(),
        });
    }
    out.sort_by_key(|r| r.gateway.is_some());
    out
}

/// Whether the kernel makes route `dest` by itself for the addresses.
fn derived_from_addresses(dest: IpPrefix, addresses: &[IpPrefix]) -> bool {
    let link_local = IpPrefix {
        addr: IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)),
        prefix_len: 64,
    };
    dest == link_local || addresses.iter().any(|a| a.network() == dest)
}

/// Permanent neighbour entries (`ip neigh add ... nud permanent`): the ones CNI plugins set
/// on purpose. Learned entries are the guest's to learn again.
fn neighbours_of(link: &Link, all: &[RouteNetlinkMessage]) -> Vec<GuestNeighbour> {
    let mut out = Vec::new();
    for message in all {
        let RouteNetlinkMessage::NewNeighbour(n) = message else {
            continue;
        };
        if n.header.ifindex != link.index || n.header.state != NeighbourState::Permanent {
            continue;
        }
        let mut ip = None;
        let mut mac = None;
        for attribute in &n.attributes {
            match attribute {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                    ip = Some(IpAddr::V4(*a))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                    ip = Some(IpAddr::V6(*a))
                }
                NeighbourAttribute::LinkLayerAddress(l) => mac = l.as_slice().try_into().ok(),
                _ => {}
            }
        }
        if let (Some(ip), Some(mac)) = (ip, mac) {
            out.push(GuestNeighbour { ip, mac });
        }
    }
    out
}

fn is_ipv6_link_local(addr: IpAddr) -> bool {
    matches!(addr, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

impl IpPrefix {
    /// The prefix with the host bits cleared.
    pub fn network(self) -> IpPrefix {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len.min(32)))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(bits & mask))
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len.min(128)))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        };
        IpPrefix {
            addr,
            prefix_len: self.prefix_len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str, prefix_len: u8) -> IpPrefix {
        IpPrefix {
            addr: s.parse().unwrap(),
            prefix_len,
        }
    }

    #[test]
    fn networks() {
        assert_eq!(p("10.88.0.2", 24).network(), p("10.88.0.0", 24));
        assert_eq!(p("10.88.0.2", 32).network(), p("10.88.0.2", 32));
        assert_eq!(p("10.88.0.2", 0).network(), p("0.0.0.0", 0));
        assert_eq!(p("fd00:88::2", 64).network(), p("fd00:88::", 64));
        assert_eq!(p("fd00:88::2", 128).network(), p("fd00:88::2", 128));
        assert_eq!(p("fd00:88::2", 0).network(), p("::", 0));
    }

    #[test]
    fn derived_routes() {
        let addresses = [p("10.88.0.2", 24), p("fd00:88::2", 64)];
        assert!(derived_from_addresses(p("10.88.0.0", 24), &addresses));
        assert!(derived_from_addresses(p("fd00:88::", 64), &addresses));
        assert!(derived_from_addresses(p("fe80::", 64), &addresses));
        assert!(!derived_from_addresses(p("10.99.0.0", 16), &addresses));
        assert!(!derived_from_addresses(p("10.88.0.0", 16), &addresses));
    }

    #[test]
    fn link_local() {
        assert!(is_ipv6_link_local("fe80::1".parse().unwrap()));
        assert!(is_ipv6_link_local("febf::1".parse().unwrap()));
        assert!(!is_ipv6_link_local("fec0::1".parse().unwrap()));
        assert!(!is_ipv6_link_local("10.0.0.1".parse().unwrap()));
    }
}
