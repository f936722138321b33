//! Routes over rtnetlink, read: what the shim and the agent need to know of one.

use std::io;
use std::net::IpAddr;

use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::Netlink;

/// What we need to know of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `RTA_TABLE` if the kernel gives it (it must for tables above 255), else the header's.
    pub table: u32,
    pub kind: RouteType,
    pub protocol: RouteProtocol,
    pub scope: RouteScope,
    /// The output interface's index (`RTA_OIF`).
    pub oif: Option<u32>,
    /// The destination (`RTA_DST`, `None` if it is not an IP address) and the header's prefix
    /// length; a default route has length 0 and usually no `RTA_DST`.
    pub dst: Option<IpAddr>,
    pub dst_len: u8,
    pub gateway: Option<IpAddr>,
    /// The preferred source address (`RTA_PREFSRC`).
    pub source: Option<IpAddr>,
    /// Whether the next hop is more than `oif` and `gateway` say: multipath (`RTA_MULTIPATH`), a
    /// gateway of another family (`RTA_VIA`) or encapsulation (`RTA_ENCAP`, `RTA_ENCAP_TYPE`).
    pub complex_next_hop: bool,
}

impl Route {
    /// The route a message of a dump (`RTM_NEWROUTE`) describes.
    pub fn from_message(m: &RouteMessage) -> Self {
        let mut route = Route {
            table: u32::from(m.header.table),
            kind: m.header.kind,
            protocol: m.header.protocol,
            scope: m.header.scope,
            oif: None,
            dst: None,
            dst_len: m.header.destination_prefix_length,
            gateway: None,
            source: None,
            complex_next_hop: false,
        };
        for attribute in &m.attributes {
            match attribute {
                RouteAttribute::Table(t) => route.table = *t,
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                RouteAttribute::Destination(a) => route.dst = ip(a),
                RouteAttribute::Gateway(a) => route.gateway = ip(a),
                RouteAttribute::PrefSource(a) => route.source = ip(a),
                RouteAttribute::MultiPath(_)
                | RouteAttribute::Via(_)
                | RouteAttribute::Encap(_)
                | RouteAttribute::EncapType(_) => route.complex_next_hop = true,
                _ => {}
            }
        }
        route
    }

    /// Whether it is a unicast route of the main table.
    pub fn is_main_unicast(&self) -> bool {
        self.table == u32::from(RouteHeader::RT_TABLE_MAIN) && self.kind == RouteType::Unicast
    }
}

fn ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Every route of the namespace: all tables, both families.
pub fn list(nl: &mut Netlink) -> io::Result<Vec<Route>> {
    Ok(nl
        .dump(RouteNetlinkMessage::GetRoute(RouteMessage::default()))?
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => Some(Route::from_message(r)),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use netlink_packet_route::route::{RouteLwEnCapType, RouteNextHop, RouteVia};
    use netlink_packet_route::AddressFamily;

    use super::*;
    use crate::test_ns::TestNs;

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// A main-table unicast route message, as the kernel sends them: the table in the header
    /// and in `RTA_TABLE`.
    fn message(
        family: AddressFamily,
        dst_len: u8,
        attributes: Vec<RouteAttribute>,
    ) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = family;
        m.header.destination_prefix_length = dst_len;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        m.attributes
            .push(RouteAttribute::Table(u32::from(RouteHeader::RT_TABLE_MAIN)));
        m.attributes.extend(attributes);
        m
    }

    #[test]
    fn v4_default_route_through_a_gateway() {
        let m = message(
            AddressFamily::Inet,
            0,
            vec![
                RouteAttribute::Gateway(RouteAddress::Inet(v4("10.88.0.1"))),
                RouteAttribute::Oif(2),
            ],
        );
        assert_eq!(
            Route::from_message(&m),
            Route {
                table: 254,
                kind: RouteType::Unicast,
                protocol: RouteProtocol::Boot,
                scope: RouteScope::Universe,
                oif: Some(2),
                dst: None,
                dst_len: 0,
                gateway: Some(IpAddr::V4(v4("10.88.0.1"))),
                source: None,
                complex_next_hop: false,
            }
        );
        assert!(Route::from_message(&m).is_main_unicast());
    }

    #[test]
    fn v4_link_route_without_a_gateway() {
        let mut m = message(
            AddressFamily::Inet,
            24,
            vec![
                RouteAttribute::Destination(RouteAddress::Inet(v4("10.88.0.0"))),
                RouteAttribute::PrefSource(RouteAddress::Inet(v4("10.88.0.2"))),
                RouteAttribute::Oif(3),
            ],
        );
        m.header.protocol = RouteProtocol::Kernel;
        m.header.scope = RouteScope::Link;
        let r = Route::from_message(&m);
        assert_eq!(r.dst, Some(IpAddr::V4(v4("10.88.0.0"))));
        assert_eq!(r.dst_len, 24);
        assert_eq!(r.gateway, None);
        assert_eq!(r.source, Some(IpAddr::V4(v4("10.88.0.2"))));
        assert_eq!(r.oif, Some(3));
        assert_eq!(r.protocol, RouteProtocol::Kernel);
        assert_eq!(r.scope, RouteScope::Link);
        assert!(!r.complex_next_hop);
    }

    #[test]
    fn v6_routes() {
        let default = message(
            AddressFamily::Inet6,
            0,
            vec![
                RouteAttribute::Gateway(RouteAddress::Inet6(v6("fd00:88::1"))),
                RouteAttribute::Oif(2),
            ],
        );
        let r = Route::from_message(&default);
        assert_eq!((r.dst, r.dst_len), (None, 0));
        assert_eq!(r.gateway, Some(IpAddr::V6(v6("fd00:88::1"))));
        assert_eq!(r.oif, Some(2));

        let subnet = message(
            AddressFamily::Inet6,
            64,
            vec![
                RouteAttribute::Destination(RouteAddress::Inet6(v6("fd00:99::"))),
                RouteAttribute::Oif(2),
            ],
        );
        let r = Route::from_message(&subnet);
        assert_eq!((r.dst, r.dst_len), (Some(IpAddr::V6(v6("fd00:99::"))), 64));
        assert_eq!((r.gateway, r.source), (None, None));
    }

    /// `RTA_TABLE` has the last word; without it the header's table counts.
    #[test]
    fn table() {
        let mut m = message(AddressFamily::Inet, 0, vec![RouteAttribute::Oif(2)]);
        m.attributes[0] = RouteAttribute::Table(1000);
        let r = Route::from_message(&m);
        assert_eq!(r.table, 1000);
        assert!(!r.is_main_unicast());

        m.attributes.remove(0);
        assert_eq!(Route::from_message(&m).table, 254);
        m.header.table = 255;
        assert_eq!(Route::from_message(&m).table, 255);
        assert!(!Route::from_message(&m).is_main_unicast());

        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.kind = RouteType::BlackHole;
        assert!(!Route::from_message(&m).is_main_unicast());
    }

    #[test]
    fn complex_next_hops() {
        for attribute in [
            RouteAttribute::MultiPath(vec![RouteNextHop::default()]),
            RouteAttribute::Via(RouteVia::Inet6(v6("fe80::1"))),
            RouteAttribute::EncapType(RouteLwEnCapType::Mpls),
            RouteAttribute::Encap(Vec::new()),
        ] {
            let m = message(AddressFamily::Inet, 0, vec![attribute.clone()]);
            assert!(Route::from_message(&m).complex_next_hop, "{attribute:?}");
        }
    }

    /// On the real kernel: the routes `ip` added, in their tables.
    #[test]
    fn list_reads_the_kernels_routes() {
        let ns = TestNs::new("route");
        ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d0p"]);
        ns.ip(&["link", "set", "d0p", "up"]);
        ns.ip(&["link", "set", "d0", "up"]);
        ns.ip(&["addr", "add", "10.77.0.2/24", "dev", "d0"]);
        ns.ip(&["route", "add", "default", "via", "10.77.0.1"]);
        ns.ip(&[
            "route",
            "add",
            "10.78.0.0/16",
            "dev",
            "d0",
            "src",
            "10.77.0.2",
            "table",
            "1000",
        ]);
        ns.run(|| {
            let mut nl = Netlink::open().unwrap();
            let d0 = crate::link::by_name(&mut nl, "d0").unwrap().unwrap();
            let all = list(&mut nl).unwrap();
            let default = Route {
                table: 254,
                kind: RouteType::Unicast,
                protocol: RouteProtocol::Boot,
                scope: RouteScope::Universe,
                oif: Some(d0.index),
                dst: None,
                dst_len: 0,
                gateway: Some(IpAddr::V4(v4("10.77.0.1"))),
                source: None,
                complex_next_hop: false,
            };
            assert!(all.contains(&default), "{all:#?}");
            let subnet = all
                .iter()
                .find(|r| r.dst == Some(IpAddr::V4(v4("10.77.0.0"))))
                .expect("the subnet's route");
            assert_eq!(subnet.protocol, RouteProtocol::Kernel);
            assert_eq!(subnet.scope, RouteScope::Link);
            assert_eq!(subnet.source, Some(IpAddr::V4(v4("10.77.0.2"))));
            assert!(subnet.is_main_unicast());
            let other = Route {
                table: 1000,
                kind: RouteType::Unicast,
                protocol: RouteProtocol::Boot,
                scope: RouteScope::Link,
                oif: Some(d0.index),
                dst: Some(IpAddr::V4(v4("10.78.0.0"))),
                dst_len: 16,
                gateway: None,
                source: Some(IpAddr::V4(v4("10.77.0.2"))),
                complex_next_hop: false,
            };
            assert!(all.contains(&other), "{all:#?}");
        });
    }
}
