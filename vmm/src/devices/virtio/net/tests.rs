//! The device with its rings in plain guest memory and a real tap (tests that need the tap skip
//! without root, saying so): frames both ways, merged RX buffers, a guest without RX buffers,
//! malformed chains, the TX burst bound, the worker, and the worker under its seccomp filter.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_net::{VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::handler::{NetHandler, TOKEN_TAP, TX_BURST};
use super::test_utils::{inject_on, readable, test_frame, with_header, TestTap};
use super::*;
use crate::devices::virtio::worker::{EventHandler, Interest};
use crate::devices::virtio::{read_config_bytes, VirtioDevice};
use crate::jail::seccomp::{self, ThreadKind, EXIT_FORBIDDEN_SYSCALL};
use crate::vstate::memory;

const WRITE: u16 = 2;
const NEXT: u16 = 1;
const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
/// The queues and the guest's buffers.
const RX_QUEUE: u64 = 0;
const TX_QUEUE: u64 = 0x1_0000;
/// RX buffer i is at `RX_BUFS + i * 64 KiB`.
const RX_BUFS: u64 = 0x10_0000;
const TX_DATA: u64 = 0x30_0000;
const WAIT: Duration = Duration::from_secs(5);

fn guest_memory() -> GuestMemory {
    memory::create(4 << 20).unwrap()
}

fn rx_buf(i: u16) -> u64 {
    RX_BUFS + u64::from(i) * 0x1_0000
}

/// Posts one single-buffer chain per size, descriptors (and buffers) `first` onwards.
fn post_rx(vq: &MockSplitQueue<GuestMemory>, first: u16, sizes: &[u32]) {
    let descs: Vec<_> = (first..)
        .zip(sizes)
        .map(|(i, &len)| RawDescriptor::from(Descriptor::new(rx_buf(i), len, WRITE, 0)))
        .collect();
    vq.add_desc_chains(&descs, first).unwrap();
}

/// Builds TX chains: guest bytes go to `TX_DATA` onwards, descriptors from index 0.
struct TxChains<'a> {
    mem: &'a GuestMemory,
    vq: &'a MockSplitQueue<'a, GuestMemory>,
    desc: u16,
    addr: u64,
}

impl<'a> TxChains<'a> {
    fn new(mem: &'a GuestMemory, vq: &'a MockSplitQueue<'a, GuestMemory>) -> Self {
        TxChains {
            mem,
            vq,
            desc: 0,
            addr: TX_DATA,
        }
    }

    /// One chain with a descriptor per piece, each piece's bytes in guest memory.
    fn add(&mut self, pieces: &[&[u8]]) {
        let descs: Vec<_> = pieces
            .iter()
            .map(|p| (p.len() as u32, 0, Some(*p)))
            .collect();
        self.add_raw(&descs);
    }

    /// One chain of (length, flags, bytes to put there) descriptors; without bytes, the
    /// descriptor points at `TX_DATA` as it is.
    fn add_raw(&mut self, descs: &[(u32, u16, Option<&[u8]>)]) {
        let start = self.desc;
        let raw: Vec<_> = descs
            .iter()
            .enumerate()
            .map(|(j, &(len, flags, bytes))| {
                let addr = match bytes {
                    Some(b) => {
                        let a = self.addr;
                        self.mem.write_slice(b, GuestAddress(a)).unwrap();
                        self.addr += b.len() as u64;
                        a
                    }
                    None => TX_DATA,
                };
                let last = j + 1 == descs.len();
                let next = start + j as u16 + 1;
                let flags = if last { flags } else { flags | NEXT };
                RawDescriptor::from(Descriptor::new(
                    addr,
                    len,
                    flags,
                    if last { 0 } else { next },
                ))
            })
            .collect();
        self.vq.add_desc_chains(&raw, start).unwrap();
        self.desc += descs.len() as u16;
    }
}

fn used(vq: &MockSplitQueue<GuestMemory>, i: usize) -> (u32, u32) {
    let e = vq.used().ring().ref_at(i).unwrap().load();
    (e.id(), e.len())
}

fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

fn num_buffers(mem: &GuestMemory, first_buf: u16) -> u16 {
    let hdr = read(mem, rx_buf(first_buf), VNET_HDR);
    u16::from_le_bytes([hdr[10], hdr[11]])
}

const VNET_HDR: usize = tap::VNET_HDR_LEN;

/// A handler on the test's thread over the mock queues and the test tap.
fn handler(
    mem: &GuestMemory,
    rx: &MockSplitQueue<GuestMemory>,
    tx: &MockSplitQueue<GuestMemory>,
    t: &TestTap,
    mergeable: bool,
) -> (NetHandler, EventFd) {
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let h = NetHandler::new(
        mem.clone(),
        Arc::new(Interrupt::new(irq.try_clone().unwrap())),
        Rx::new(rx.create_queue().unwrap(), mergeable),
        tx.create_queue().unwrap(),
        t.tap.try_clone().unwrap(),
        QueueEvents::new(2).unwrap(),
        FEATURES,
    );
    (h, irq)
}

fn queues(
    mem: &GuestMemory,
) -> (
    MockSplitQueue<'_, GuestMemory>,
    MockSplitQueue<'_, GuestMemory>,
) {
    (
        MockSplitQueue::create(mem, GuestAddress(RX_QUEUE), 16),
        MockSplitQueue::create(mem, GuestAddress(TX_QUEUE), 256),
    )
}

#[test]
fn features_and_config_space() {
    let f = features(None);
    for bit in [
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_HOST_UFO,
        VIRTIO_NET_F_MRG_RXBUF,
    ] {
        assert_ne!(f & (1 << bit), 0, "feature bit {bit}");
    }
    assert_ne!(f & VIRTIO_RING_F_EVENT_IDX, 0);
    for bit in [VIRTIO_NET_F_MTU, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ] {
        assert_eq!(f & (1 << bit), 0, "feature bit {bit}");
    }
    assert_ne!(features(Some(1400)) & (1 << VIRTIO_NET_F_MTU), 0);

    let c = config_space(MAC, Some(1400));
    let field = |offset: u64, len: usize| {
        let mut v = vec![0xaa; len];
        read_config_bytes(&c, offset, &mut v);
        v
    };
    assert_eq!(field(0, 6), MAC.0);
    assert_eq!(field(6, 2), [1, 0], "link up");
    assert_eq!(field(8, 2), [1, 0], "one queue pair");
    assert_eq!(field(10, 2), 1400u16.to_le_bytes());
    assert_eq!(field(12, 4), [0; 4], "beyond mtu: zeros");
    assert_eq!(field(10, 4), [0; 4], "straddling the end: zeros");
    assert_eq!(field(u64::MAX, 2), [0; 2]);
    assert_eq!(&config_space(MAC, None)[10..], &[0, 0]);
}

#[test]
fn a_device_on_a_tap_describes_itself() {
    let Some(t) = TestTap::new() else { return };
    let net = Net::new(&NetConfig {
        tap: TapSource::Fd(t.tap.as_raw_fd()),
        mac: MAC,
        mtu: Some(9000),
    })
    .unwrap();
    assert_eq!(net.device_type(), TYPE_NET);
    assert_eq!(net.queue_max_sizes(), &[256, 256]);
    assert_ne!(net.features() & (1 << VIRTIO_NET_F_MTU), 0);
    let mut mac = [0u8; 6];
    net.read_config(0, &mut mac);
    assert_eq!(mac, MAC.0);
    let mut mtu = [0u8; 2];
    net.read_config(10, &mut mtu);
    assert_eq!(u16::from_le_bytes(mtu), 9000);
}

#[test]
fn open_taps_opens_names_and_checks_descriptors_before_the_jail() {
    let Some(t) = TestTap::new() else { return };
    let named = super::test_utils::tap_name();
    let card = |tap: TapSource, last: u8| NetConfig {
        tap,
        mac: MacAddr([0x52, 0x54, 0, 0, 0, last]),
        mtu: None,
    };
    let mut nets = vec![
        card(TapSource::Fd(t.tap.as_raw_fd()), 1),
        card(TapSource::Name(named.clone()), 2),
    ];
    open_taps(&mut nets).unwrap();
    let names: Vec<_> = nets
        .iter()
        .map(|n| match &n.tap {
            TapSource::Open(tap) => tap.name().to_string(),
            other => panic!("not opened: {other:?}"),
        })
        .collect();
    assert_eq!(names, [t.tap.name().to_string(), named]);

    let null = std::fs::File::open("/dev/null").unwrap();
    let mut nets = vec![card(TapSource::Fd(null.as_raw_fd()), 1)];
    assert!(matches!(
        open_taps(&mut nets),
        Err(NetError::Tap(TapError::NotATap(..)))
    ));
    let dup = t.tap.try_clone().unwrap();
    let mut nets = vec![
        card(TapSource::Fd(t.tap.as_raw_fd()), 1),
        card(TapSource::Fd(dup.as_raw_fd()), 2),
    ];
    assert_eq!(
        open_taps(&mut nets).unwrap_err().to_string(),
        format!("Two --net devices use tap={}", t.tap.name())
    );
}

#[test]
fn a_frame_in_several_descriptors_reaches_the_tap() {
    let Some(t) = TestTap::new() else { return };
    let mem = guest_memory();
    let (rxq, txq) = queues(&mem);
    let (mut h, irq) = handler(&mem, &rxq, &txq, &t, true);
    let frame = test_frame(1000, 1);
    let chain = with_header(&frame);
    // The header split in two, the frame in two more.
    TxChains::new(&mem, &txq).add(&[&chain[..5], &chain[5..16], &chain[16..400], &chain[400..]]);
    h.process_tx();
    assert_eq!(txq.used().idx().load(), 1);
    assert_eq!(used(&txq, 0), (0, 0));
    assert_eq!(irq.read().unwrap(), 1);
    assert_eq!(t.capture(WAIT), Some(frame));
}

#[test]
fn malformed_tx_chains_are_dropped_and_returned() {
    let Some(t) = TestTap::new() else { return };
    let mem = guest_memory();
    let (rxq, txq) = queues(&mem);
    let (mut h, _irq) = handler(&mem, &rxq, &txq, &t, true);
    let mut chains = TxChains::new(&mem, &txq);
    let bad = with_header(&test_frame(100, 9));
    let hdr = &bad[..VNET_HDR];
    // A device-writable piece.
    chains.add_raw(&[(12, 0, Some(hdr)), (100, WRITE, Some(&bad[VNET_HDR..]))]);
    // Larger than a frame and its header (in guest memory all the same).
    chains.add_raw(&[(12, 0, Some(hdr)), (40_000, 0, None), (40_000, 0, None)]);
    // Outside guest memory.
    let mut raw = [RawDescriptor::from(Descriptor::new(0x4000_0000, 112, 0, 0))];
    txq.add_desc_chains(&raw, chains.desc).unwrap();
    chains.desc += 1;
    // Shorter than a header.
    chains.add(&[&hdr[..8]]);
    // And a good one.
    let good = test_frame(64, 2);
    chains.add(&[&with_header(&good)]);
    h.process_tx();
    assert_eq!(txq.used().idx().load(), 5, "every chain is returned");
    for i in 0..5 {
        assert_eq!(used(&txq, i).1, 0);
    }
    assert_eq!(t.capture(WAIT), Some(good), "only the good frame got out");
    // A chain whose descriptors loop forever: virtio-queue ends it; it is returned too.
    raw[0] = RawDescriptor::from(Descriptor::new(TX_DATA, 12, NEXT, chains.desc));
    txq.add_desc_chains(&raw, chains.desc).unwrap();
    h.process_tx();
    assert_eq!(txq.used().idx().load(), 6);
}

#[test]
fn a_tx_burst_is_bounded_and_the_rest_follows() {
    let Some(t) = TestTap::new() else { return };
    let mem = guest_memory();
    let (rxq, txq) = queues(&mem);
    let (mut h, _irq) = handler(&mem, &rxq, &txq, &t, true);
    let mut chains = TxChains::new(&mem, &txq);
    let frame = with_header(&test_frame(60, 3));
    for _ in 0..100 {
        chains.add(&[&frame]);
    }
    h.process_tx();
    assert_eq!(usize::from(txq.used().idx().load()), TX_BURST);
    // The worker woke itself for the rest.
    assert_eq!(h.queue_evts.consume(TX as u64), Some(TX));
    h.process_tx();
    assert_eq!(txq.used().idx().load(), 100);
    for _ in 0..100 {
        assert!(t.capture(WAIT).is_some());
    }
}

#[test]
fn a_frame_from_the_tap_fills_one_buffer() {
    let Some(t) = TestTap::new() else { return };
    let mem = guest_memory();
    let (rxq, txq) = queues(&mem);
    let (mut h, irq) = handler(&mem, &rxq, &txq, &t, true);
    post_rx(&rxq, 0, &[2048]);
    let frame = test_frame(1000, 4);
    t.inject(&frame);
    assert!(readable(t.tap.as_raw_fd(), WAIT));
    h.process_rx().unwrap();
    assert_eq!(rxq.used().idx().load(), 1);
    assert_eq!(used(&rxq, 0), (0, (VNET_HDR + frame.len()) as u32));
    assert_eq!(num_buffers(&mem, 0), 1);
    assert_eq!(read(&mem, rx_buf(0) + VNET_HDR as u64, frame.len()), frame);
    assert_eq!(irq.read().unwrap(), 1);
}

#[test]
fn a_large_frame_from_the_tap_spans_merged_buffers() {
    let Some(t) = TestTap::new() else { return };
    let mem = guest_memory();
    let (rxq, txq) = queues(&mem);
    let (mut h, _irq) = handler(&mem, &rxq, &txq, &t, true);
    post_rx(&rxq, 0, &[512, 512, 512, 512]);
    let frame = test_frame(1400, 5); // 1426 bytes with the header: three buffers
    t.inject(&frame);
    assert!(readable(t.tap.as_raw_fd(), WAIT));
    h.process_rx().unwrap();
    assert_eq!(rxq.used().idx().load(), 3);
    assert_eq!(num_buffers(&mem, 0), 3);
    let lens: Vec<u32> = (0..3).map(|i| used(&rxq, i).1).collect();
    assert_eq!(lens, [512, 512, 402]);
    let mut got = read(&mem, rx_buf(0), 512);
    got.extend(read(&mem, rx_buf(1), 512));
    got.extend(read(&mem, rx_buf(2), 402));
    assert_eq!(&got[VNET_HDR..], &frame[..]);
}

fn tap_events(epoll: &Epoll) -> usize {
    let mut events = [EpollEvent::default(); 8];
    let n = epoll.wait(0, &mut events).unwrap();
    events[..n].iter().filter(|e| e.data() == TOKEN_TAP).count()
}

#[test]
fn without_rx_buffers_the_tap_is_not_watched_and_no_frame_is_lost() {
    let Some(t) = TestTap::new() else { return };
    let mem = guest_memory();
    let (rxq, txq) = queues(&mem);
    let (mut h, irq) = handler(&mem, &rxq, &txq, &t, true);
    let epoll = Arc::new(Epoll::new().unwrap());
    h.register(&Interest::new(&epoll)).unwrap();
    let (first, second) = (test_frame(300, 6), test_frame(200, 7));
    t.inject(&first);
    t.inject(&second);
    assert!(readable(t.tap.as_raw_fd(), WAIT));
    assert_eq!(tap_events(&epoll), 1, "the tap is watched at first");

    // The guest has posted nothing: one frame waits in the device, the other in the tap.
    h.process_rx().unwrap();
    assert!(h.rx.has_pending());
    assert!(!h.tap_watch.as_ref().unwrap().is_watching());
    assert!(
        readable(t.tap.as_raw_fd(), Duration::ZERO),
        "a frame is still queued"
    );
    assert_eq!(tap_events(&epoll), 0, "but it wakes nobody");
    assert!(irq.read().is_err());

    // Buffers arrive and the guest notifies: both frames, in order, and the tap watched again.
    post_rx(&rxq, 0, &[2048, 2048]);
    h.queue_evts.notify(RX as u16);
    h.handle_event(RX as u64, EventSet::IN).unwrap();
    assert_eq!(rxq.used().idx().load(), 2);
    assert_eq!(read(&mem, rx_buf(0) + VNET_HDR as u64, first.len()), first);
    assert_eq!(
        read(&mem, rx_buf(1) + VNET_HDR as u64, second.len()),
        second
    );
    assert!(h.tap_watch.as_ref().unwrap().is_watching());
    assert_eq!(tap_events(&epoll), 0, "the tap is empty");
    t.inject(&first);
    assert!(readable(t.tap.as_raw_fd(), WAIT));
    assert_eq!(tap_events(&epoll), 1);
}

#[test]
fn a_frame_too_large_for_a_guest_without_merged_buffers_is_dropped() {
    let Some(t) = TestTap::new() else { return };
    let mem = guest_memory();
    let (rxq, txq) = queues(&mem);
    let (mut h, _irq) = handler(&mem, &rxq, &txq, &t, false);
    post_rx(&rxq, 0, &[512]);
    let (big, small) = (test_frame(1000, 8), test_frame(100, 9));
    t.inject(&big);
    t.inject(&small);
    assert!(readable(t.tap.as_raw_fd(), WAIT));
    h.process_rx().unwrap();
    // The big one was dropped; the small one took the buffer.
    assert_eq!(rxq.used().idx().load(), 1);
    assert_eq!(used(&rxq, 0), (0, (VNET_HDR + small.len()) as u32));
    assert_eq!(read(&mem, rx_buf(0) + VNET_HDR as u64, small.len()), small);
    assert!(!h.rx.has_pending());
}

#[test]
fn a_tap_that_fails_stops_rx_but_tx_chains_still_come_back() {
    let Some(t) = TestTap::new() else { return };
    let mem = guest_memory();
    let (rxq, txq) = queues(&mem);
    let (mut h, _irq) = handler(&mem, &rxq, &txq, &t, true);
    let epoll = Arc::new(Epoll::new().unwrap());
    h.register(&Interest::new(&epoll)).unwrap();
    h.handle_event(TOKEN_TAP, EventSet::ERROR).unwrap();
    assert!(h.tap_failed);
    assert!(!h.tap_watch.as_ref().unwrap().is_watching());
    post_rx(&rxq, 0, &[2048]);
    t.inject(&test_frame(100, 1));
    h.process_rx().unwrap();
    assert_eq!(rxq.used().idx().load(), 0);
    TxChains::new(&mem, &txq).add(&[&with_header(&test_frame(60, 2))]);
    h.process_tx();
    assert_eq!(txq.used().idx().load(), 1);
}

/// CPU time (user and system, in clock ticks) of our threads called `name`, by thread id.
fn thread_cpu_ticks(name: &str) -> std::collections::BTreeMap<u32, u64> {
    let mut ticks = std::collections::BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if comm.trim() != name {
            continue;
        }
        // After the command: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let tid = task.file_name().to_string_lossy().parse().unwrap_or(0);
        ticks.insert(tid, tick(11) + tick(12));
    }
    ticks
}

fn wait_until(cond: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

fn wait_for_irq(irq: &EventFd) -> bool {
    wait_until(|| irq.read().is_ok())
}

#[test]
fn the_worker_idles_while_frames_wait_for_buffers_then_serves_both_ways() {
    let Some(t) = TestTap::new() else { return };
    let mem = guest_memory();
    let (rxq, txq) = queues(&mem);
    let mut net = Net::new(&NetConfig {
        tap: TapSource::Open(Arc::new(t.tap.try_clone().unwrap())),
        mac: MAC,
        mtu: None,
    })
    .unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
    let queues = vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()];
    net.activate(mem.clone(), interrupt.clone(), queues, FEATURES)
        .unwrap();
    assert!(matches!(
        net.activate(mem.clone(), interrupt.clone(), Vec::new(), 0),
        Err(ActivateError::AlreadyActive(_))
    ));

    // Frames keep coming; the guest posts no buffers.
    for seed in 0..20 {
        t.inject(&test_frame(500, seed));
    }
    std::thread::sleep(Duration::from_millis(100));
    let before = thread_cpu_ticks(NAME);
    std::thread::sleep(Duration::from_secs(1));
    let after = thread_cpu_ticks(NAME);
    assert!(!after.is_empty(), "no worker thread found");
    let busy: u64 = after
        .iter()
        .filter_map(|(tid, t)| before.get(tid).map(|b| t.saturating_sub(*b)))
        .sum();
    // A spinning worker would use about 100 ticks of that second.
    assert!(busy < 20, "the worker used {busy} ticks while waiting");
    assert!(irq.read().is_err());

    // Buffers: the first frame comes through, none lost.
    post_rx(&rxq, 0, &[2048]);
    net.queue_notify(RX as u16);
    assert!(wait_for_irq(&irq));
    assert_eq!(
        read(&mem, rx_buf(0) + VNET_HDR as u64, 514),
        test_frame(500, 0)
    );

    let frame = test_frame(80, 42);
    TxChains::new(&mem, &txq).add(&[&with_header(&frame)]);
    net.queue_notify(TX as u16);
    assert_eq!(t.capture(WAIT), Some(frame));
    assert!(wait_until(|| txq.used().idx().load() == 1));

    net.reset();
    assert!(!net.state.is_activated());
    // A new activation (the guest's driver reloaded) serves again, from where the tap is.
    let (rxq2, txq2) = (
        MockSplitQueue::create(&mem, GuestAddress(0x2_0000), 16),
        MockSplitQueue::create(&mem, GuestAddress(0x3_0000), 16),
    );
    post_rx(&rxq2, 0, &[2048]);
    let queues = vec![rxq2.create_queue().unwrap(), txq2.create_queue().unwrap()];
    net.activate(mem.clone(), interrupt, queues, FEATURES)
        .unwrap();
    net.queue_notify(RX as u16);
    assert!(wait_until(|| rxq2.used().idx().load() == 1));
    net.shutdown();
}

#[test]
fn the_worker_runs_under_its_seccomp_filter() {
    let Some(t) = TestTap::new() else { return };
    let mem = guest_memory();
    let (rxq, txq) = queues(&mem);
    post_rx(&rxq, 0, &[1024, 1024]);
    let out = test_frame(300, 11);
    TxChains::new(&mem, &txq).add(&[&with_header(&out)[..20], &with_header(&out)[20..]]);
    let inbound = test_frame(1500, 12);
    let mut net = Net::new(&NetConfig {
        tap: TapSource::Fd(t.tap.as_raw_fd()),
        mac: MAC,
        mtu: None,
    })
    .unwrap();
    let queues = vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()];
    let inject = t.inject_fd();
    let (child_mem, child_inbound) = (mem.clone(), inbound.clone());

    let (code, err) = crate::jail::seccomp::test_support::in_child(move || {
        // As in the VMM: the spawner carries the worker filter, this thread a vCPU's, and the
        // device is activated from here.
        seccomp::install_sigsys_handler().unwrap();
        seccomp::start_device_spawner().unwrap();
        ThreadKind::Vcpu.install().unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        net.activate(child_mem, interrupt, queues, FEATURES)
            .unwrap();
        net.queue_notify(TX as u16);
        assert!(wait_for_irq(&irq), "no TX interrupt");
        inject_on(inject, &child_inbound);
        assert!(wait_for_irq(&irq), "no RX interrupt");
        net.reset();
    });
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("seccomp"), "{err}");
    assert_ne!(code, EXIT_FORBIDDEN_SYSCALL);
    // The child's guest memory is ours too (one shared memfd).
    assert_eq!(txq.used().idx().load(), 1);
    assert_eq!(rxq.used().idx().load(), 2);
    assert_eq!(num_buffers(&mem, 0), 2);
    let mut got = read(&mem, rx_buf(0), 1024);
    got.extend(read(&mem, rx_buf(1), VNET_HDR + inbound.len() - 1024));
    assert_eq!(&got[VNET_HDR..], &inbound[..]);
    assert_eq!(t.capture(WAIT), Some(out));
}
