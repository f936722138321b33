//! The host side of husk: launching a sandbox VM and talking to its agent (`sandbox`), its cgroup
//! (`cgroup`), reading
//! Kata's configuration.toml (`config`), and the containerd Task service of
//! containerd-shim-kata-v2 (`task`, with the OCI spec rewriting in `spec`).

pub mod cgroup;
pub mod config;
pub mod sandbox;
pub mod spec;
pub mod task;
