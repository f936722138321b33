//! Descriptor-chain handling of each device with rings in plain guest memory: `queue::drain`
//! and the request handling of rng, vsock (TX and RX) or fs, picked by the input's first byte.
//! Descriptors come from the input: loops, addresses outside memory, huge lengths, indirect
//! tables, wrong flags, heads outside the queue, available indices far ahead.

#![no_main]

use std::fs::File;
use std::sync::Arc;

use husk_fuzz::fuse;
use husk_fuzz::guest::{Desc, Guest, DATA};
use husk_fuzz::host::{FsJail, Resources, VsockHost, GUEST_CID};
use husk_fuzz::input::Input;
use husk_vmm::devices::virtio::fs::{CacheMode, Fs, FsConfig, FsHandler};
use husk_vmm::devices::virtio::queue::{self, Completion};
use husk_vmm::devices::virtio::rng::fill_chain;
use husk_vmm::devices::virtio::vsock::muxer::Muxer;
use husk_vmm::devices::virtio::vsock::packet::{
    Header, HDR_SIZE, HOST_CID, OP_REQUEST, OP_RW, TYPE_STREAM,
};
use husk_vmm::devices::virtio::vsock::{VsockHandler, TOKEN_MUXER};
use husk_vmm::devices::virtio::worker::{EventHandler, QueueEvents};
use husk_vmm::devices::virtio::Interrupt;
use libfuzzer_sys::fuzz_target;
use virtio_queue::Queue;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let vsock = VsockHost::get();
    let jail = FsJail::get();
    let before = Resources::now();
    run(vsock, jail, data);
    vsock.drain();
    before.assert_unchanged();
});

/// The most virtio-rng hands out per request. (The used ring itself is guest memory that the
/// guest may point device-writable buffers at, so its contents prove nothing.)
const RNG_MAX_REQUEST: u32 = 64 * 1024;

enum Device {
    Rng { queue: Queue, source: File },
    Vsock(Box<VsockHandler>),
    Fs(FsHandler),
}

/// A vsock header for the TX queue, mostly from the guest to a listening host port.
fn vsock_header(input: &mut Input) -> [u8; HDR_SIZE] {
    let mode = input.u8();
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: u32::from(input.u8()),
        dst_port: if mode & 1 != 0 { input.u32() } else { 1024 },
        len: u32::from(input.u16()),
        type_: TYPE_STREAM,
        op: if mode & 2 != 0 { OP_REQUEST } else { OP_RW },
        flags: input.u32(),
        buf_alloc: input.u32(),
        fwd_cnt: input.u32(),
    }
    .to_bytes()
}

fn run(vsock: &VsockHost, jail: &FsJail, data: &[u8]) {
    let mut input = Input::new(data);
    let kind = input.u8() % 3;
    let count = [1, 3, 2][usize::from(kind)];
    let sizes: Vec<u16> = (0..count).map(|_| 1 << (input.u8() % 9)).collect();
    let mut g = Guest::new(&sizes);
    let event_idx = input.bool();
    let queues: Vec<Queue> = (0..count).map(|q| g.queue(q, event_idx)).collect();
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let interrupt = Arc::new(Interrupt::new(irq));
    let mut dev = match kind {
        0 => Device::Rng {
            queue: queues.into_iter().next().expect("one queue"),
            source: File::open("/dev/urandom").expect("urandom"),
        },
        1 => {
            let muxer = Muxer::new(GUEST_CID, &vsock.socket_path()).expect("muxer");
            let evts = QueueEvents::new(2).expect("queue events");
            Device::Vsock(Box::new(VsockHandler::new(
                g.mem.clone(),
                interrupt.clone(),
                queues,
                muxer,
                GUEST_CID,
                evts,
            )))
        }
        _ => {
            jail.reset();
            let fs = Fs::new(&FsConfig {
                tag: "fuzz".into(),
                path: jail.shared.clone(),
                cache: CacheMode::Auto,
                read_only: false,
                all_xattrs: false,
            })
            .expect("fs");
            let h = fs
                .handler(g.mem.clone(), interrupt.clone(), queues)
                .expect("fs handler");
            Device::Fs(h)
        }
    };
    while !input.is_empty() {
        let q = usize::from(input.u8()) % count;
        match input.u8() % 8 {
            0 => {
                let slot = input.u16();
                let d = Desc::decode(&mut input);
                g.set_desc(q, slot, d);
            }
            1 => g.push_avail(q, input.u16()),
            2 => {
                let at = DATA + u64::from(input.u16());
                let len = usize::from(input.u8());
                g.write(at, input.bytes(len));
            }
            3 => {
                let at = DATA + u64::from(input.u16());
                let n = usize::from(input.u8() % 16);
                let descs: Vec<Desc> = (0..n).map(|_| Desc::decode(&mut input)).collect();
                g.write_table(at, &descs);
            }
            4 => g.set_avail_idx(q, input.u16()),
            5 => g.set_used_event(q, input.u16(), input.u16()),
            6 => {
                // A request the device understands, at any place in the data half.
                let at = DATA + u64::from(input.u16());
                match dev {
                    Device::Vsock(_) => g.write(at, &vsock_header(&mut input)),
                    Device::Fs(_) => g.write(at, &fuse::request(&mut input)),
                    Device::Rng { .. } => {}
                }
            }
            _ => kick(&g, &mut dev, &interrupt, q),
        }
    }
    for q in 0..count {
        kick(&g, &mut dev, &interrupt, q);
    }
}

/// The driver notified queue `q`: the device serves it as its worker would.
fn kick(g: &Guest, dev: &mut Device, interrupt: &Interrupt, q: usize) {
    match dev {
        Device::Rng { queue, source } => {
            let mem = &g.mem;
            queue::drain(queue, mem, interrupt, |chain| {
                let done = fill_chain(mem, source, chain);
                assert!(
                    matches!(done, Completion::Used(n) if n <= RNG_MAX_REQUEST),
                    "{done:?}"
                );
                done
            });
        }
        Device::Vsock(h) => {
            // RX and TX wake the worker by their index; the event queue has no notification,
            // so a kick there stands for the muxer's own events.
            let token = if q < 2 { q as u64 } else { TOKEN_MUXER };
            h.handle_event(token, EventSet::IN).expect("vsock event");
            h.batch_done();
        }
        Device::Fs(h) => {
            h.handle_event(q as u64, EventSet::IN).expect("fs event");
        }
    }
}
