//! husk's rtnetlink client, shared by the shim (the pod's namespace on the host) and the agent
//! (the guest's network).
//!
//! - [`Netlink`]: one `NETLINK_ROUTE` socket, one request at a time, synchronous; errors are
//!   `io::Error`s that carry the kernel's errno and extended-ack text ([`KernelError`],
//!   [`errno`]).
//! - [`link`]: links (network interfaces) read, found, renamed, set up or down, deleted.
//! - [`route`]: routes read, with the attributes the shim and the agent look at.
//! - [`netns`]: work run on a thread that has entered another network namespace.
//!
//! The messages themselves are `netlink-packet-route`'s: callers build addresses, routes,
//! neighbours or traffic control with it and send them through [`Netlink::request`].

mod client;
pub mod link;
pub mod netns;
pub mod route;

pub use self::client::{errno, KernelError, Netlink};

/// For the tests of this crate and, with the `test-support` feature, the agent's.
#[cfg(any(test, feature = "test-support"))]
pub mod test_ns;
