//! The host side of pod networking, Kata's "tcfilter" model.
//!
//! CNI has put an interface (veth, ipvlan or macvlan) with the pod's addresses in the pod's
//! network namespace. Beside it we create a tap and join the two with traffic control: an
//! ingress qdisc on each, and under it a filter that redirects every frame to the other's
//! egress (`mirred egress redirect`). What reaches the CNI interface leaves through the tap,
//! to the VMM, which reads the tap for the guest's virtio-net device; what the VMM writes to
//! the tap leaves through the CNI interface. The guest's interface takes the CNI interface's
//! MAC, MTU, addresses, routes and permanent neighbours, so the pod's IP answers from inside
//! the VM and every CNI plugin works unchanged.
//!
//! - [`discover`] reads the namespace: what each interface is and what the guest needs.
//! - [`attach`] creates the tap and the tc plumbing for one interface and returns the tap's
//!   descriptor (for husk-vmm) and the [`AttachedInterface`] record (for `state.json`).
//! - [`detach`] removes exactly that, from the record, also after a crash.
//! - [`namespace_users`] finds whether the namespace is shared with processes or another
//!   husk sandbox, for refusals at Create.
//!
//! Netlink and `/dev/net/tun` are used from a short-lived thread that enters the namespace
//! (see `netns`); the calling thread never changes namespace. Nothing here runs `ip` or `tc`.
//! The rtnetlink client and the link helpers are `husk_netlink`'s, shared with the agent.

mod discover;
mod netns;
mod tap;
mod tc;

use std::io;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use husk_netlink::{link, Netlink};
use serde::{Deserialize, Serialize};

pub use self::tap::VNET_HDR_LEN;

/// How a pod's network reaches the guest (`internetworking_model` in configuration.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkModel {
    /// A tap beside each CNI interface, joined to it by tc redirect filters.
    #[default]
    TcFilter,
    /// No network for the guest.
    None,
}

impl FromStr for NetworkModel {
    type Err = NetworkError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "tcfilter" => Ok(Self::TcFilter),
            "none" => Ok(Self::None),
            other => Err(NetworkError::UnsupportedModel(other.to_string())),
        }
    }
}

/// An address with its prefix length (`10.88.0.2/24`), or a network (`10.88.0.0/16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IpPrefix {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl std::fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A route the guest adds on its interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRoute {
    /// `None` for the default route.
    pub dest: Option<IpPrefix>,
    pub gateway: Option<IpAddr>,
    /// Preferred source address (`src`).
    pub source: Option<IpAddr>,
    /// `RT_SCOPE_*`: 0 universe, 253 link, 254 host.
    pub scope: u8,
    /// The guest interface's name.
    pub device: String,
}

/// A permanent neighbour (ARP or NDP) entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNeighbour {
    pub ip: IpAddr,
    pub mac: [u8; 6],
}

/// What the guest needs for one interface (goes to the agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInterface {
    /// The CNI interface's name (`eth0`), which the guest's interface takes.
    pub name: String,
    /// The CNI interface's MAC: frames to it are the guest's.
    pub mac: [u8; 6],
    pub mtu: u32,
    /// IPv4 and IPv6 addresses, without IPv6 link-local ones.
    pub addresses: Vec<IpPrefix>,
    /// In an order the guest can add them: routes without a gateway first.
    pub routes: Vec<GuestRoute>,
    pub neighbours: Vec<GuestNeighbour>,
}

/// An interface CNI made, as [`discover`] found it; what [`attach`] works from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniInterface {
    pub ifindex: u32,
    pub name: String,
    /// `veth`, `ipvlan`, `macvlan`... (empty if the kernel does not say).
    pub kind: String,
    pub mac: [u8; 6],
    /// The tap gets the same MTU, as does the guest's interface.
    pub mtu: u32,
}

/// What [`attach`] created, for the sandbox's `state.json`; [`detach`] removes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedInterface {
    pub netns: PathBuf,
    pub cni_ifindex: u32,
    pub cni_name: String,
    pub tap_name: String,
    pub tap_ifindex: u32,
    /// The CNI interface's `txqueuelen` before we added its ingress qdisc: the kernel gives a
    /// device with none (CNI's veths) the default of 1000 when a qdisc is added, and detach
    /// puts it back.
    #[serde(default)]
    pub cni_txqlen: Option<u32>,
}

/// Who else uses a network namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceUse {
    /// Processes other than this one with a thread in the namespace (a runc container that
    /// joined it, say).
    pub pids: Vec<u32>,
    /// husk taps already there: another husk sandbox uses the namespace.
    pub taps: Vec<String>,
}

impl NamespaceUse {
    pub fn is_shared(&self) -> bool {
        !self.pids.is_empty() || !self.taps.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(
        "Internetworking model {0:?} is not supported (husk supports \"tcfilter\" and \"none\")"
    )]
    UnsupportedModel(String),
    #[error("Cannot open the network namespace {netns}")]
    OpenNamespace {
        netns: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{netns} is not a network namespace")]
    NotNetworkNamespace { netns: PathBuf },
    #[error("Cannot listen on port {port} in the network namespace {netns}")]
    Listen {
        netns: PathBuf,
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error("Cannot enter the network namespace {netns}")]
    EnterNamespace {
        netns: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot list the processes in the network namespace {netns}")]
    ListProcesses {
        netns: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A netlink or tap operation failed; `op` says which ("add the ingress qdisc on eth0").
    #[error("Cannot {op} in {netns}")]
    Operation {
        netns: PathBuf,
        op: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "Cannot add the ingress qdisc on {iface} in {netns}: it already has one \
         (husk leaves other tc setups alone)"
    )]
    IngressQdiscExists { netns: PathBuf, iface: String },
    #[error("Interface {iface} (index {ifindex}) is no longer in {netns}")]
    InterfaceGone {
        netns: PathBuf,
        iface: String,
        ifindex: u32,
    },
    #[error("No free tap name in {netns} (tried tap0_husk to tap{}_husk)", MAX_TAPS - 1)]
    NoTapName { netns: PathBuf },
}

type Result<T> = std::result::Result<T, NetworkError>;

/// Taps per namespace we are ready to number.
const MAX_TAPS: u32 = 256;

/// Reads the namespace at `netns` (`/var/run/netns/x`, `/proc/PID/ns/net`): every interface
/// that is not loopback, not one of our taps and is Ethernet, with what the guest needs for it.
/// See `discover::routes_of` for which routes are kept.
pub fn discover(netns: &Path) -> Result<Vec<(CniInterface, GuestInterface)>> {
    let _span = tracing::debug_span!("discover", netns = %netns.display()).entered();
    netns::run_in(netns, || {
        let mut nl = Worker::netlink(netns)?;
        discover::interfaces(&mut nl, |op, source| operation(netns, op, source))
    })
}

/// Creates a tap beside `iface` and joins the two: sets the tap up with `iface`'s MTU, adds
/// an ingress qdisc on each and a redirect filter from each to the other. Returns the tap's
/// descriptor (close-on-exec: the caller passes it on to husk-vmm) and the record of what was
/// made. Refuses an interface that already has an ingress qdisc. On failure, removes what it
/// made.
///
/// The tap is not persistent: it goes away with the last descriptor of it (see `tap::create`),
/// so it never outlives both the shim's copy and husk-vmm's.
pub fn attach(netns: &Path, iface: &CniInterface) -> Result<(OwnedFd, AttachedInterface)> {
    let _span =
        tracing::debug_span!("attach", netns = %netns.display(), iface = %iface.name).entered();
    netns::run_in(netns, || Worker::new(netns)?.attach(iface))
}

/// Removes what [`attach`] made, checking each object by index and name first: the ingress
/// qdisc on the CNI interface (with our filter under it) and the tap (with its qdisc and
/// filter). Anything already gone is fine: the tap may have vanished with husk-vmm, the CNI
/// interface or the whole namespace with CNI's DEL (a path that no longer exists or is no
/// longer a namespace). The CNI interface is left as CNI made it.
pub fn detach(rec: &AttachedInterface) -> Result<()> {
    let _span = tracing::debug_span!("detach", netns = %rec.netns.display(), iface = %rec.cni_name)
        .entered();
    match netns::run_in(&rec.netns, || Worker::new(&rec.netns)?.detach(rec)) {
        Err(NetworkError::OpenNamespace { source, .. })
            if source.kind() == io::ErrorKind::NotFound =>
        {
            tracing::debug!("the namespace is gone, and everything in it");
            Ok(())
        }
        // Unmounted but not removed (`ip netns del` or containerd interrupted between the
        // two): the path no longer leads to the namespace, nor to anything of ours.
        Err(NetworkError::NotNetworkNamespace { .. }) => {
            tracing::debug!("the namespace path is no longer a namespace");
            Ok(())
        }
        other => other,
    }
}

/// TCP listeners on 127.0.0.1:`port` and [::1]:`port` in the namespace at `netns` (each that
/// can be bound; an error only when neither can).
pub fn listen_local(netns: &Path, port: u16) -> Result<Vec<std::net::TcpListener>> {
    netns::run_in(netns, || {
        let mut out = Vec::new();
        let mut last = None;
        for addr in [
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        ] {
            match std::net::TcpListener::bind(addr) {
                Ok(l) => out.push(l),
                Err(e) => last = Some(e),
            }
        }
        match (out.is_empty(), last) {
            (true, Some(source)) => Err(NetworkError::Listen {
                netns: netns.to_path_buf(),
                port,
                source,
            }),
            _ => Ok(out),
        }
    })
}

/// Who else uses the namespace at `netns`: processes other than this one (compared by the
/// namespace's device and inode, not by path) and husk taps.
pub fn namespace_users(netns: &Path) -> Result<NamespaceUse> {
    let id = netns::Namespace::open(netns)?
        .id()
        .map_err(|source| NetworkError::OpenNamespace {
            netns: netns.to_path_buf(),
            source,
        })?;
    let pids = netns::processes_in(id).map_err(|source| NetworkError::ListProcesses {
        netns: netns.to_path_buf(),
        source,
    })?;
    let taps = netns::run_in(netns, || {
        let mut nl = Worker::netlink(netns)?;
        let links = link::list(&mut nl).map_err(|e| operation(netns, "list the links", e))?;
        Ok(links
            .into_iter()
            .filter(|l| l.is_tun() && tap::is_ours(&l.name))
            .map(|l| l.name)
            .collect())
    })?;
    let found = NamespaceUse { pids, taps };
    tracing::debug!(netns = %netns.display(), ?found, "namespace users");
    Ok(found)
}

fn operation(netns: &Path, op: impl Into<String>, source: io::Error) -> NetworkError {
    NetworkError::Operation {
        netns: netns.to_path_buf(),
        op: op.into(),
        source,
    }
}

/// The work done on the thread inside the namespace.
struct Worker<'a> {
    netns: &'a Path,
    nl: Netlink,
}

impl<'a> Worker<'a> {
    fn netlink(netns: &Path) -> Result<Netlink> {
        Netlink::open().map_err(|e| operation(netns, "open a netlink socket", e))
    }

    fn new(netns: &'a Path) -> Result<Self> {
        Ok(Self {
            netns,
            nl: Self::netlink(netns)?,
        })
    }

    fn op(&self, op: impl Into<String>) -> impl FnOnce(io::Error) -> NetworkError + '_ {
        let op = op.into();
        move |source| operation(self.netns, op, source)
    }

    fn attach(&mut self, iface: &CniInterface) -> Result<(OwnedFd, AttachedInterface)> {
        let link = link::by_index(&mut self.nl, iface.ifindex)
            .map_err(self.op(format!("look up {}", iface.name)))?;
        if link.as_ref().map(|l| l.name.as_str()) != Some(iface.name.as_str()) {
            return Err(NetworkError::InterfaceGone {
                netns: self.netns.to_path_buf(),
                iface: iface.name.clone(),
                ifindex: iface.ifindex,
            });
        }
        // Refuse before creating anything; adding the qdisc exclusively below catches a race.
        if tc::has_ingress_qdisc(&mut self.nl, iface.ifindex).map_err(self.op("list the qdiscs"))? {
            return Err(self.ingress_exists(iface));
        }

        let cni_txqlen = link.as_ref().map(|l| l.txqlen);
        let (tap, tap_name) = self.create_tap()?;
        let mut cni_qdisc_added = false;
        match self.connect(iface, &tap_name, &mut cni_qdisc_added) {
            Ok(tap_ifindex) => {
                tracing::debug!(tap = %tap_name, tap_ifindex, "attached");
                Ok((
                    tap,
                    AttachedInterface {
                        netns: self.netns.to_path_buf(),
                        cni_ifindex: iface.ifindex,
                        cni_name: iface.name.clone(),
                        tap_name,
                        tap_ifindex,
                        cni_txqlen,
                    },
                ))
            }
            Err(e) => {
                tracing::debug!(error = %e, "attach failed; undoing it");
                if cni_qdisc_added {
                    if let Err(undo) = tc::delete_ingress_qdisc(&mut self.nl, iface.ifindex) {
                        tracing::warn!(
                            netns = %self.netns.display(), iface = %iface.name, error = %undo,
                            "cannot remove the ingress qdisc husk added"
                        );
                    }
                    self.restore_txqlen(iface.ifindex, &iface.name, cni_txqlen);
                }
                // Ours is the only descriptor of the tap: closing it deletes the tap, with its
                // qdisc and filter.
                drop(tap);
                Err(e)
            }
        }
    }

    /// Sets the tap up and adds the qdiscs and filters; returns the tap's index.
    fn connect(
        &mut self,
        iface: &CniInterface,
        tap_name: &str,
        cni_qdisc_added: &mut bool,
    ) -> Result<u32> {
        let tap_ifindex = link::by_name(&mut self.nl, tap_name)
            .map_err(self.op(format!("look up {tap_name}")))?
            .ok_or_else(|| {
                operation(
                    self.netns,
                    format!("look up {tap_name}"),
                    io::Error::from_raw_os_error(libc::ENODEV),
                )
            })?
            .index;

        if let Err(e) = link::disable_ipv6_addresses(&mut self.nl, tap_ifindex) {
            // Without IPv6 in the kernel there is nothing to disable.
            tracing::debug!(tap = %tap_name, error = %e, "cannot set addrgenmode none");
        }
        tracing::debug!(tap = %tap_name, mtu = iface.mtu, "setting the tap up");
        link::set_up(&mut self.nl, tap_ifindex, iface.mtu)
            .map_err(self.op(format!("set {tap_name} up with MTU {}", iface.mtu)))?;

        tracing::debug!(iface = %iface.name, "adding the ingress qdisc");
        match tc::add_ingress_qdisc(&mut self.nl, iface.ifindex) {
            Ok(()) => *cni_qdisc_added = true,
            Err(e) if husk_netlink::errno(&e) == Some(libc::EEXIST) => {
                return Err(self.ingress_exists(iface))
            }
            Err(e) => {
                return Err(operation(
                    self.netns,
                    format!("add the ingress qdisc on {}", iface.name),
                    e,
                ))
            }
        }
        tracing::debug!(tap = %tap_name, "adding the ingress qdisc");
        tc::add_ingress_qdisc(&mut self.nl, tap_ifindex)
            .map_err(self.op(format!("add the ingress qdisc on {tap_name}")))?;

        tracing::debug!(from = %iface.name, to = %tap_name, "adding the redirect filter");
        tc::add_redirect(&mut self.nl, iface.ifindex, tap_ifindex).map_err(self.op(format!(
            "add the filter redirecting {} to {tap_name}",
            iface.name
        )))?;
        tracing::debug!(from = %tap_name, to = %iface.name, "adding the redirect filter");
        tc::add_redirect(&mut self.nl, tap_ifindex, iface.ifindex).map_err(self.op(format!(
            "add the filter redirecting {tap_name} to {}",
            iface.name
        )))?;
        Ok(tap_ifindex)
    }

    /// Creates a tap with the first free `tap<N>_husk` name.
    fn create_tap(&mut self) -> Result<(OwnedFd, String)> {
        let taken: Vec<String> = link::list(&mut self.nl)
            .map_err(self.op("list the links"))?
            .into_iter()
            .map(|l| l.name)
            .collect();
        for n in 0..MAX_TAPS {
            let name = tap::name(n);
            if taken.contains(&name) {
                continue;
            }
            match tap::create(&name) {
                Ok(fd) => {
                    tracing::debug!(tap = %name, "created the tap");
                    return Ok((fd, name));
                }
                // Made by someone else since we listed the links.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => continue,
                Err(e) => return Err(operation(self.netns, format!("create the tap {name}"), e)),
            }
        }
        Err(NetworkError::NoTapName {
            netns: self.netns.to_path_buf(),
        })
    }

    fn ingress_exists(&self, iface: &CniInterface) -> NetworkError {
        NetworkError::IngressQdiscExists {
            netns: self.netns.to_path_buf(),
            iface: iface.name.clone(),
        }
    }

    /// Removes the CNI interface's ingress qdisc, then the tap; tries both, returns the first
    /// error.
    fn detach(&mut self, rec: &AttachedInterface) -> Result<()> {
        let cni = self.detach_cni(rec);
        let tap = self.detach_tap(rec);
        cni.and(tap)
    }

    fn detach_cni(&mut self, rec: &AttachedInterface) -> Result<()> {
        let link = link::by_index(&mut self.nl, rec.cni_ifindex)
            .map_err(self.op(format!("look up {}", rec.cni_name)))?;
        match link {
            None => tracing::debug!(iface = %rec.cni_name, "the CNI interface is gone"),
            Some(l) if l.name != rec.cni_name => tracing::debug!(
                iface = %rec.cni_name, now = %l.name,
                "the CNI interface's index now names another interface; leaving it alone"
            ),
            Some(l) => {
                // Ours: attach refuses an interface that already has one. Our filter goes
                // with it.
                let txqlen = l.txqlen;
                let op = format!("remove the ingress qdisc on {}", rec.cni_name);
                if tc::has_ingress_qdisc(&mut self.nl, rec.cni_ifindex)
                    .map_err(self.op("list the qdiscs"))?
                {
                    tracing::debug!(iface = %rec.cni_name, "removing the ingress qdisc");
                    match tc::delete_ingress_qdisc(&mut self.nl, rec.cni_ifindex) {
                        Err(e) if husk_netlink::errno(&e) != Some(libc::ENOENT) => {
                            return Err(operation(self.netns, op, e))
                        }
                        _ => {}
                    }
                }
                if rec.cni_txqlen.is_some_and(|q| q != txqlen) {
                    self.restore_txqlen(rec.cni_ifindex, &rec.cni_name, rec.cni_txqlen);
                }
            }
        }
        Ok(())
    }

    /// Puts back the transmit queue length the CNI interface had before our qdisc.
    fn restore_txqlen(&mut self, ifindex: u32, name: &str, txqlen: Option<u32>) {
        let Some(len) = txqlen else { return };
        if let Err(e) = link::set_txqlen(&mut self.nl, ifindex, len) {
            tracing::warn!(
                netns = %self.netns.display(), iface = %name, error = %e,
                "cannot restore the interface's txqueuelen"
            );
        }
    }

    fn detach_tap(&mut self, rec: &AttachedInterface) -> Result<()> {
        let link = link::by_index(&mut self.nl, rec.tap_ifindex)
            .map_err(self.op(format!("look up {}", rec.tap_name)))?;
        match link {
            None => tracing::debug!(tap = %rec.tap_name, "the tap is gone"),
            Some(l) if l.name != rec.tap_name || !l.is_tun() => tracing::debug!(
                tap = %rec.tap_name, now = %l.name,
                "the tap's index now names another interface; leaving it alone"
            ),
            Some(_) => {
                tracing::debug!(tap = %rec.tap_name, "deleting the tap");
                match link::delete(&mut self.nl, rec.tap_ifindex) {
                    Err(e) if husk_netlink::errno(&e) != Some(libc::ENODEV) => {
                        return Err(operation(
                            self.netns,
                            format!("delete the tap {}", rec.tap_name),
                            e,
                        ))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod test_net;
#[cfg(test)]
mod tests;
