//! FUSE requests as a guest driver writes them (fuse_in_header, the opcode's arguments, names,
//! data), built from the fuzz input so that most are well-formed enough to reach the file
//! system and its policy, and some are not.

use crate::input::Input;

pub const IN_HEADER_LEN: usize = 40;
pub const OUT_HEADER_LEN: usize = 16;

pub const OP_INIT: u32 = 26;

/// Per opcode: the size of its fixed argument struct, how many NUL-terminated names follow it,
/// and whether free-form data follows them.
const OPS: &[(u32, usize, u8, bool)] = &[
    (1, 0, 1, false),   // LOOKUP
    (2, 8, 0, false),   // FORGET
    (3, 16, 0, false),  // GETATTR
    (4, 88, 0, false),  // SETATTR
    (5, 0, 0, false),   // READLINK
    (6, 0, 2, false),   // SYMLINK
    (8, 16, 1, false),  // MKNOD
    (9, 8, 1, false),   // MKDIR
    (10, 0, 1, false),  // UNLINK
    (11, 0, 1, false),  // RMDIR
    (12, 8, 2, false),  // RENAME
    (13, 8, 1, false),  // LINK
    (14, 8, 0, false),  // OPEN
    (15, 40, 0, false), // READ
    (16, 40, 0, true),  // WRITE
    (17, 0, 0, false),  // STATFS
    (18, 24, 0, false), // RELEASE
    (20, 8, 0, false),  // FSYNC
    (21, 8, 1, true),   // SETXATTR
    (22, 8, 1, false),  // GETXATTR
    (23, 8, 0, false),  // LISTXATTR
    (24, 0, 1, false),  // REMOVEXATTR
    (25, 24, 0, false), // FLUSH
    (26, 16, 0, false), // INIT
    (27, 8, 0, false),  // OPENDIR
    (28, 40, 0, false), // READDIR
    (29, 24, 0, false), // RELEASEDIR
    (30, 8, 0, false),  // FSYNCDIR
    (31, 48, 0, false), // GETLK
    (32, 48, 0, false), // SETLK
    (33, 48, 0, false), // SETLKW
    (34, 8, 0, false),  // ACCESS
    (35, 16, 1, false), // CREATE
    (36, 8, 0, false),  // INTERRUPT
    (37, 16, 0, false), // BMAP
    (38, 0, 0, false),  // DESTROY
    (39, 32, 0, true),  // IOCTL
    (40, 24, 0, false), // POLL
    (42, 8, 0, true),   // BATCH_FORGET
    (43, 32, 0, false), // FALLOCATE
    (44, 40, 0, false), // READDIRPLUS
    (45, 16, 2, false), // RENAME2
    (46, 24, 0, false), // LSEEK
    (47, 56, 0, false), // COPY_FILE_RANGE
    (48, 40, 0, false), // SETUPMAPPING
    (49, 8, 0, true),   // REMOVEMAPPING
];

/// Names worth trying: the fixtures of [`crate::host::FsJail`], new names, and the ones a file
/// system must refuse or treat with care.
const NAMES: &[&[u8]] = &[
    b"file",
    b"dir",
    b"inner",
    b"up",
    b"abs",
    b"new",
    b"x",
    b".",
    b"..",
    b"",
    b"dir/inner",
    b"../outside",
    b"/etc",
    b"user.test",
    b"security.capability",
    b"trusted.overlay.opaque",
    b"system.posix_acl_access",
];

fn name(input: &mut Input, out: &mut Vec<u8>) {
    let pick = input.u8();
    if pick & 0x80 != 0 {
        let len = usize::from(pick & 0x7f) * 3;
        out.extend_from_slice(input.bytes(len));
    } else {
        out.extend_from_slice(NAMES[usize::from(pick) % NAMES.len()]);
    }
    // A name without its NUL, now and then.
    if input.u8() != 0xff {
        out.push(0);
    }
}

/// One FUSE request from the input.
pub fn request(input: &mut Input) -> Vec<u8> {
    let shape = input.u8();
    let (opcode, args, names, data) = if shape == 0xff {
        (input.u32(), usize::from(input.u8()), 0, true)
    } else {
        OPS[usize::from(shape) % OPS.len()]
    };
    let nodeid = match input.u8() {
        n @ 0..=0xef => u64::from(n % 8),
        _ => input.u64(),
    };
    let unique = u64::from(input.u16());
    let (uid, gid) = match input.u8() % 4 {
        0 => (0, 0),
        1 => (1000, 1000),
        _ => (input.u32(), input.u32()),
    };
    let mut body = Vec::new();
    if opcode == OP_INIT && shape != 0xff {
        // major 7, a minor the server accepts, then flags from the input.
        body.extend_from_slice(&7u32.to_le_bytes());
        body.extend_from_slice(&u32::from(input.u8() % 40).to_le_bytes());
        body.extend_from_slice(input.bytes(8));
        body.resize(args, 0);
    } else {
        body.extend_from_slice(input.bytes(args));
        body.resize(args, 0);
    }
    for _ in 0..names {
        name(input, &mut body);
    }
    if data {
        let len = usize::from(input.u8()) * 4;
        body.extend_from_slice(input.bytes(len));
    }
    let len = if input.u8() == 0xff {
        input.u32()
    } else {
        (IN_HEADER_LEN + body.len()) as u32
    };
    let mut req = Vec::with_capacity(IN_HEADER_LEN + body.len());
    req.extend_from_slice(&len.to_le_bytes());
    req.extend_from_slice(&opcode.to_le_bytes());
    req.extend_from_slice(&unique.to_le_bytes());
    req.extend_from_slice(&nodeid.to_le_bytes());
    req.extend_from_slice(&uid.to_le_bytes());
    req.extend_from_slice(&gid.to_le_bytes());
    req.extend_from_slice(&1u32.to_le_bytes()); // pid
    req.extend_from_slice(&0u32.to_le_bytes()); // total_extlen, padding
    req.extend_from_slice(&body);
    req
}

/// The `(len, error)` of a reply's fuse_out_header.
pub fn reply_header(reply: &[u8]) -> Option<(u32, i32)> {
    let len = u32::from_le_bytes(reply.get(0..4)?.try_into().ok()?);
    let error = i32::from_le_bytes(reply.get(4..8)?.try_into().ok()?);
    Some((len, error))
}
