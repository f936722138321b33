//! What virtio-fs refuses to do on the host, whatever the guest asks: it serves files, not
//! devices. Looked at before a request reaches the passthrough file system:
//! - `MKNOD` of a character or block device: a node made in the guest would be a device node on
//!   the host, which anything on the host (the VMM included) could open.
//! - `SETXATTR` of `security.*` (file capabilities, LSM labels) or `trusted.*` names.
//!
//! FIFOs, sockets and regular files are made as asked. Those refusals are `EPERM`.
//!
//! It also refuses, with `E2BIG`, `GETXATTR` and `LISTXATTR` for more than the 64 KiB Linux
//! allows (XATTR_SIZE_MAX, XATTR_LIST_MAX; the guest kernel never asks for more): the
//! passthrough file system allocates the guest's size, up to 4 GiB, before it asks the host.

use std::io::Read;

use fuse_backend_rs::abi::fuse_abi::{
    GetxattrIn, InHeader, MknodIn, Opcode, OutHeader, SetxattrIn,
};
use fuse_backend_rs::transport::Reader;

/// xattr name prefixes the guest may not set on host files.
const REFUSED_XATTR_PREFIXES: [&[u8]; 2] = [b"security.", b"trusted."];
/// The longest xattr name Linux accepts (XATTR_NAME_MAX), plus its NUL.
const XATTR_NAME_MAX: u64 = 256;
/// The largest xattr value (XATTR_SIZE_MAX) and name list (XATTR_LIST_MAX) Linux handles.
const XATTR_SIZE_MAX: u32 = 64 * 1024;

/// The reply for a request the policy refuses: `(unique, errno)`; `None` lets it through (a
/// request too short to judge is left to the server, which rejects it on its own). With
/// `all_xattrs` (`--fs ...,xattr=all`) every xattr name passes.
pub fn refusal(mut request: Reader<'_>, all_xattrs: bool) -> Option<(u64, i32)> {
    let header: InHeader = request.read_obj().ok()?;
    let op = header.opcode;
    let errno = if op == Opcode::Mknod as u32 {
        let args: MknodIn = request.read_obj().ok()?;
        let kind = args.mode & libc::S_IFMT;
        (kind == libc::S_IFCHR || kind == libc::S_IFBLK).then_some(libc::EPERM)
    } else if op == Opcode::Setxattr as u32 && !all_xattrs {
        let _args: SetxattrIn = request.read_obj().ok()?;
        let mut name = Vec::new();
        (&mut request)
            .take(XATTR_NAME_MAX)
            .read_to_end(&mut name)
            .ok()?;
        let refused = REFUSED_XATTR_PREFIXES.iter().any(|p| name.starts_with(p));
        refused.then_some(libc::EPERM)
    } else if op == Opcode::Getxattr as u32 || op == Opcode::Listxattr as u32 {
        let args: GetxattrIn = request.read_obj().ok()?;
        (args.size > XATTR_SIZE_MAX).then_some(libc::E2BIG)
    } else {
        None
    };
    errno.map(|errno| (header.unique, errno))
}

/// The FUSE reply that carries only `errno` for request `unique`.
pub fn error_reply(unique: u64, errno: i32) -> OutHeader {
    OutHeader {
        len: std::mem::size_of::<OutHeader>() as u32,
        error: -errno,
        unique,
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueOwnedT;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    /// The policy's verdict on one request, placed in guest memory as a driver would.
    fn judge(request: &[u8]) -> Option<(u64, i32)> {
        judge_with(request, false)
    }

    fn judge_with(request: &[u8], all_xattrs: bool) -> Option<(u64, i32)> {
        let mem = crate::vstate::memory::create(1 << 20).unwrap();
        mem.write_slice(request, GuestAddress(0x8000)).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let descs = [RawDescriptor::from(Descriptor::new(
            0x8000,
            request.len() as u32,
            0,
            0,
        ))];
        vq.build_desc_chain(&descs).unwrap();
        let mut queue: virtio_queue::Queue = vq.create_queue().unwrap();
        let chain = queue.iter(&mem).unwrap().next().unwrap();
        refusal(
            Reader::from_descriptor_chain(&mem, chain).unwrap(),
            all_xattrs,
        )
    }

    fn header(opcode: Opcode, unique: u64, body: &[u8]) -> Vec<u8> {
        let mut req = vec![0u8; 40];
        req[0..4].copy_from_slice(&((40 + body.len()) as u32).to_le_bytes());
        req[4..8].copy_from_slice(&(opcode as u32).to_le_bytes());
        req[8..16].copy_from_slice(&unique.to_le_bytes());
        req[16..24].copy_from_slice(&1u64.to_le_bytes());
        req.extend_from_slice(body);
        req
    }

    fn mknod(mode: u32) -> Vec<u8> {
        let mut body = Vec::new();
        for v in [mode, 0x0103, 0o022, 0] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        body.extend_from_slice(b"node\0");
        header(Opcode::Mknod, 7, &body)
    }

    fn setxattr(name: &str) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(b"\0x");
        header(Opcode::Setxattr, 9, &body)
    }

    #[test]
    fn device_nodes_are_refused_other_nodes_pass() {
        assert_eq!(judge(&mknod(libc::S_IFCHR | 0o666)), Some((7, libc::EPERM)));
        assert_eq!(judge(&mknod(libc::S_IFBLK | 0o600)), Some((7, libc::EPERM)));
        assert_eq!(judge(&mknod(libc::S_IFIFO | 0o600)), None);
        assert_eq!(judge(&mknod(libc::S_IFREG | 0o644)), None);
        assert_eq!(judge(&mknod(libc::S_IFSOCK | 0o644)), None);
    }

    #[test]
    fn security_and_trusted_xattrs_are_refused() {
        assert_eq!(
            judge(&setxattr("security.capability")),
            Some((9, libc::EPERM))
        );
        assert_eq!(
            judge(&setxattr("trusted.overlay.opaque")),
            Some((9, libc::EPERM))
        );
        assert_eq!(judge(&setxattr("user.comment")), None);
        // Configured for a directory that is the guest's alone: xattrs pass, devices do not.
        assert_eq!(judge_with(&setxattr("trusted.x"), true), None);
        assert_eq!(
            judge_with(&mknod(libc::S_IFCHR | 0o666), true),
            Some((7, libc::EPERM))
        );
    }

    fn xattr_query(opcode: Opcode, size: u32) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&size.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        if matches!(opcode, Opcode::Getxattr) {
            body.extend_from_slice(b"user.x\0");
        }
        header(opcode, 11, &body)
    }

    #[test]
    fn xattr_queries_for_more_than_linux_allows_are_refused() {
        for op in [Opcode::Getxattr, Opcode::Listxattr] {
            // Found by fuzzing: the passthrough file system allocated the guest's size.
            assert_eq!(judge(&xattr_query(op, u32::MAX)), Some((11, libc::E2BIG)));
            assert_eq!(
                judge(&xattr_query(op, XATTR_SIZE_MAX + 1)),
                Some((11, libc::E2BIG))
            );
            assert_eq!(judge(&xattr_query(op, XATTR_SIZE_MAX)), None);
            assert_eq!(judge(&xattr_query(op, 0)), None);
        }
    }

    #[test]
    fn short_requests_are_left_to_the_server() {
        assert_eq!(judge(&[1, 2, 3]), None);
        assert_eq!(judge(&header(Opcode::Mknod, 1, &[0, 0])), None);
        assert_eq!(judge(&header(Opcode::Getattr, 1, &[])), None);
    }

    #[test]
    fn the_error_reply_is_a_bare_header() {
        let r = error_reply(5, libc::EPERM);
        assert_eq!((r.len, r.error, r.unique), (16, -libc::EPERM, 5));
    }
}
