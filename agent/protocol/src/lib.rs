//! The ttrpc API between the husk shim (and `huskctl`) and the husk agent, generated from
//! `protos/` at build time.

#![allow(
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    dead_code,
    unknown_lints,
    unused_attributes,
    unused_imports,
    unused_mut,
    unused_results,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals
)]

pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}
pub mod health {
    include!(concat!(env!("OUT_DIR"), "/health.rs"));
}
pub mod health_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/health_ttrpc.rs"));
}

/// The vsock port the agent serves its API on (Kata's).
pub const AGENT_PORT: u32 = 1024;
/// The vsock port on the host that receives the agent's log lines.
pub const LOG_PORT: u32 = 1025;
/// vsock port of port forwarding: one stream per forwarded connection, opened by the host with
/// `PORT <n>\n`; the agent answers `OK\n` (then the bytes of the guest's TCP port `n`) or
/// `ERR <why>\n`.
pub const FORWARD_PORT: u32 = 1026;

/// A header line of a forwarding stream (without its `\n`), read byte by byte so that nothing
/// after it is consumed; at most `max` bytes.
pub fn read_header_line(mut from: impl std::io::Read, max: usize) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < max {
        if from.read(&mut byte)? == 0 || byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// In a container's spec sent to the agent, a namespace path `container:ID` names that
/// namespace of container ID's init process in the guest: how a pod's containers join the
/// sandbox container's UTS, IPC and PID namespaces.
pub const CONTAINER_NS_PREFIX: &str = "container:";

/// Where the agent keeps each pod's /dev/shm in guest memory: a tmpfs at `POD_SHM_DIR/<pod id>`,
/// mounted when the first container that names it is created and shared by the pod's
/// containers, as CRI's tmpfs on the host is under runc.
pub const POD_SHM_DIR: &str = "/run/husk/shm";

/// The annotation that gives that tmpfs its size, in bytes (the host tmpfs's size).
pub const POD_SHM_SIZE: &str = "io.husk.pod-shm-size";

pub use ttrpc;

/// Whether `id` (a container or exec id, which both sides turn into file names) is a plain name:
/// 1 to `max_len` letters, digits, '-', '_' or '.', not starting with '.'.
pub fn is_plain_name(id: &str, max_len: usize) -> bool {
    !id.is_empty()
        && id.len() <= max_len
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}
