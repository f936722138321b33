//! virtio-vsock, emulated in the VMM and exposed on the host as a Unix socket ("hybrid vsock"),
//! because there is no `/dev/vhost-vsock` on many hosts (ours included).
//!
//! The device's queues are served by one worker thread: the vCPU that notifies a queue only
//! wakes it through an eventfd. The worker reads guest packets from the TX queue, hands them to
//! the [`muxer::Muxer`], and fills RX buffers with what the muxer has for the guest.

mod conn;
pub mod muxer;
pub mod packet;
mod reset_queue;
mod uds;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::epoll::{EpollEvent, EventSet};

use super::queue::{self, Completion};
use super::worker::{EventHandler, Interest, QueueEvents, Worker, WorkerError};
use super::{ActivateError, DeviceState, Interrupt, VirtioDevice, TYPE_VSOCK};
use crate::vstate::memory::GuestMemory;
use muxer::{Muxer, MuxerError};
use packet::{read_guest_packet, write_host_packet, HDR_SIZE};

const NAME: &str = "vsock";
const RX: usize = 0;
const TX: usize = 1;
/// RX, TX and the event queue; only RX and TX notifications wake the worker.
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];
const NOTIFIED_QUEUES: usize = 2;

/// The worker's token for the muxer's own epoll (queue tokens are their indices).
pub const TOKEN_MUXER: u64 = 2;
/// The most muxer events handled per wake-up.
const MUXER_BATCH: usize = 64;

pub struct Vsock {
    cid: u64,
    uds_path: PathBuf,
    /// Created at construction so that a bad socket path fails before the guest boots; moved
    /// into the worker on activation.
    muxer: Option<Muxer>,
    queue_evts: QueueEvents,
    state: DeviceState<Worker<VsockHandler>>,
}

impl Vsock {
    pub fn new(cid: u64, uds_path: &Path) -> Result<Self, MuxerError> {
        Ok(Vsock {
            cid,
            uds_path: uds_path.into(),
            muxer: Some(Muxer::new(cid, uds_path)?),
            queue_evts: QueueEvents::new(NOTIFIED_QUEUES).map_err(MuxerError::Epoll)?,
            state: DeviceState::Inactive,
        })
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        super::read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
        _acked_features: u64,
    ) -> Result<(), ActivateError> {
        if self.state.is_activated() {
            return Err(ActivateError::AlreadyActive(NAME));
        }
        if queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::BadQueue(queues.len()));
        }
        let queue_evts = self
            .queue_evts
            .try_clone()
            .map_err(|e| ActivateError::Device(NAME, e))?;
        let muxer = self.muxer.take().ok_or_else(|| {
            ActivateError::Device(NAME, std::io::Error::other("no socket to serve"))
        })?;
        let handler = VsockHandler::new(mem, interrupt, queues, muxer, self.cid, queue_evts);
        let worker = Worker::spawn(NAME, handler).map_err(|e| ActivateError::Worker(NAME, e))?;
        self.state = DeviceState::Activated(worker);
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        if self.state.is_activated() {
            self.queue_evts.notify(index);
        }
    }

    fn reset(&mut self) {
        // The old muxer goes with its worker's handler, and removes its socket file.
        self.state.stop_worker();
        self.queue_evts.clear();
        if self.muxer.is_none() {
            // Connections of the old driver are gone; a fresh muxer serves the next.
            match Muxer::new(self.cid, &self.uds_path) {
                Ok(m) => self.muxer = Some(m),
                Err(e) => tracing::warn!(error = %e, "vsock cannot serve its socket again"),
            }
        }
    }

    fn shutdown(&mut self) {
        self.state.shut_down_worker();
        self.muxer = None;
    }
}

/// The activated device, on its worker thread: it reads guest packets from the TX queue, hands
/// them to the [`Muxer`], and fills RX buffers with what the muxer has for the guest.
///
/// Public for the fuzz targets, which drive it through [`EventHandler`] on their own thread.
#[doc(hidden)]
pub struct VsockHandler {
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    muxer: Muxer,
    cid: u64,
    queue_evts: QueueEvents,
    muxer_events: Vec<EpollEvent>,
}

impl EventHandler for VsockHandler {
    fn register(&mut self, interest: &Interest<'_>) -> Result<(), WorkerError> {
        self.queue_evts.register(interest)?;
        // The muxer keeps its host sockets in an epoll of its own, which is readable whenever
        // one of them is ready.
        interest.readable(self.muxer.epoll(), TOKEN_MUXER)
    }

    fn handle_event(&mut self, token: u64, _events: EventSet) -> Result<(), WorkerError> {
        if token == TOKEN_MUXER {
            return self.handle_muxer_events();
        }
        match self.queue_evts.consume(token) {
            Some(TX) => self.process_tx(),
            // New RX buffers: filled after this batch, like after any event.
            Some(_) => {}
            None => tracing::debug!(token, "vsock: unexpected worker event"),
        }
        Ok(())
    }

    fn batch_done(&mut self) {
        // Whatever happened may have produced packets for the guest.
        self.process_rx();
    }
}

impl VsockHandler {
    #[doc(hidden)]
    pub fn new(
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
        muxer: Muxer,
        cid: u64,
        queue_evts: QueueEvents,
    ) -> Self {
        VsockHandler {
            mem,
            interrupt,
            queues,
            muxer,
            cid,
            queue_evts,
            muxer_events: vec![EpollEvent::default(); MUXER_BATCH],
        }
    }

    fn handle_muxer_events(&mut self) -> Result<(), WorkerError> {
        let n = match self.muxer.epoll().wait(0, &mut self.muxer_events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(WorkerError::Device(e)),
        };
        for e in &self.muxer_events[..n] {
            self.muxer.handle_event(e.data(), e.events());
        }
        Ok(())
    }

    /// Takes every packet the guest queued on TX and hands the valid ones to the muxer.
    fn process_tx(&mut self) {
        let Some(queue) = self.queues.get_mut(TX) else {
            return;
        };
        let (mem, muxer, cid) = (&self.mem, &mut self.muxer, self.cid);
        queue::drain(queue, mem, &self.interrupt, |chain| {
            match chain.reader(mem) {
                Ok(mut reader) => {
                    let available = reader.available_bytes();
                    match read_guest_packet(&mut reader, available, cid) {
                        Ok(pkt) => muxer.handle_guest_packet(pkt),
                        Err(e) => tracing::debug!(error = %e, "vsock: dropped a guest packet"),
                    }
                }
                Err(e) => tracing::debug!(error = %e, "vsock: bad TX descriptor chain"),
            }
            Completion::Used(0)
        });
    }

    /// Fills the guest's RX buffers with what the muxer has for it.
    fn process_rx(&mut self) {
        let Some(queue) = self.queues.get_mut(RX) else {
            return;
        };
        let (mem, muxer) = (&self.mem, &mut self.muxer);
        queue::drain(queue, mem, &self.interrupt, |chain| {
            match chain.writer(mem) {
                Ok(mut writer) => {
                    let room = writer.available_bytes();
                    if room < HDR_SIZE {
                        // Too small for any packet: returned empty, which the driver discards,
                        // rather than left at the head of the queue for good.
                        tracing::debug!(room, "vsock: RX buffer smaller than a header");
                        return Completion::Used(0);
                    }
                    match muxer.next_packet_for_guest(room - HDR_SIZE) {
                        Some((hdr, data)) => {
                            let written = write_host_packet(&mut writer, room, hdr, &data);
                            Completion::Used(written.unwrap_or(0) as u32)
                        }
                        // Nothing to send: the buffer waits for the next packet.
                        None => Completion::NotNow,
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "vsock: bad RX descriptor chain");
                    Completion::Used(0)
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    use super::packet::{Header, HOST_CID, OP_REQUEST, OP_RST, OP_RW, TYPE_STREAM};
    use super::reset_queue::RESET_QUEUE_CAP;
    use super::*;
    use crate::vstate::memory;

    const RX_BUF: u64 = 0x8_0000;
    const GUEST_CID: u64 = 3;
    /// Where the tests put guest packets and RX buffers.
    const PACKETS: u64 = 0x10_0000;
    const RX_BUFS: u64 = 0x20_0000;

    fn socket_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("husk-vsockdev-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("v.sock")
    }

    fn wait_for_irq(irq: &EventFd) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if irq.read().is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    #[test]
    fn host_connect_reaches_the_guest_rx_queue_through_the_worker() {
        let path = socket_path("connect");
        let mut vsock = Vsock::new(3, &path).unwrap();
        let mem = memory::create(1 << 20).unwrap();
        let rx = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let tx = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
        let ev = MockSplitQueue::create(&mem, GuestAddress(0x2_0000), 16);
        rx.build_desc_chain(&[RawDescriptor::from(Descriptor::new(RX_BUF, 4096, 2, 0))])
            .unwrap();
        let queues = vec![
            rx.create_queue().unwrap(),
            tx.create_queue().unwrap(),
            ev.create_queue().unwrap(),
        ];
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        vsock.activate(mem.clone(), interrupt, queues, 0).unwrap();

        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"CONNECT 1234\n").unwrap();
        assert!(wait_for_irq(&irq), "the worker filled no RX buffer");
        let used = rx.used().ring().ref_at(0).unwrap().load();
        assert_eq!(used.len() as usize, HDR_SIZE);
        let mut hdr = [0u8; HDR_SIZE];
        mem.read_slice(&mut hdr, GuestAddress(RX_BUF)).unwrap();
        assert_eq!(u32::from_le_bytes(hdr[20..24].try_into().unwrap()), 1234);
        assert_eq!(
            u16::from_le_bytes(hdr[30..32].try_into().unwrap()),
            OP_REQUEST
        );

        // A reset ends the worker and serves the socket afresh; shutting down removes it.
        vsock.reset();
        assert!(!vsock.state.is_activated());
        assert!(vsock.muxer.is_some() && path.exists());
        vsock.shutdown();
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// A guest packet header from `src_port` to host port `dst_port`.
    fn guest_header(op: u16, src_port: u32, dst_port: u32) -> [u8; HDR_SIZE] {
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 0,
        }
        .to_bytes()
    }

    /// Puts `headers` in guest memory and makes each one a chain on `queue`.
    fn queue_packets(
        mem: &GuestMemory,
        queue: &MockSplitQueue<GuestMemory>,
        headers: &[[u8; HDR_SIZE]],
    ) {
        let descs: Vec<RawDescriptor> = headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let addr = PACKETS + i as u64 * 64;
                mem.write_slice(h, GuestAddress(addr)).unwrap();
                RawDescriptor::from(Descriptor::new(addr, HDR_SIZE as u32, 0, 0))
            })
            .collect();
        queue.add_desc_chains(&descs, 0).unwrap();
    }

    /// Posts RX buffers of the given sizes, `RX_BUFS` onwards, 4 KiB apart.
    fn post_rx_buffers(queue: &MockSplitQueue<GuestMemory>, sizes: &[u32]) {
        let descs: Vec<RawDescriptor> = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                RawDescriptor::from(Descriptor::new(RX_BUFS + i as u64 * 4096, len, 2, 0))
            })
            .collect();
        queue.add_desc_chains(&descs, 0).unwrap();
    }

    /// The header the device wrote into RX buffer `i`.
    fn rx_header(mem: &GuestMemory, i: u64) -> Header {
        let mut b = [0u8; HDR_SIZE];
        mem.read_slice(&mut b, GuestAddress(RX_BUFS + i * 4096))
            .unwrap();
        Header::parse(&b)
    }

    /// A device handler on the test's thread, serving the given queues.
    fn handler(name: &str, mem: &GuestMemory, queues: Vec<Queue>) -> VsockHandler {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        VsockHandler {
            mem: mem.clone(),
            interrupt: Arc::new(Interrupt::new(irq)),
            queues,
            muxer: Muxer::new(GUEST_CID, &socket_path(name)).unwrap(),
            cid: GUEST_CID,
            queue_evts: QueueEvents::new(NOTIFIED_QUEUES).unwrap(),
            muxer_events: vec![EpollEvent::default(); MUXER_BATCH],
        }
    }

    #[test]
    fn a_guest_flooding_tx_without_rx_buffers_gets_only_the_newest_resets() {
        let mem = memory::create(4 << 20).unwrap();
        // The mock places its used ring over the upper half of its available ring: the queues
        // are twice as large as the chains they carry, so that used entries clobber none.
        let rx = MockSplitQueue::create(&mem, GuestAddress(0), 64);
        let tx = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 1024);
        let ev = MockSplitQueue::create(&mem, GuestAddress(0x3_0000), 16);
        let queues = vec![
            rx.create_queue().unwrap(),
            tx.create_queue().unwrap(),
            ev.create_queue().unwrap(),
        ];
        let mut h = handler("txflood", &mem, queues);
        // Data for connections that do not exist, and not one RX buffer.
        let strays = RESET_QUEUE_CAP as u32 + 44;
        let packets: Vec<_> = (0..strays)
            .map(|port| guest_header(OP_RW, port, 7))
            .collect();
        queue_packets(&mem, &tx, &packets);
        h.process_tx();
        h.process_rx();
        assert_eq!(
            u32::from(tx.used().idx().load()),
            strays,
            "every packet was taken"
        );
        assert_eq!(h.muxer.queued_resets(), RESET_QUEUE_CAP);

        post_rx_buffers(&rx, &[4096; 16]);
        h.process_rx();
        assert_eq!(rx.used().idx().load(), 16);
        for i in 0..16 {
            let rst = rx_header(&mem, i);
            // The 44 oldest were dropped.
            assert_eq!((rst.op, rst.dst_port), (OP_RST, 44 + i as u32));
        }
        let _ = std::fs::remove_dir_all(socket_path("txflood").parent().unwrap());
    }

    #[test]
    fn an_rx_buffer_too_small_for_a_header_is_returned_empty() {
        let mem = memory::create(4 << 20).unwrap();
        let rx = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let tx = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
        let ev = MockSplitQueue::create(&mem, GuestAddress(0x2_0000), 16);
        let queues = vec![
            rx.create_queue().unwrap(),
            tx.create_queue().unwrap(),
            ev.create_queue().unwrap(),
        ];
        let mut h = handler("tinyrx", &mem, queues);
        queue_packets(&mem, &tx, &[guest_header(OP_RW, 1, 7)]);
        h.process_tx();
        post_rx_buffers(&rx, &[10, 4096]);
        h.process_rx();
        assert_eq!(rx.used().idx().load(), 2);
        assert_eq!(rx.used().ring().ref_at(0).unwrap().load().len(), 0);
        assert_eq!(
            rx.used().ring().ref_at(1).unwrap().load().len() as usize,
            HDR_SIZE
        );
        assert_eq!(rx_header(&mem, 1).op, OP_RST);
        let _ = std::fs::remove_dir_all(socket_path("tinyrx").parent().unwrap());
    }

    /// CPU time (user and system, in clock ticks) of each thread of ours called `name`.
    fn thread_cpu_ticks(name: &str) -> std::collections::BTreeMap<u32, u64> {
        let mut ticks = std::collections::BTreeMap::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let dir = task.path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
            if comm.trim() != name {
                continue;
            }
            // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let (Some(utime), Some(stime)) = (fields.get(11), fields.get(12)) else {
                continue;
            };
            let tid = task.file_name().to_string_lossy().parse().unwrap_or(0);
            ticks.insert(
                tid,
                utime.parse::<u64>().unwrap_or(0) + stime.parse::<u64>().unwrap_or(0),
            );
        }
        ticks
    }

    #[test]
    fn host_data_waiting_for_rx_buffers_leaves_the_worker_idle() {
        let path = socket_path("idle");
        let listener =
            std::os::unix::net::UnixListener::bind(format!("{}_77", path.display())).unwrap();
        let mut vsock = Vsock::new(GUEST_CID, &path).unwrap();
        let mem = memory::create(4 << 20).unwrap();
        let rx = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let tx = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
        let ev = MockSplitQueue::create(&mem, GuestAddress(0x2_0000), 16);
        let queues = vec![
            rx.create_queue().unwrap(),
            tx.create_queue().unwrap(),
            ev.create_queue().unwrap(),
        ];
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        vsock
            .activate(mem.clone(), Arc::new(Interrupt::new(irq)), queues, 0)
            .unwrap();

        // The guest connects to host port 77 and never posts an RX buffer; the host writes.
        queue_packets(&mem, &tx, &[guest_header(OP_REQUEST, 5000, 77)]);
        vsock.queue_notify(TX as u16);
        let (mut host_side, _) = listener.accept().unwrap();
        host_side
            .write_all(b"for a guest that does not read")
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let before = thread_cpu_ticks(NAME);
        std::thread::sleep(Duration::from_secs(1));
        let after = thread_cpu_ticks(NAME);
        let busy: u64 = after
            .iter()
            .filter_map(|(tid, t)| before.get(tid).map(|b| t.saturating_sub(*b)))
            .sum();
        assert!(!after.is_empty(), "no worker thread found");
        // A spinning worker would use about 100 ticks of this second.
        assert!(
            busy < 20,
            "the worker used {busy} ticks of CPU while waiting"
        );
        vsock.shutdown();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
