//! The traffic-control pieces of the tcfilter model: an ingress qdisc on an interface and, under
//! it, a u32 filter that matches every frame and redirects it to the egress of another
//! interface (`mirred egress redirect`).
//!
//! u32 rather than matchall: both do the job, but u32 has been in every kernel for longer and
//! some (this project's test host among them) are built without `CONFIG_NET_CLS_MATCHALL`.

use std::io;

use husk_netlink::Netlink;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute,
    TcFilterU32Option, TcHandle, TcHeader, TcMessage, TcMirror, TcMirrorActionType, TcOption,
    TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

/// The ingress qdisc's handle, `ffff:`.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// Priority of our filter under the ingress qdisc (the qdisc is ours alone).
const FILTER_PRIORITY: u16 = 1;
/// `ETH_P_ALL`: the filter sees every protocol.
const ETH_P_ALL: u16 = 0x0003;

/// Adds an ingress qdisc on `ifindex`; fails with `EEXIST` if the interface already has one
/// (or a clsact qdisc, which takes the same place): we never modify someone else's.
pub(super) fn add_ingress_qdisc(nl: &mut Netlink, ifindex: u32) -> io::Result<()> {
    let message = TcMessage::from_parts(
        TcHeader {
            family: AddressFamily::Unspec,
            index: ifindex_i32(ifindex)?,
            handle: INGRESS_HANDLE,
            parent: TcHandle::INGRESS,
            info: 0,
        },
        vec![
            TcAttribute::Kind("ingress".to_string()),
            TcAttribute::Options(Vec::new()),
        ],
    );
    nl.request(
        RouteNetlinkMessage::NewQueueDiscipline(message),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// Deletes the ingress qdisc of `ifindex`, and with it every filter under it.
pub(super) fn delete_ingress_qdisc(nl: &mut Netlink, ifindex: u32) -> io::Result<()> {
    let message = TcMessage::from_parts(
        TcHeader {
            family: AddressFamily::Unspec,
            index: ifindex_i32(ifindex)?,
            handle: INGRESS_HANDLE,
            parent: TcHandle::INGRESS,
            info: 0,
        },
        Vec::new(),
    );
    nl.request(RouteNetlinkMessage::DelQueueDiscipline(message), 0)
}

/// Whether `ifindex` has an ingress (or clsact) qdisc.
pub(super) fn has_ingress_qdisc(nl: &mut Netlink, ifindex: u32) -> io::Result<bool> {
    let index = ifindex_i32(ifindex)?;
    let qdiscs = nl.dump(RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()))?;
    Ok(qdiscs.iter().any(|m| match m {
        RouteNetlinkMessage::NewQueueDiscipline(q) => {
            q.header.index == index && q.header.parent == TcHandle::INGRESS
        }
        _ => false,
    }))
}

/// Adds, under the ingress qdisc of `from`, a filter that redirects every frame to the egress
/// of `to`: what arrives on `from` leaves through `to`.
pub(super) fn add_redirect(nl: &mut Netlink, from: u32, to: u32) -> io::Result<()> {
    // One key with mask 0: every frame matches.
    let key = TcU32Key::default();
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![key];

    let mut mirror = TcMirror::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.tab = 1;
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".to_string()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];

    let message = TcMessage::from_parts(
        TcHeader {
            family: AddressFamily::Unspec,
            index: ifindex_i32(from)?,
            handle: TcHandle::UNSPEC,
            parent: INGRESS_HANDLE,
            // tcm_info of a filter: priority in the upper half, protocol (network order) in
            // the lower.
            info: (u32::from(FILTER_PRIORITY) << 16) | u32::from(ETH_P_ALL.to_be()),
        },
        vec![
            TcAttribute::Kind("u32".to_string()),
            TcAttribute::Options(vec![
                TcOption::U32(TcFilterU32Option::Selector(selector)),
                TcOption::U32(TcFilterU32Option::Action(vec![action])),
            ]),
        ],
    );
    nl.request(
        RouteNetlinkMessage::NewTrafficFilter(message),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

fn ifindex_i32(ifindex: u32) -> io::Result<i32> {
    i32::try_from(ifindex).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface index {ifindex} out of range"),
        )
    })
}
