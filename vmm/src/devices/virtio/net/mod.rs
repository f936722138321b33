//! virtio-net backed by a Linux tap: the guest's network card on the pod's network (the shim
//! puts the tap in the pod's network namespace and mirrors it to the CNI veth).
//!
//! One RX and one TX queue, no control queue. Frames cross as they are, virtio-net header
//! included, so offloads pass through: the guest may send TSO super-frames and partially
//! checksummed frames (HOST_TSO4/6, HOST_UFO, CSUM), and receives them when it acks GUEST_*
//! (the tap is told with `TUNSETOFFLOAD`, on the worker thread, see `tap`); bulk TCP is never
//! segmented twice. Large frames reach the guest in merged buffers (MRG_RXBUF).
//!
//! - `config`: the `--net` option;
//! - `tap`: opening the tap and its ioctls;
//! - `rx`, `tx`: frames into and out of guest buffers;
//! - `handler`: the worker thread's event handling.

mod config;
mod handler;
mod rx;
mod tap;
#[cfg(test)]
mod test_utils;
#[cfg(test)]
mod tests;
mod tx;

use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{Queue, QueueT};

pub use config::{open_taps, validate_all, MacAddr, NetConfig, TapSource, MIN_MTU};
use handler::NetHandler;
use rx::Rx;
pub use tap::{Tap, TapError};

use super::worker::{QueueEvents, Worker};
use super::{
    ActivateError, DeviceState, Interrupt, VirtioDevice, TYPE_NET, VIRTIO_RING_F_EVENT_IDX,
};
use crate::vstate::memory::GuestMemory;

const NAME: &str = "virtio-net";
const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZES: [u16; 2] = [256, 256];

/// What every device offers; VIRTIO_NET_F_MTU is added when an MTU is configured.
const FEATURES: u64 = (1 << VIRTIO_NET_F_MAC)
    | (1 << VIRTIO_NET_F_STATUS)
    | (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_NET_F_GUEST_UFO)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6)
    | (1 << VIRTIO_NET_F_HOST_UFO)
    | (1 << VIRTIO_NET_F_MRG_RXBUF)
    | VIRTIO_RING_F_EVENT_IDX;

/// `struct virtio_net_config` up to `mtu`: mac[6], status, max_virtqueue_pairs, mtu (le16 each).
const CONFIG_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("MAC address {0} is not a unicast address")]
    Mac(MacAddr),
    #[error("MTU {0} is below the minimum of {MIN_MTU}")]
    Mtu(u16),
    #[error("Tap name {0:?} must be 1 to 15 bytes, without '/', ':' or white space")]
    TapName(String),
    #[error("Tap descriptor {0} is one of stdin, stdout and stderr")]
    StdioFd(RawFd),
    #[error("Tap descriptor {0} is not open")]
    ClosedFd(RawFd, #[source] std::io::Error),
    #[error("Two --net devices use {0}")]
    Duplicate(String),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("Cannot duplicate the descriptor of tap {0}")]
    Clone(String, #[source] std::io::Error),
    #[error("Cannot create the virtio-net queue events")]
    Events(#[source] std::io::Error),
}

/// The features offered for a device with this MTU (or none).
fn features(mtu: Option<u16>) -> u64 {
    match mtu {
        Some(_) => FEATURES | (1 << VIRTIO_NET_F_MTU),
        None => FEATURES,
    }
}

/// The config space: the MAC, the link always up, one queue pair, the MTU (0 when not offered).
fn config_space(mac: MacAddr, mtu: Option<u16>) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    c[..6].copy_from_slice(&mac.0);
    c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
    c[8..10].copy_from_slice(&1u16.to_le_bytes());
    c[10..12].copy_from_slice(&mtu.unwrap_or(0).to_le_bytes());
    c
}

pub struct Net {
    tap: Tap,
    features: u64,
    config: [u8; CONFIG_LEN],
    queue_evts: QueueEvents,
    state: DeviceState<Worker<NetHandler>>,
}

impl Net {
    /// A device on the tap `cfg` names (opened now if it is named, and not yet open).
    pub fn new(cfg: &NetConfig) -> Result<Self, NetError> {
        cfg.validate()?;
        let tap = match &cfg.tap {
            TapSource::Name(name) => Tap::open(name)?,
            TapSource::Fd(fd) => Tap::from_fd(*fd)?,
            TapSource::Open(tap) => tap
                .try_clone()
                .map_err(|e| NetError::Clone(tap.name().into(), e))?,
        };
        tracing::debug!(tap = tap.name(), mac = %cfg.mac, mtu = ?cfg.mtu, "virtio-net device");
        Ok(Net {
            tap,
            features: features(cfg.mtu),
            config: config_space(cfg.mac, cfg.mtu),
            queue_evts: QueueEvents::new(QUEUE_SIZES.len()).map_err(NetError::Events)?,
            state: DeviceState::Inactive,
        })
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
        acked_features: u64,
    ) -> Result<(), ActivateError> {
        if self.state.is_activated() {
            return Err(ActivateError::AlreadyActive(NAME));
        }
        let [rx_queue, tx_queue]: [Queue; 2] = queues
            .try_into()
            .map_err(|q: Vec<Queue>| ActivateError::BadQueue(q.len()))?;
        let err = |e| ActivateError::Device(NAME, e);
        let mergeable = acked_features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        tracing::debug!(
            tap = self.tap.name(),
            features = format_args!("{acked_features:#x}"),
            rx_size = rx_queue.size(),
            tx_size = tx_queue.size(),
            "virtio-net activated"
        );
        let handler = NetHandler::new(
            mem,
            interrupt,
            Rx::new(rx_queue, mergeable),
            tx_queue,
            self.tap.try_clone().map_err(err)?,
            self.queue_evts.try_clone().map_err(err)?,
            acked_features,
        );
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
        // The frame the device held goes with the handler; the tap's queue stays.
        self.state.stop_worker();
        self.queue_evts.clear();
    }

    fn shutdown(&mut self) {
        self.state.shut_down_worker();
    }
}
