//! The guest's network, as the shim asks for it: each interface found by the MAC the VMM gave
//! its virtio-net device and given the name, MTU and addresses of the pod's CNI interface, then
//! the pod's routes and permanent neighbours.
//!
//! Everything acts on the calling thread's network namespace (the guest's, for PID 1), over
//! rtnetlink (`husk_netlink`): no `ip`, no files. Each call reads its whole request first and
//! refuses it before changing anything if any of it is malformed or too large (see `parse`);
//! calls are taken one at a time, and each is safe to repeat (what is already there is kept or
//! replaced, never an error). Every call logs one line of what it changed.

mod parse;

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::sync::Mutex;

use husk_agent_protocol::agent::{ARPNeighbor, Interface, Route};
use husk_netlink::link::{self, Link};
use husk_netlink::route;
use husk_netlink::Netlink;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{
    RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use self::parse::{mac_text, NeighbourConfig, Prefix, RouteConfig};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("No interface has MAC {0}")]
    NoSuchMac(String),
    #[error("No interface is named {0:?}")]
    NoSuchDevice(String),
    #[error("Invalid {what} {value:?}: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("Too many {what} in one request: {count} (at most {max})")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    /// The kernel refused (its errno and extended-ack text are in the source), or the netlink
    /// socket failed; `op` says what was being done ("add 10.88.0.2/24 to eth0").
    #[error("Cannot {op}")]
    Kernel {
        op: String,
        #[source]
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, NetworkError>;

/// One network change at a time: two calls renaming links at once would trip over each other.
static SERIAL: Mutex<()> = Mutex::new(());

fn kernel(op: impl Into<String>) -> impl FnOnce(io::Error) -> NetworkError {
    let op = op.into();
    move |source| NetworkError::Kernel { op, source }
}

fn open() -> Result<Netlink> {
    Netlink::open().map_err(kernel("open a netlink socket"))
}

/// UpdateInterface: finds the link whose MAC is `req.hw_addr`, renames it to `req.name` (taking
/// it down for that), sets its MTU (0 keeps it), adds each of `req.ip_addresses` (one already
/// there is kept) and brings it up; brings `lo` up too. A link that already holds the name is
/// renamed `husk<index>` first, so the shim can give interfaces the names of the pod's whatever
/// order the guest's kernel found them in. Answers with the link as it now is.
pub fn update_interface(req: &Interface) -> Result<Interface> {
    let want = parse::interface(req)?;
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut nl = open()?;
    let lo_raised = raise_loopback(&mut nl)?;

    let links = link::list(&mut nl).map_err(kernel("list the links"))?;
    let mac = mac_text(want.mac);
    let found = links
        .iter()
        .find(|l| l.mac == Some(want.mac) && !l.is_loopback())
        .ok_or_else(|| NetworkError::NoSuchMac(mac.clone()))?
        .clone();

    let mut moved_aside = None;
    let renamed_from = if found.name != want.name {
        if let Some(holder) = links.iter().find(|l| l.name == want.name) {
            moved_aside = Some(move_aside(&mut nl, holder)?);
        }
        if found.is_up() {
            link::set_down(&mut nl, found.index)
                .map_err(kernel(format!("take {} down", found.name)))?;
        }
        link::rename(&mut nl, found.index, &want.name)
            .map_err(kernel(format!("rename {} to {}", found.name, want.name)))?;
        Some(found.name.as_str())
    } else {
        None
    };

    let mtu = want.mtu.unwrap_or(found.mtu);
    let mtu_changed = (mtu != found.mtu).then_some(mtu);
    if mtu_changed.is_some() {
        link::set_mtu(&mut nl, found.index, mtu)
            .map_err(kernel(format!("set the MTU of {} to {mtu}", want.name)))?;
    }
    let mut added = Vec::new();
    for address in &want.addresses {
        if add_address(&mut nl, found.index, *address)
            .map_err(kernel(format!("add {address} to {}", want.name)))?
        {
            added.push(address.to_string());
        }
    }
    let raised = !found.is_up() || renamed_from.is_some();
    link::set_up(&mut nl, found.index, mtu).map_err(kernel(format!("bring {} up", want.name)))?;

    let now = link::by_index(&mut nl, found.index)
        .map_err(kernel(format!("look up {}", want.name)))?
        .ok_or_else(|| NetworkError::NoSuchMac(mac.clone()))?;
    let ip_addresses = addresses_of(&mut nl, now.index)?;
    tracing::info!(
        iface = %now.name,
        %mac,
        renamed_from,
        moved_aside = moved_aside.as_deref(),
        mtu = mtu_changed,
        addresses_added = ?added,
        up = raised,
        lo_up = lo_raised,
        "interface updated"
    );
    Ok(Interface {
        name: now.name,
        hw_addr: mac,
        mtu: u64::from(now.mtu),
        ip_addresses,
        ..Default::default()
    })
}

/// Brings `lo` up if it is down; returns whether it did.
fn raise_loopback(nl: &mut Netlink) -> Result<bool> {
    match link::by_name(nl, "lo").map_err(kernel("look up lo"))? {
        Some(lo) if !lo.is_up() => {
            link::set_up(nl, lo.index, lo.mtu).map_err(kernel("bring lo up"))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Renames `holder` to `husk<index>`, taking it down for that and up again if it was; returns
/// what it did, for the log.
fn move_aside(nl: &mut Netlink, holder: &Link) -> Result<String> {
    if holder.is_loopback() {
        return Err(NetworkError::Invalid {
            what: "interface name",
            value: holder.name.clone(),
            why: "the loopback's name",
        });
    }
    let aside = format!("husk{}", holder.index);
    let op = format!("rename {} to {aside}, out of the way", holder.name);
    if holder.is_up() {
        link::set_down(nl, holder.index).map_err(kernel(op.clone()))?;
    }
    link::rename(nl, holder.index, &aside).map_err(kernel(op.clone()))?;
    if holder.is_up() {
        link::set_up(nl, holder.index, holder.mtu).map_err(kernel(op))?;
    }
    Ok(format!("{} -> {aside}", holder.name))
}

/// Adds `address` to link `index`; returns whether it was not there yet. IPv4 addresses get
/// their broadcast address, as CNI gives them; IPv6 addresses skip duplicate address detection
/// (`nodad`): the pod's address is the pod's alone, and usable at once.
fn add_address(nl: &mut Netlink, index: u32, address: Prefix) -> io::Result<bool> {
    let mut message = AddressMessage::default();
    message.header.family = AddressFamily::from(address.addr);
    message.header.prefix_len = address.len;
    message.header.index = index;
    message
        .attributes
        .push(AddressAttribute::Local(address.addr));
    message
        .attributes
        .push(AddressAttribute::Address(address.addr));
    if let Some(broadcast) = address.broadcast() {
        message
            .attributes
            .push(AddressAttribute::Broadcast(broadcast));
    }
    if address.addr.is_ipv6() {
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match nl.request(
        RouteNetlinkMessage::NewAddress(message),
        NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Ok(()) => Ok(true),
        Err(e) if husk_netlink::errno(&e) == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The addresses of link `index` (`ADDR/PREFIX`), in the kernel's order.
fn addresses_of(nl: &mut Netlink, index: u32) -> Result<Vec<String>> {
    let all = nl
        .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
        .map_err(kernel("list the addresses"))?;
    let mut out = Vec::new();
    for message in &all {
        let RouteNetlinkMessage::NewAddress(a) = message else {
            continue;
        };
        if a.header.index != index {
            continue;
        }
        // IFA_LOCAL is the link's own address; IPv6 often has only IFA_ADDRESS.
        let mut local = None;
        let mut address = None;
        for attribute in &a.attributes {
            match attribute {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                _ => {}
            }
        }
        if let Some(ip) = local.or(address) {
            out.push(parse::prefix_text(ip, a.header.prefix_len));
        }
    }
    Ok(out)
}

/// UpdateRoutes: adds the routes to the main table in order, each replacing the route to the
/// same destination with the same metric if there is one (`NLM_F_CREATE | NLM_F_REPLACE`), so
/// that a repeated call is no error. Answers with the main table's routes through the
/// devices named, the kernel's own included.
pub fn update_routes(req: &[Route]) -> Result<Vec<Route>> {
    let routes = parse::routes(req)?;
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut nl = open()?;
    let devices = devices(&mut nl, routes.iter().map(|r| r.device.as_str()))?;
    for route in &routes {
        add_route(&mut nl, route, index_of(&devices, &route.device)?)
            .map_err(kernel(format!("add the route {route}")))?;
    }
    let now = routes_of(&mut nl, &devices)?;
    let added: Vec<String> = routes.iter().map(ToString::to_string).collect();
    tracing::info!(routes = ?added, "routes added or replaced");
    Ok(now)
}

/// The index of each named device, or NoSuchDevice for the first that is not there.
fn devices<'a>(
    nl: &mut Netlink,
    names: impl Iterator<Item = &'a str>,
) -> Result<BTreeMap<String, u32>> {
    let mut out = BTreeMap::new();
    for name in names {
        if out.contains_key(name) {
            continue;
        }
        let link = link::by_name(nl, name)
            .map_err(kernel(format!("look up {name}")))?
            .ok_or_else(|| NetworkError::NoSuchDevice(name.to_string()))?;
        out.insert(name.to_string(), link.index);
    }
    Ok(out)
}

fn index_of(devices: &BTreeMap<String, u32>, name: &str) -> Result<u32> {
    devices
        .get(name)
        .copied()
        .ok_or_else(|| NetworkError::NoSuchDevice(name.to_string()))
}

fn add_route(nl: &mut Netlink, route: &RouteConfig, index: u32) -> io::Result<()> {
    let mut message = RouteMessage::default();
    message.header.address_family = if route.ipv6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    message.header.destination_prefix_length = route.dest.map_or(0, |d| d.len);
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    // What `ip route add` says of a route an administrator added.
    message.header.protocol = RouteProtocol::Boot;
    message.header.scope = RouteScope::from(route.scope);
    message.header.kind = RouteType::Unicast;
    if let Some(dest) = route.dest {
        message
            .attributes
            .push(RouteAttribute::Destination(dest.addr.into()));
    }
    if let Some(gateway) = route.gateway {
        message
            .attributes
            .push(RouteAttribute::Gateway(gateway.into()));
    }
    if let Some(source) = route.source {
        message
            .attributes
            .push(RouteAttribute::PrefSource(source.into()));
    }
    message.attributes.push(RouteAttribute::Oif(index));
    nl.request(
        RouteNetlinkMessage::NewRoute(message),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

/// The unicast routes of the main table through `devices`, as Route messages.
fn routes_of(nl: &mut Netlink, devices: &BTreeMap<String, u32>) -> Result<Vec<Route>> {
    let all = route::list(nl).map_err(kernel("list the routes"))?;
    let names: BTreeMap<u32, &String> = devices.iter().map(|(name, i)| (*i, name)).collect();
    let mut out = Vec::new();
    for r in &all {
        if !r.is_main_unicast() {
            continue;
        }
        let Some(device) = r.oif.and_then(|i| names.get(&i)) else {
            continue;
        };
        let dest = match r.dst {
            Some(addr) if r.dst_len > 0 => parse::prefix_text(addr, r.dst_len),
            _ => String::new(),
        };
        let text = |a: Option<IpAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        out.push(Route {
            dest,
            gateway: text(r.gateway),
            device: (*device).clone(),
            source: text(r.source),
            scope: u32::from(u8::from(r.scope)),
            ..Default::default()
        });
    }
    Ok(out)
}

/// AddARPNeighbors: a permanent neighbour entry for each (ARP for IPv4, NDP for IPv6),
/// replacing what the table has for that address.
pub fn add_neighbours(req: &[ARPNeighbor]) -> Result<()> {
    let neighbours = parse::neighbours(req)?;
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut nl = open()?;
    let devices = devices(&mut nl, neighbours.iter().map(|n| n.device.as_str()))?;
    for neighbour in &neighbours {
        add_neighbour(&mut nl, neighbour, index_of(&devices, &neighbour.device)?)
            .map_err(kernel(format!("add the neighbour {neighbour}")))?;
    }
    let added: Vec<String> = neighbours.iter().map(ToString::to_string).collect();
    tracing::info!(neighbours = ?added, "permanent neighbours added or replaced");
    Ok(())
}

fn add_neighbour(nl: &mut Netlink, neighbour: &NeighbourConfig, index: u32) -> io::Result<()> {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::from(neighbour.ip);
    message.header.ifindex = index;
    message.header.state = NeighbourState::Permanent;
    message
        .attributes
        .push(NeighbourAttribute::Destination(neighbour.ip.into()));
    message
        .attributes
        .push(NeighbourAttribute::LinkLayerAddress(neighbour.mac.to_vec()));
    nl.request(
        RouteNetlinkMessage::NewNeighbour(message),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

#[cfg(test)]
mod tests;
