//! What a sandbox announces about its containers and processes. The service turns these into
//! containerd's task events; tests record them.

use crate::container::{Exit, Stdio};
use crate::storage::RootfsMount;

/// What the sandbox announces; the service turns these into containerd's task events.
#[derive(Clone, Debug)]
pub enum TaskEvent {
    Create {
        id: String,
        bundle: String,
        rootfs: Vec<RootfsMount>,
        stdio: Stdio,
        pid: u32,
    },
    Start {
        id: String,
        pid: u32,
    },
    ExecAdded {
        id: String,
        exec_id: String,
    },
    ExecStarted {
        id: String,
        exec_id: String,
        pid: u32,
    },
    /// `id` is the container's; `process` is the container id for an init, else the exec id.
    Exit {
        id: String,
        process: String,
        pid: u32,
        exit: Exit,
    },
    Delete {
        id: String,
        pid: u32,
        exit: Exit,
    },
    Paused {
        id: String,
    },
    Resumed {
        id: String,
    },
    Oom {
        id: String,
    },
}

pub trait Events: Send + Sync {
    fn publish(&self, event: TaskEvent);
}
