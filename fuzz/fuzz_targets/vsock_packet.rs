//! The vsock packet parser and writer on descriptor chains in guest memory: TX chains go
//! through `read_guest_packet` exactly as the device's TX path hands them over, RX chains get
//! `write_host_packet`. Descriptors, rings and buffer contents come from the input.

#![no_main]

use husk_fuzz::guest::{Desc, Guest, DATA};
use husk_fuzz::host::{Resources, GUEST_CID};
use husk_fuzz::input::Input;
use husk_vmm::devices::virtio::queue::{self, Completion};
use husk_vmm::devices::virtio::vsock::packet::{
    read_guest_packet, write_host_packet, Header, HDR_SIZE, HOST_CID, MAX_PAYLOAD, TYPE_STREAM,
};
use husk_vmm::devices::virtio::Interrupt;
use libfuzzer_sys::fuzz_target;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let before = Resources::now();
    run(data);
    before.assert_unchanged();
});

/// A header with the fields a guest controls; the CIDs are the expected ones unless the input
/// says otherwise, so that most headers pass the source and destination checks.
fn header(input: &mut Input) -> Header {
    let mode = input.u8();
    Header {
        src_cid: if mode & 1 != 0 {
            input.u64()
        } else {
            GUEST_CID
        },
        dst_cid: if mode & 2 != 0 { input.u64() } else { HOST_CID },
        src_port: input.u32(),
        dst_port: input.u32(),
        len: if mode & 4 != 0 {
            input.u32()
        } else {
            u32::from(input.u16())
        },
        type_: if mode & 8 != 0 {
            input.u16()
        } else {
            TYPE_STREAM
        },
        op: u16::from(input.u8()),
        flags: input.u32(),
        buf_alloc: input.u32(),
        fwd_cnt: input.u32(),
    }
}

fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let size = 1u16 << (input.u8() % 9);
    let mut g = Guest::new(&[size]);
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let interrupt = Interrupt::new(irq);
    let mut queue = g.queue(0, input.bool());
    while !input.is_empty() {
        match input.u8() % 9 {
            0 => {
                let slot = input.u16();
                let d = Desc::decode(&mut input);
                g.set_desc(0, slot, d);
            }
            1 => g.push_avail(0, input.u16()),
            2 => {
                let at = DATA + u64::from(input.u16());
                let len = usize::from(input.u8());
                g.write(at, input.bytes(len));
            }
            3 => {
                let at = DATA + u64::from(input.u16());
                let h = header(&mut input);
                g.write(at, &h.to_bytes());
            }
            4 => {
                let at = DATA + u64::from(input.u16());
                let n = usize::from(input.u8() % 16);
                let descs: Vec<Desc> = (0..n).map(|_| Desc::decode(&mut input)).collect();
                g.write_table(at, &descs);
            }
            5 => g.set_avail_idx(0, input.u16()),
            6 => g.set_used_event(0, input.u16(), input.u16()),
            7 => tx(&g, &mut queue, &interrupt),
            _ => {
                let h = header(&mut input);
                let fill = input.u8();
                rx(&g, &mut queue, &interrupt, h, fill);
            }
        }
    }
    tx(&g, &mut queue, &interrupt);
}

/// The device's TX path: every chain is read as one guest packet.
fn tx(g: &Guest, queue: &mut Queue, interrupt: &Interrupt) {
    let mem = &g.mem;
    queue::drain(queue, mem, interrupt, |chain| {
        let Ok(mut reader) = chain.reader(mem) else {
            return Completion::Used(0);
        };
        let available = reader.available_bytes();
        if let Ok(p) = read_guest_packet(&mut reader, available, GUEST_CID) {
            assert_eq!(p.payload.len(), p.hdr.len as usize);
            assert!(p.hdr.len <= MAX_PAYLOAD);
            assert!(HDR_SIZE + p.payload.len() <= available);
            assert_eq!((p.hdr.src_cid, p.hdr.dst_cid), (GUEST_CID, HOST_CID));
            assert_eq!(Header::parse(&p.hdr.to_bytes()), p.hdr);
        }
        Completion::Used(0)
    });
}

/// The device's RX path: every chain gets a packet with as much payload as it has room for,
/// up to `hdr.len`.
fn rx(g: &Guest, queue: &mut Queue, interrupt: &Interrupt, hdr: Header, fill: u8) {
    let mem = &g.mem;
    queue::drain(queue, mem, interrupt, |chain| {
        let Ok(mut writer) = chain.writer(mem) else {
            return Completion::Used(0);
        };
        let room = writer.available_bytes();
        if room < HDR_SIZE {
            return Completion::Used(0);
        }
        let len = (hdr.len as usize)
            .min(room - HDR_SIZE)
            .min(MAX_PAYLOAD as usize);
        let payload = vec![fill; len];
        let hdr = Header {
            len: len as u32,
            ..hdr
        };
        let written = write_host_packet(&mut writer, room, hdr, &payload);
        assert_eq!(written, Some(HDR_SIZE + len));
        assert!(writer.bytes_written() <= room);
        Completion::Used(written.unwrap_or(0) as u32)
    });
}
