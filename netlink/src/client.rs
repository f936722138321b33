//! A small synchronous rtnetlink client: one socket, one request at a time.
//!
//! Open it on a thread that has entered the pod's namespace: a netlink socket talks to the
//! namespace it was created in, whatever thread uses it later.

use std::io;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::Socket;

/// `NLM_F_CAPPED` and `NLM_F_ACK_TLVS`, flags of an `NLMSG_ERROR` reply.
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: the kernel's extended-ack text.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// A dump the kernel marks as interrupted (the table changed under it) is retried this often.
const DUMP_ATTEMPTS: usize = 5;

/// An error the kernel answered with, with its extended-ack text when it gave one.
#[derive(Debug)]
pub struct KernelError {
    pub errno: i32,
    pub message: Option<String>,
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let os = io::Error::from_raw_os_error(self.errno);
        match &self.message {
            // `io::Error`'s text ends with " (os error N)"; keep the words only.
            Some(message) => write!(f, "{} ({message})", strip_os_suffix(&os)),
            None => write!(f, "{}", strip_os_suffix(&os)),
        }
    }
}

impl std::error::Error for KernelError {}

fn strip_os_suffix(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// The errno of an error from this module (kernel answer or system call), if it has one.
pub fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<KernelError>())
            .map(|k| k.errno)
    })
}

/// An rtnetlink socket of the namespace it was opened in.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace, with extended acknowledgements
    /// on (errors carry the kernel's text).
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        // Error replies carry the kernel's explanation and not a copy of our request.
        socket.set_ext_ack(true)?;
        socket.set_cap_ack(true)?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends a request that changes something and waits for the kernel's acknowledgement.
    pub fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let seq = self.send(message, NLM_F_REQUEST | NLM_F_ACK | flags)?;
        loop {
            for reply in self.receive(seq)? {
                match reply.payload {
                    NetlinkPayload::Error(e) if e.code.is_none() => return Ok(()),
                    NetlinkPayload::Error(e) => return Err(kernel_error(&reply.header, &e)),
                    _ => {}
                }
            }
        }
    }

    /// Asks for one object (a link by index or name): the kernel answers with it or an error.
    pub fn get(&mut self, message: RouteNetlinkMessage) -> io::Result<RouteNetlinkMessage> {
        let seq = self.send(message, NLM_F_REQUEST)?;
        loop {
            for reply in self.receive(seq)? {
                match reply.payload {
                    NetlinkPayload::InnerMessage(inner) => return Ok(inner),
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(kernel_error(&reply.header, &e))
                    }
                    _ => {}
                }
            }
        }
    }

    /// Dumps a table (links, addresses, routes, neighbours, qdiscs), retrying when the kernel
    /// says the dump was interrupted by a change.
    pub fn dump(&mut self, message: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        for _ in 0..DUMP_ATTEMPTS {
            let seq = self.send(message.clone(), NLM_F_REQUEST | NLM_F_DUMP)?;
            let mut out = Vec::new();
            let mut interrupted = false;
            'dump: loop {
                for reply in self.receive(seq)? {
                    interrupted |= reply.header.flags & NLM_F_DUMP_INTR != 0;
                    match reply.payload {
                        NetlinkPayload::InnerMessage(inner) => out.push(inner),
                        NetlinkPayload::Done(_) => break 'dump,
                        NetlinkPayload::Error(e) if e.code.is_some() => {
                            return Err(kernel_error(&reply.header, &e))
                        }
                        _ => {}
                    }
                }
            }
            if !interrupted {
                return Ok(out);
            }
            tracing::debug!("netlink dump interrupted by a change; dumping again");
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            format!("the table kept changing during {DUMP_ATTEMPTS} dumps"),
        ))
    }

    fn send(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        let sent = self.socket.send(&buf, 0)?;
        if sent != buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write on the netlink socket",
            ));
        }
        Ok(self.seq)
    }

    /// Reads one datagram and returns its messages that answer request `seq`.
    fn receive(&mut self, seq: u32) -> io::Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        let (buf, _) = self.socket.recv_from_full()?;
        let mut out = Vec::new();
        let mut rest = &buf[..];
        while !rest.is_empty() {
            let len = NetlinkBuffer::new_checked(rest)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
                .length() as usize;
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if message.header.sequence_number == seq {
                out.push(message);
            }
            rest = &rest[align4(len).min(rest.len())..];
        }
        Ok(out)
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Builds the error of an `NLMSG_ERROR` reply, with the extended-ack text when there is one.
fn kernel_error(header: &NetlinkHeader, e: &netlink_packet_core::ErrorMessage) -> io::Error {
    let errno = e.raw_code().abs();
    let message = (header.flags & NLM_F_ACK_TLVS != 0)
        .then(|| extack_message(&e.header, header.flags & NLM_F_CAPPED != 0))
        .flatten();
    let kind = io::Error::from_raw_os_error(errno).kind();
    io::Error::new(kind, KernelError { errno, message })
}

/// Finds `NLMSGERR_ATTR_MSG` in what follows the echoed request (only its header when
/// capped).
fn extack_message(echoed: &[u8], capped: bool) -> Option<String> {
    let request_len = if capped {
        16
    } else {
        align4(u32::from_ne_bytes(echoed.get(..4)?.try_into().ok()?) as usize)
    };
    let mut tlvs = echoed.get(request_len..)?;
    while tlvs.len() >= 4 {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & 0x3fff;
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &tlvs[4..len];
            let text = text.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        tlvs = &tlvs[align4(len).min(tlvs.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extack_text_is_found_after_a_capped_header() {
        let mut echoed = vec![0u8; 16];
        let text = b"Exclusivity flag on\0";
        let len = (4 + text.len()) as u16;
        echoed.extend_from_slice(&len.to_ne_bytes());
        echoed.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        echoed.extend_from_slice(text);
        assert_eq!(
            extack_message(&echoed, true).as_deref(),
            Some("Exclusivity flag on")
        );
        assert_eq!(extack_message(&echoed[..10], true), None);
    }

    #[test]
    fn kernel_errors_keep_their_errno() {
        let e = io::Error::new(
            io::ErrorKind::AlreadyExists,
            KernelError {
                errno: libc::EEXIST,
                message: Some("Exclusivity flag on".into()),
            },
        );
        assert_eq!(errno(&e), Some(libc::EEXIST));
        assert_eq!(e.to_string(), "File exists (Exclusivity flag on)");
        assert_eq!(
            errno(&io::Error::from_raw_os_error(libc::ENODEV)),
            Some(libc::ENODEV)
        );
    }
}
