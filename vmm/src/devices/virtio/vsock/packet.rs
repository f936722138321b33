//! The virtio-vsock packet header (virtio 1.2, section 5.10.6) and its validation.

use std::io::{Read, Write};

/// Size of `struct virtio_vsock_hdr` on the wire.
pub const HDR_SIZE: usize = 44;
/// The most payload we accept in one packet from the guest, or put in one for it.
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// The host's CID, as every guest knows it.
pub const HOST_CID: u64 = 2;

pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive no more / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("Packet shorter than its header ({0} bytes)")]
    Short(usize),
    #[error("Packet payload of {0} bytes is larger than allowed")]
    TooLong(u32),
    #[error("Packet header says {declared} payload bytes, the buffer holds {actual}")]
    LengthMismatch { declared: u32, actual: usize },
    #[error("Packet from CID {0}, not from the guest")]
    WrongSource(u64),
    #[error("Packet for CID {0}, not for the host")]
    WrongDestination(u64),
    #[error("Cannot read the packet from guest memory")]
    Read,
}

impl Header {
    pub fn parse(b: &[u8; HDR_SIZE]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"));
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// A packet the guest sent, checked: from `guest_cid`, to the host, payload within bounds and
/// exactly as long as the header says.
#[derive(Debug, PartialEq, Eq)]
pub struct GuestPacket {
    pub hdr: Header,
    pub payload: Vec<u8>,
}

/// Reads and validates one packet from a guest TX descriptor chain (`src` yields its readable
/// bytes; `available` is how many there are).
pub fn read_guest_packet(
    src: &mut impl Read,
    available: usize,
    guest_cid: u64,
) -> Result<GuestPacket, PacketError> {
    if available < HDR_SIZE {
        return Err(PacketError::Short(available));
    }
    let mut raw = [0u8; HDR_SIZE];
    src.read_exact(&mut raw).map_err(|_| PacketError::Read)?;
    let hdr = Header::parse(&raw);
    if hdr.src_cid != guest_cid {
        return Err(PacketError::WrongSource(hdr.src_cid));
    }
    if hdr.dst_cid != HOST_CID {
        return Err(PacketError::WrongDestination(hdr.dst_cid));
    }
    if hdr.len > MAX_PAYLOAD {
        return Err(PacketError::TooLong(hdr.len));
    }
    let actual = available - HDR_SIZE;
    if hdr.len as usize > actual {
        return Err(PacketError::LengthMismatch {
            declared: hdr.len,
            actual,
        });
    }
    let mut payload = vec![0u8; hdr.len as usize];
    src.read_exact(&mut payload)
        .map_err(|_| PacketError::Read)?;
    Ok(GuestPacket { hdr, payload })
}

/// Writes a packet for the guest into an RX chain; returns the bytes written, or `None` if the
/// chain cannot hold the header and payload.
pub fn write_host_packet(
    dst: &mut impl Write,
    available: usize,
    hdr: Header,
    payload: &[u8],
) -> Option<usize> {
    if available < HDR_SIZE + payload.len() {
        return None;
    }
    dst.write_all(&hdr.to_bytes()).ok()?;
    dst.write_all(payload).ok()?;
    Some(HDR_SIZE + payload.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr() -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1024,
            dst_port: 5000,
            len: 0,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 7,
        }
    }

    fn wire(h: Header, payload: &[u8]) -> Vec<u8> {
        let mut v = h.to_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn header_round_trips_in_the_wire_layout() {
        let h = hdr();
        let b = h.to_bytes();
        assert_eq!(Header::parse(&b), h);
        assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 5000);
        assert_eq!(u16::from_le_bytes(b[30..32].try_into().unwrap()), OP_RW);
    }

    #[test]
    fn valid_packet_with_payload() {
        let h = Header { len: 3, ..hdr() };
        let w = wire(h, b"abc");
        let p = read_guest_packet(&mut &w[..], w.len(), 3).unwrap();
        assert_eq!(p.payload, b"abc");
        assert_eq!(p.hdr, h);
    }

    #[test]
    fn truncated_header_is_refused() {
        let w = wire(hdr(), b"");
        assert_eq!(
            read_guest_packet(&mut &w[..10], 10, 3),
            Err(PacketError::Short(10))
        );
    }

    #[test]
    fn declared_length_beyond_the_buffer_is_refused() {
        let w = wire(Header { len: 100, ..hdr() }, b"abc");
        assert_eq!(
            read_guest_packet(&mut &w[..], w.len(), 3),
            Err(PacketError::LengthMismatch {
                declared: 100,
                actual: 3
            })
        );
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let w = wire(
            Header {
                len: u32::MAX,
                ..hdr()
            },
            b"",
        );
        assert_eq!(
            read_guest_packet(&mut &w[..], w.len(), 3),
            Err(PacketError::TooLong(u32::MAX))
        );
    }

    #[test]
    fn spoofed_source_and_foreign_destination_are_refused() {
        let w = wire(
            Header {
                src_cid: 9,
                ..hdr()
            },
            b"",
        );
        assert_eq!(
            read_guest_packet(&mut &w[..], w.len(), 3),
            Err(PacketError::WrongSource(9))
        );
        let w = wire(
            Header {
                dst_cid: 5,
                ..hdr()
            },
            b"",
        );
        assert_eq!(
            read_guest_packet(&mut &w[..], w.len(), 3),
            Err(PacketError::WrongDestination(5))
        );
    }

    #[test]
    fn host_packet_needs_room_for_header_and_payload() {
        let mut out = Vec::new();
        assert_eq!(
            write_host_packet(&mut out, HDR_SIZE + 1, hdr(), b"xy"),
            None
        );
        assert_eq!(
            write_host_packet(&mut out, 100, hdr(), b"xy"),
            Some(HDR_SIZE + 2)
        );
        assert_eq!(&out[HDR_SIZE..], b"xy");
    }
}
