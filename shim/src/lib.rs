//! The host side of husk: launching a sandbox VM and talking to its agent. Used by `huskctl`
//! (and by the containerd shim once it exists).

pub mod sandbox;
