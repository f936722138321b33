//! Links (network interfaces) over rtnetlink: read, find, rename, set up or down, delete.

use std::io;

use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoKind, LinkAttribute, LinkFlags, LinkInfo,
    LinkLayerType, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::Netlink;

/// What we need to know of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `veth`, `ipvlan`, `macvlan`, `tun`...; empty when the kernel gives none.
    pub kind: String,
    pub flags: LinkFlags,
    /// Whether it is an Ethernet link (`ARPHRD_ETHER`).
    pub ether: bool,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// The transmit queue length (`txqueuelen`).
    pub txqlen: u32,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Self {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            kind: String::new(),
            flags: m.header.flags,
            ether: m.header.link_layer_type == LinkLayerType::Ether,
            mac: None,
            mtu: 0,
            txqlen: 0,
        };
        for attribute in &m.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::TxQueueLen(len) => link.txqlen = *len,
                LinkAttribute::Address(a) => link.mac = a.as_slice().try_into().ok(),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = kind.to_string();
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    pub fn is_loopback(&self) -> bool {
        self.flags.contains(LinkFlags::Loopback)
    }

    pub fn is_tun(&self) -> bool {
        self.kind == InfoKind::Tun.to_string()
    }

    /// Administratively up (`IFF_UP`), whatever its carrier.
    pub fn is_up(&self) -> bool {
        self.flags.contains(LinkFlags::Up)
    }
}

/// Every link of the namespace.
pub fn list(nl: &mut Netlink) -> io::Result<Vec<Link>> {
    Ok(nl
        .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
            _ => None,
        })
        .collect())
}

/// The link with index `index`; `Ok(None)` if there is none (`ENODEV`).
pub fn by_index(nl: &mut Netlink, index: u32) -> io::Result<Option<Link>> {
    let mut message = LinkMessage::default();
    message.header.index = index;
    get(nl, message)
}

/// The link named `name`; `Ok(None)` if there is none.
pub fn by_name(nl: &mut Netlink, name: &str) -> io::Result<Option<Link>> {
    let mut message = LinkMessage::default();
    message
        .attributes
        .push(LinkAttribute::IfName(name.to_string()));
    get(nl, message)
}

fn get(nl: &mut Netlink, message: LinkMessage) -> io::Result<Option<Link>> {
    match nl.get(RouteNetlinkMessage::GetLink(message)) {
        Ok(RouteNetlinkMessage::NewLink(l)) => Ok(Some(Link::from_message(&l))),
        Ok(other) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected answer to a link request: {other:?}"),
        )),
        Err(e) if crate::errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets the MTU of `index` and brings it up.
pub fn set_up(nl: &mut Netlink, index: u32, mtu: u32) -> io::Result<()> {
    let mut message = LinkMessage::default();
    message.header.index = index;
    message.header.flags = LinkFlags::Up;
    message.header.change_mask = LinkFlags::Up;
    message.attributes.push(LinkAttribute::Mtu(mtu));
    nl.request(RouteNetlinkMessage::SetLink(message), 0)
}

/// Takes `index` down.
pub fn set_down(nl: &mut Netlink, index: u32) -> io::Result<()> {
    let mut message = LinkMessage::default();
    message.header.index = index;
    message.header.change_mask = LinkFlags::Up;
    nl.request(RouteNetlinkMessage::SetLink(message), 0)
}

/// Sets the MTU of `index`, leaving it up or down.
pub fn set_mtu(nl: &mut Netlink, index: u32, mtu: u32) -> io::Result<()> {
    let mut message = LinkMessage::default();
    message.header.index = index;
    message.attributes.push(LinkAttribute::Mtu(mtu));
    nl.request(RouteNetlinkMessage::SetLink(message), 0)
}

/// Sets the transmit queue length of `index`.
pub fn set_txqlen(nl: &mut Netlink, index: u32, len: u32) -> io::Result<()> {
    let mut message = LinkMessage::default();
    message.header.index = index;
    message.attributes.push(LinkAttribute::TxQueueLen(len));
    nl.request(RouteNetlinkMessage::SetLink(message), 0)
}

/// Renames `index` to `name`. The kernel refuses a name another link has (`EEXIST`); older
/// kernels also refuse to rename a link that is up (`EBUSY`): take it down first.
pub fn rename(nl: &mut Netlink, index: u32, name: &str) -> io::Result<()> {
    let mut message = LinkMessage::default();
    message.header.index = index;
    message
        .attributes
        .push(LinkAttribute::IfName(name.to_string()));
    nl.request(RouteNetlinkMessage::SetLink(message), 0)
}

/// Stops the kernel from giving `index` IPv6 addresses of its own (a link-local address, and
/// with it router solicitations and MLD reports the guest would read).
pub fn disable_ipv6_addresses(nl: &mut Netlink, index: u32) -> io::Result<()> {
    let mut message = LinkMessage::default();
    message.header.index = index;
    message
        .attributes
        .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
        )]));
    nl.request(RouteNetlinkMessage::SetLink(message), 0)
}

/// Deletes `index` (and, for a veth, its peer).
pub fn delete(nl: &mut Netlink, index: u32) -> io::Result<()> {
    let mut message = LinkMessage::default();
    message.header.index = index;
    nl.request(RouteNetlinkMessage::DelLink(message), 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_ns::TestNs;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];

    /// On the real kernel, in a namespace of the test's own: a veth found by name and index,
    /// set up with an MTU, renamed while down, deleted with its peer.
    #[test]
    fn link_lifecycle() {
        let ns = TestNs::new("link");
        ns.ip(&[
            "link",
            "add",
            "d0",
            "address",
            "02:00:00:00:01:01",
            "type",
            "veth",
            "peer",
            "name",
            "d0p",
        ]);
        ns.run(|| {
            let mut nl = Netlink::open().unwrap();
            let all = list(&mut nl).unwrap();
            assert!(
                all.iter().any(|l| l.name == "lo" && l.is_loopback()),
                "{all:?}"
            );
            let d0 = by_name(&mut nl, "d0").unwrap().expect("d0 is there");
            assert!(all.contains(&d0), "{all:?}");
            assert_eq!(d0.kind, "veth");
            assert_eq!(d0.mac, Some(MAC));
            assert!(d0.ether && !d0.is_up() && !d0.is_loopback() && !d0.is_tun());
            assert_eq!(by_index(&mut nl, d0.index).unwrap(), Some(d0.clone()));
            assert_eq!(by_name(&mut nl, "nothing").unwrap(), None);
            assert_eq!(by_index(&mut nl, 99_999).unwrap(), None);

            set_up(&mut nl, d0.index, 1400).unwrap();
            let up = by_index(&mut nl, d0.index).unwrap().unwrap();
            assert!(up.is_up());
            assert_eq!(up.mtu, 1400);

            set_down(&mut nl, d0.index).unwrap();
            rename(&mut nl, d0.index, "eth7").unwrap();
            set_mtu(&mut nl, d0.index, 1300).unwrap();
            let renamed = by_name(&mut nl, "eth7").unwrap().unwrap();
            assert_eq!(renamed.index, d0.index);
            assert_eq!(renamed.mtu, 1300);
            assert!(!renamed.is_up());

            delete(&mut nl, d0.index).unwrap();
            assert_eq!(by_index(&mut nl, d0.index).unwrap(), None);
            assert_eq!(by_name(&mut nl, "d0p").unwrap(), None);
        });
    }
}
