//! Links (network interfaces) over rtnetlink: read, find, bring up, delete.

use std::io;

use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoKind, LinkAttribute, LinkFlags, LinkInfo,
    LinkLayerType, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::netlink::Netlink;

/// What we need to know of a link.
#[derive(Debug, Clone)]
pub(super) struct Link {
    pub index: u32,
    pub name: String,
    /// `veth`, `ipvlan`, `macvlan`, `tun`...; empty when the kernel gives none.
    pub kind: String,
    pub flags: LinkFlags,
    pub ether: bool,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
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
        };
        for attribute in &m.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
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
}

pub(super) fn list(nl: &mut Netlink) -> io::Result<Vec<Link>> {
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
pub(super) fn by_index(nl: &mut Netlink, index: u32) -> io::Result<Option<Link>> {
    let mut message = LinkMessage::default();
    message.header.index = index;
    get(nl, message)
}

pub(super) fn by_name(nl: &mut Netlink, name: &str) -> io::Result<Option<Link>> {
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
        Err(e) if super::netlink::errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets the MTU of `index` and brings it up.
pub(super) fn set_up(nl: &mut Netlink, index: u32, mtu: u32) -> io::Result<()> {
    let mut message = LinkMessage::default();
    message.header.index = index;
    message.header.flags = LinkFlags::Up;
    message.header.change_mask = LinkFlags::Up;
    message.attributes.push(LinkAttribute::Mtu(mtu));
    nl.request(RouteNetlinkMessage::SetLink(message), 0)
}

/// Stops the kernel from giving `index` IPv6 addresses of its own (a link-local address, and
/// with it router solicitations and MLD reports the guest would read).
pub(super) fn disable_ipv6_addresses(nl: &mut Netlink, index: u32) -> io::Result<()> {
    let mut message = LinkMessage::default();
    message.header.index = index;
    message
        .attributes
        .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
        )]));
    nl.request(RouteNetlinkMessage::SetLink(message), 0)
}

pub(super) fn delete(nl: &mut Netlink, index: u32) -> io::Result<()> {
    let mut message = LinkMessage::default();
    message.header.index = index;
    nl.request(RouteNetlinkMessage::DelLink(message), 0)
}
