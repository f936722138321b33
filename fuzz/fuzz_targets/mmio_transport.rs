//! The virtio-mmio transport under a hostile driver: reads and writes of any size at any
//! offset with any value, status changes in any order, queues set up at any address and
//! activated, notifications, resets. Behind the transport sits, by the input's first byte, a
//! probe device that serves its queues at once on this thread, or one of the real devices
//! (rng, vsock, fs) with its worker thread.

#![no_main]

use std::io::Read;
use std::sync::Arc;

use husk_fuzz::guest::{Desc, Guest, MEM_SIZE};
use husk_fuzz::host::{FsJail, Resources, VsockHost, GUEST_CID};
use husk_fuzz::input::Input;
use husk_vmm::devices::bus::BusDevice;
use husk_vmm::devices::virtio::fs::{CacheMode, Fs, FsConfig};
use husk_vmm::devices::virtio::queue::{self, Completion};
use husk_vmm::devices::virtio::rng::Rng;
use husk_vmm::devices::virtio::transport::mmio::MmioTransport;
use husk_vmm::devices::virtio::vsock::Vsock;
use husk_vmm::devices::virtio::{
    read_config_bytes, ActivateError, Interrupt, VirtioDevice, VIRTIO_RING_F_EVENT_IDX,
};
use husk_vmm::vstate::memory::GuestMemory;
use libfuzzer_sys::fuzz_target;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let vsock = VsockHost::get();
    let jail = FsJail::get();
    let before = Resources::now();
    run(vsock, jail, data);
    vsock.drain();
    before.assert_unchanged();
});

/// The registers of the version 2 layout, and a few offsets around them.
const REGISTERS: [u64; 32] = [
    0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050,
    0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4, 0x0ac, 0x0b0, 0x0b4, 0x0fc,
    0x100, 0x104, 0x124, 0x0ff, 0x002, 0x1000,
];
const REG_STATUS: u64 = 0x070;
const SIZES: [usize; 8] = [4, 4, 4, 4, 1, 2, 8, 3];

/// A device that serves a notified queue at once: it reads every readable byte of each chain
/// and fills its writable part, like a device with a request and a reply.
struct Probe {
    config: [u8; 8],
    active: Option<(GuestMemory, Arc<Interrupt>, Vec<Queue>)>,
}

impl VirtioDevice for Probe {
    fn device_type(&self) -> u32 {
        42
    }

    fn features(&self) -> u64 {
        VIRTIO_RING_F_EVENT_IDX | 0b101
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[256, 16, 1024]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let dst = usize::try_from(offset)
            .ok()
            .and_then(|o| self.config.get_mut(o..o.checked_add(data.len())?));
        if let Some(dst) = dst {
            dst.copy_from_slice(data);
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
        _acked_features: u64,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive("probe"));
        }
        self.active = Some((mem, interrupt, queues));
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        let Some((mem, interrupt, queues)) = &mut self.active else {
            return;
        };
        let Some(queue) = queues.get_mut(usize::from(index)) else {
            return;
        };
        let mem = &*mem;
        queue::drain(queue, mem, interrupt, |chain| {
            let mut buf = [0u8; 4096];
            if let Ok(mut r) = chain.clone().reader(mem) {
                while matches!(r.read(&mut buf), Ok(1..)) {}
            }
            let mut written = 0;
            if let Ok(mut w) = chain.writer(mem) {
                while written < 64 * 1024 {
                    match std::io::Write::write(&mut w, &buf) {
                        Ok(n @ 1..) => written += n,
                        _ => break,
                    }
                }
            }
            Completion::Used(written as u32)
        });
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

fn device(kind: u8, vsock: &VsockHost, jail: &FsJail) -> Box<dyn VirtioDevice> {
    match kind % 4 {
        0 => Box::new(Probe {
            config: [0; 8],
            active: None,
        }),
        1 => Box::new(Rng::new().expect("rng")),
        2 => Box::new(Vsock::new(GUEST_CID, &vsock.socket_path()).expect("vsock")),
        _ => {
            jail.reset();
            Box::new(
                Fs::new(&FsConfig {
                    tag: "fuzz".into(),
                    path: jail.shared.clone(),
                    cache: CacheMode::Auto,
                    read_only: false,
                    all_xattrs: false,
                })
                .expect("fs"),
            )
        }
    }
}

fn write(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// What Linux's driver does to bring a device up, with the queues' sizes and addresses from
/// the input (mostly inside guest memory and aligned, so that activation often succeeds).
fn bring_up(t: &mut MmioTransport, input: &mut Input) {
    write(t, REG_STATUS, 1);
    write(t, REG_STATUS, 3);
    write(t, 0x024, 0);
    write(t, 0x020, input.u32());
    write(t, 0x024, 1);
    write(t, 0x020, 1 | u32::from(input.u8() & 0x20)); // VERSION_1, maybe EVENT_IDX
    write(t, REG_STATUS, 11);
    for q in 0..u32::from(input.u8() % 4) {
        write(t, 0x030, q);
        write(t, 0x038, 1 << (input.u8() % 11));
        let addr = |input: &mut Input, align: u64| (u64::from(input.u16()) * align) % MEM_SIZE;
        let (desc, avail, used) = (addr(input, 16), addr(input, 2), addr(input, 4));
        for (reg, a) in [(0x080, desc), (0x090, avail), (0x0a0, used)] {
            write(t, reg, a as u32);
            write(t, reg + 4, 0);
        }
        write(t, 0x044, 1);
    }
    write(t, REG_STATUS, 15);
}

fn run(vsock: &VsockHost, jail: &FsJail, data: &[u8]) {
    let mut input = Input::new(data);
    let g = Guest::new(&[]);
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let interrupt = Arc::new(Interrupt::new(irq));
    let dev = device(input.u8(), vsock, jail);
    let mut t = MmioTransport::new(dev, g.mem.clone(), interrupt);
    while !input.is_empty() {
        match input.u8() % 7 {
            0 | 1 => {
                let offset = match input.u8() {
                    0xff => input.u64(),
                    n => REGISTERS[usize::from(n) % REGISTERS.len()],
                };
                let size = input.pick(&SIZES);
                let bytes = input.bytes(size).to_vec();
                t.write(offset, &bytes);
            }
            2 => {
                let offset = match input.u8() {
                    0xff => input.u64(),
                    n => REGISTERS[usize::from(n) % REGISTERS.len()],
                };
                let mut buf = vec![0u8; input.pick(&SIZES)];
                t.read(offset, &mut buf);
            }
            3 => {
                let at = u64::from(input.u16()) * 2;
                let len = usize::from(input.u8());
                g.write(at, input.bytes(len));
            }
            4 => {
                let at = u64::from(input.u16()) * 2;
                let d = Desc::decode(&mut input);
                g.write_table(at, &[d]);
            }
            5 => bring_up(&mut t, &mut input),
            _ => write(&mut t, 0x050, u32::from(input.u8() % 4)),
        }
    }
    t.shutdown();
}
