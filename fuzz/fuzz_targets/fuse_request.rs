//! The virtio-fs request path (our policy, then fuse-backend-rs's server and passthrough file
//! system) serving a fresh directory on a private tmpfs, under sequences of FUSE requests from
//! a hostile guest: any opcode, node, credentials, arguments and names, well-formed or not, on
//! the request or the high-priority queue, with reply buffers of any size.
//!
//! Besides not panicking or hanging, nothing may escape the shared directory: no reply may
//! carry the canary stored beside it, nothing beside it may change, and no request may reach a
//! read-only host mount (which only a path outside the tmpfs would, see `host::FsJail`).

#![no_main]

use std::sync::Arc;

use husk_fuzz::fuse::{self, OUT_HEADER_LEN};
use husk_fuzz::guest::{Buffer, Guest};
use husk_fuzz::host::{holds_canary, FsJail, Resources};
use husk_fuzz::input::Input;
use husk_vmm::devices::virtio::fs::{CacheMode, Fs, FsConfig};
use husk_vmm::devices::virtio::worker::EventHandler;
use husk_vmm::devices::virtio::Interrupt;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let jail = FsJail::get();
    let before = Resources::now();
    run(jail, data);
    jail.assert_intact();
    before.assert_unchanged();
});

const REPLY_ROOM: [u32; 6] = [0, 8, 16, 256, 4096, 8192];

fn run(jail: &FsJail, data: &[u8]) {
    jail.reset();
    let mut input = Input::new(data);
    let cfg = input.u8();
    let fs = Fs::new(&FsConfig {
        tag: "fuzz".into(),
        path: jail.shared.clone(),
        cache: [CacheMode::Never, CacheMode::Auto, CacheMode::Always][usize::from(cfg % 3)],
        read_only: false,
        all_xattrs: cfg & 4 != 0,
    })
    .expect("fs");
    let mut g = Guest::new(&[256, 256]);
    let queues = vec![g.queue(0, false), g.queue(1, false)];
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let interrupt = Arc::new(Interrupt::new(irq));
    let mut handler = fs
        .handler(g.mem.clone(), interrupt, queues)
        .expect("fs handler");
    let mut served = [0u16; 2];
    while !input.is_empty() {
        // Mostly the request queue; FORGET and INTERRUPT belong on the high-priority one.
        let q = usize::from(!input.u8().is_multiple_of(4));
        let req = fuse::request(&mut input);
        let split = usize::from(input.u8());
        let room = input.pick(&REPLY_ROOM);
        let mut buffers = Vec::new();
        if split > 0 && split < req.len() {
            buffers.push(Buffer::Read(&req[..split]));
            buffers.push(Buffer::Read(&req[split..]));
        } else {
            buffers.push(Buffer::Read(&req));
        }
        if room > 0 {
            buffers.push(Buffer::Write(room));
        }
        let Some((head, addrs)) = g.add_chain(q, &buffers) else {
            break;
        };
        handler
            .handle_event(q as u64, EventSet::IN)
            .expect("fs event");

        let (idx, used) = g.used(q);
        assert_eq!(idx, served[q].wrapping_add(1), "one reply per request");
        served[q] = idx;
        let (id, len) = used[usize::from(idx.wrapping_sub(1) % 256)];
        assert_eq!(id, u32::from(head));
        assert!(len <= room, "reply of {len} bytes in {room}");
        if len == 0 {
            continue;
        }
        let reply = g.read(*addrs.last().expect("reply buffer"), len as usize);
        assert!(!holds_canary(&reply), "a reply carries the canary");
        if len as usize >= OUT_HEADER_LEN {
            let (hlen, error) = fuse::reply_header(&reply).expect("out header");
            assert_eq!(hlen, len, "reply header length");
            assert!((-4095..=0).contains(&error), "errno {error}");
            assert_ne!(
                error,
                -libc::EROFS,
                "a request reached a read-only host mount"
            );
        }
    }
}
