//! virtio-vsock, emulated in the VMM and exposed on the host as a Unix socket ("hybrid vsock"),
//! because there is no `/dev/vhost-vsock` on many hosts (ours included).
//!
//! The device's queues are served by one worker thread: the vCPU that notifies a queue only
//! wakes it through an eventfd. The worker reads guest packets from the TX queue, hands them to
//! the [`muxer::Muxer`], and fills RX buffers with what the muxer has for the guest.

pub mod muxer;
pub mod packet;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, Interrupt, VirtioDevice, INT_VRING, TYPE_VSOCK};
use crate::vstate::memory::GuestMemory;
use muxer::{Muxer, MuxerError};
use packet::{read_guest_packet, write_host_packet, HDR_SIZE};

const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];

const TOKEN_RX: u64 = 0;
const TOKEN_TX: u64 = 1;
const TOKEN_STOP: u64 = 2;

pub struct Vsock {
    cid: u64,
    uds_path: PathBuf,
    /// Created at construction so that a bad socket path fails before the guest boots; moved
    /// into the worker on activation.
    muxer: Option<Muxer>,
    queue_evts: [EventFd; 2],
    stop_evt: EventFd,
    worker: Option<JoinHandle<Muxer>>,
}

impl Vsock {
    pub fn new(cid: u64, uds_path: &Path) -> Result<Self, MuxerError> {
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(MuxerError::Epoll);
        Ok(Vsock {
            cid,
            uds_path: uds_path.into(),
            muxer: Some(Muxer::new(cid, uds_path)?),
            queue_evts: [evt()?, evt()?],
            stop_evt: evt()?,
            worker: None,
        })
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            let _ = self.stop_evt.write(1);
            match worker.join() {
                Ok(muxer) => {
                    // Connections of the old driver are gone; a fresh muxer serves the next.
                    drop(muxer);
                    self.muxer = Muxer::new(self.cid, &self.uds_path).ok();
                }
                Err(_) => tracing::error!("vsock worker panicked"),
            }
        }
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
        let muxer = self.muxer.take().ok_or_else(|| {
            ActivateError::Device("vsock", std::io::Error::other("no socket to serve"))
        })?;
        let clone = |e: &EventFd| e.try_clone().map_err(|e| ActivateError::Device("vsock", e));
        let worker = Worker {
            mem,
            interrupt,
            queues,
            muxer,
            cid: self.cid,
            rx_evt: clone(&self.queue_evts[RX])?,
            tx_evt: clone(&self.queue_evts[TX])?,
            stop_evt: clone(&self.stop_evt)?,
        };
        worker
            .register()
            .map_err(|e| ActivateError::Device("vsock", e))?;
        let handle = std::thread::Builder::new()
            .name("vsock".into())
            .spawn(move || worker.run())
            .map_err(|e| ActivateError::Device("vsock", e))?;
        self.worker = Some(handle);
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        if let Some(evt) = self.queue_evts.get(usize::from(index)) {
            let _ = evt.write(1);
        }
    }

    fn reset(&mut self) {
        self.stop_worker();
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

struct Worker {
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    muxer: Muxer,
    cid: u64,
    rx_evt: EventFd,
    tx_evt: EventFd,
    stop_evt: EventFd,
}

impl Worker {
    fn register(&self) -> std::io::Result<()> {
        let epoll = self.muxer.epoll();
        for (fd, token) in [
            (&self.rx_evt, TOKEN_RX),
            (&self.tx_evt, TOKEN_TX),
            (&self.stop_evt, TOKEN_STOP),
        ] {
            epoll.ctl(
                ControlOperation::Add,
                std::os::fd::AsRawFd::as_raw_fd(fd),
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        Ok(())
    }

    fn run(mut self) -> Muxer {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let n = match self.muxer.epoll().wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "vsock event loop failed");
                    return self.muxer;
                }
            };
            for e in &events[..n] {
                match e.data() {
                    TOKEN_STOP => return self.muxer,
                    TOKEN_RX => {
                        let _ = self.rx_evt.read();
                    }
                    TOKEN_TX => {
                        let _ = self.tx_evt.read();
                        self.process_tx();
                    }
                    token => self.muxer.handle_event(token, e.events()),
                }
            }
            // Whatever happened may have produced packets for the guest.
            self.process_rx();
        }
    }

    /// Takes every packet the guest queued on TX and hands the valid ones to the muxer.
    fn process_tx(&mut self) {
        let mem = &self.mem;
        let queue = &mut self.queues[TX];
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match chain.reader(mem) {
                Ok(mut reader) => {
                    let available = reader.available_bytes();
                    match read_guest_packet(&mut reader, available, self.cid) {
                        Ok(pkt) => self.muxer.handle_guest_packet(pkt),
                        Err(e) => tracing::debug!(error = %e, "vsock: dropped a guest packet"),
                    }
                }
                Err(e) => tracing::debug!(error = %e, "vsock: bad TX descriptor chain"),
            }
            if queue.add_used(mem, head, 0).is_err() {
                break;
            }
            used = true;
        }
        if used && queue.needs_notification(mem).unwrap_or(true) {
            self.interrupt.signal(INT_VRING);
        }
    }

    /// Fills the guest's RX buffers with what the muxer has for it.
    fn process_rx(&mut self) {
        let mem = &self.mem;
        let queue = &mut self.queues[RX];
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let written = match chain.writer(mem) {
                Ok(mut writer) => {
                    let room = writer.available_bytes();
                    match self
                        .muxer
                        .next_packet_for_guest(room.saturating_sub(HDR_SIZE))
                    {
                        Some((hdr, data)) => write_host_packet(&mut writer, room, hdr, &data),
                        None => {
                            // Nothing to send: give the buffer back for later.
                            queue.go_to_previous_position();
                            break;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "vsock: bad RX descriptor chain");
                    Some(0)
                }
            };
            if queue
                .add_used(mem, head, written.unwrap_or(0) as u32)
                .is_err()
            {
                break;
            }
            used = true;
        }
        if used && queue.needs_notification(mem).unwrap_or(true) {
            self.interrupt.signal(INT_VRING);
        }
    }
}
