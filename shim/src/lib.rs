//! The host side of husk: containerd-shim-kata-v2's Task service and huskctl's pieces.
//!
//! Dependencies point down this list:
//! - `service`: containerd's Task API, thin (decode, call the sandbox, map the error), events,
//!   logging; the only module that touches containerd's protos.
//! - `sandbox`: one sandbox's state machine (its VM, containers and watchers), on a `Host`.
//! - `container`: container and process state transitions, without I/O; `events`: what a
//!   sandbox announces.
//! - `host`: the sandbox on the host (directory, cgroup, VM, mounts) and its cleanup, also
//!   after a shim crash; `storage` (every mount and its undoing, symlink-proof), `record` (the
//!   host-only record cleanup works from), `cgroup`, `vm` (the husk-vmm child), `network`
//!   (the pod's network namespace: its tap and tc redirect filters).
//! - `cpus`: containers' cpusets as vCPU pinning on the host and cpusets in the guest.
//! - `agent`: the agent's ttrpc connections; `io`: process stdio through the agent.
//! - `spec`: the OCI spec rewritten for the guest; `config`: Kata's configuration.toml.
//! - `error`: the shim's error type, the only place that knows ttrpc status codes.

pub mod agent;
pub mod cgroup;
pub mod config;
pub mod container;
pub mod cpus;
pub mod error;
pub mod events;
pub mod forward;
pub mod host;
pub mod io;
pub mod network;
pub mod record;
pub mod sandbox;
pub mod service;
pub mod spec;
pub mod storage;
pub mod vm;
