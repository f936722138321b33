//! The shim's one error type, and the only place that knows ttrpc status codes: containerd and
//! kubelet act on `NotFound`, `AlreadyExists` and `InvalidArgument`, so each error's code is
//! chosen here once, from what went wrong.

use std::error::Error as _;
use std::path::PathBuf;

use containerd_shim::protos::ttrpc::{self, get_status, Code};

use crate::agent::AgentError;
use crate::config::ConfigError;
use crate::spec::SpecError;
use crate::storage::StorageError;
use crate::vm::VmError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Container {0} not found")]
    ContainerNotFound(String),
    #[error("Exec {exec} not found in container {container}")]
    ExecNotFound { container: String, exec: String },
    #[error("Container {0} already exists")]
    ContainerExists(String),
    #[error("Exec {0} already exists")]
    ExecExists(String),
    #[error(
        "Bad container id {0:?}: use 1 to 76 letters, digits, '-', '_' or '.', not starting with '.'"
    )]
    BadId(String),
    #[error("Invalid request: {0}")]
    InvalidRequest(String),
    #[error("Husk cannot {0}")]
    Unsupported(&'static str),
    #[error("{0} was already started")]
    AlreadyStarted(String),
    #[error("{0} is still running: kill it first")]
    StillRunning(String),
    #[error("Container {0} is not running")]
    NotRunning(String),
    #[error("Container {0} is paused: resume it first")]
    Paused(String),
    #[error("Process {0} already finished")]
    Finished(String),
    #[error("The process has no terminal")]
    NoTerminal,
    #[error("The sandbox VM is not running")]
    VmNotRunning,
    #[error("The sandbox is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{key}: {path} does not exist; install husk's guest image and VMM (make install) or fix the path")]
    MissingFile { key: String, path: PathBuf },
    #[error("Cannot set up the sandbox cgroup")]
    Cgroup(#[source] crate::cgroup::CgroupError),
    #[error("Cannot start the sandbox VM")]
    Boot(#[source] VmError),
    #[error("Cannot place the sandbox's vCPUs on the container's cpuset")]
    Cpu(#[source] crate::cpus::CpuError),
    #[error("Cannot set the OOM score adjustment of the VMM (pid {pid}) to {adj}: {source}")]
    OomScore {
        pid: u32,
        adj: i32,
        source: std::io::Error,
    },
    #[error("Cannot prepare the sandbox's files")]
    Storage(#[from] StorageError),
    #[error(
        "Container {container} asks for a memory limit of {limit_mib} MiB, but its sandbox VM has \
         {vm_mib} MiB: raise default_memory in configuration.toml ([hypervisor.husk]) above the \
         pod's largest limit, or lower the limit"
    )]
    MemoryBeyondVm {
        container: String,
        limit_mib: u64,
        vm_mib: u64,
    },
    /// The spec has no namespace of kind `ns`: it would share the node's (a hostNetwork,
    /// hostPID or hostIPC pod; `ctr run --net-host`).
    #[error(
        "The pod asks for the host's {ns} namespace ({field}: true, or a spec without a {ns} \
         namespace such as `ctr run --net-host`); a VM cannot share the node's namespaces: run \
         such pods with runc (RuntimeClass handler runc)"
    )]
    HostNamespace {
        ns: &'static str,
        field: &'static str,
    },
    #[error(
        "The network namespace {netns} is already in use ({users}); husk takes over the \
         interfaces of a namespace prepared for the pod alone (by CNI, or `ip netns add`): give \
         this container a namespace of its own"
    )]
    NetnsInUse { netns: PathBuf, users: String },
    #[error("Cannot connect the sandbox VM to the pod's network")]
    Network(#[from] crate::network::NetworkError),
    #[error("Cannot {what}")]
    Agent {
        what: &'static str,
        #[source]
        source: AgentError,
    },
}

impl Error {
    /// Maps a failed agent call (a ttrpc error or an [`AgentError`]) to what we were doing.
    pub fn agent<E: Into<AgentError>>(what: &'static str) -> impl FnOnce(E) -> Error {
        move |e| Error::Agent {
            what,
            source: e.into(),
        }
    }

    fn code(&self) -> Code {
        match self {
            Error::ContainerNotFound(_) | Error::ExecNotFound { .. } | Error::Finished(_) => {
                Code::NOT_FOUND
            }
            Error::ContainerExists(_) | Error::ExecExists(_) => Code::ALREADY_EXISTS,
            Error::BadId(_)
            | Error::InvalidRequest(_)
            | Error::Spec(_)
            | Error::Config(_)
            | Error::HostNamespace { .. } => Code::INVALID_ARGUMENT,
            Error::Cpu(crate::cpus::CpuError::BadList(_)) => Code::INVALID_ARGUMENT,
            Error::Cpu(_) | Error::OomScore { .. } => Code::INTERNAL,
            Error::MemoryBeyondVm { .. } => Code::RESOURCE_EXHAUSTED,
            Error::NetnsInUse { .. } => Code::FAILED_PRECONDITION,
            Error::Network(_) => Code::INTERNAL,
            Error::Cgroup(e) if e.is_bad_request() => Code::INVALID_ARGUMENT,
            Error::Unsupported(_) => Code::UNIMPLEMENTED,
            Error::AlreadyStarted(_)
            | Error::StillRunning(_)
            | Error::NotRunning(_)
            | Error::Paused(_)
            | Error::NoTerminal
            | Error::VmNotRunning
            | Error::ShuttingDown
            | Error::MissingFile { .. }
            | Error::Cgroup(_)
            | Error::Boot(_) => Code::FAILED_PRECONDITION,
            Error::Storage(e) if e.is_bad_source() => Code::INVALID_ARGUMENT,
            Error::Storage(_) => Code::INTERNAL,
            Error::Agent { source, .. } => match source {
                // The agent's own code where containerd acts on it; anything else is ours.
                AgentError::Status { code, .. } => {
                    use containerd_shim::protos::protobuf::Enum;
                    match Code::from_i32(*code).unwrap_or(Code::INTERNAL) {
                        c @ (Code::NOT_FOUND
                        | Code::ALREADY_EXISTS
                        | Code::INVALID_ARGUMENT
                        | Code::FAILED_PRECONDITION
                        | Code::UNIMPLEMENTED) => c,
                        _ => Code::INTERNAL,
                    }
                }
                AgentError::Transport(_) => Code::UNAVAILABLE,
            },
        }
    }

    /// The message with its causes, which is all containerd shows of an error.
    pub fn chain(&self) -> String {
        let mut msg = self.to_string();
        let mut cause = self.source();
        while let Some(c) = cause {
            msg.push_str(": ");
            msg.push_str(&c.to_string());
            cause = c.source();
        }
        msg
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(get_status(e.code(), e.chain()))
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(e: Error) -> Code {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn containerd_gets_the_codes_it_acts_on() {
        assert_eq!(
            code_of(Error::ContainerNotFound("c".into())),
            Code::NOT_FOUND
        );
        assert_eq!(
            code_of(Error::ContainerExists("c".into())),
            Code::ALREADY_EXISTS
        );
        assert_eq!(code_of(Error::BadId("../x".into())), Code::INVALID_ARGUMENT);
        assert_eq!(
            code_of(Error::StillRunning("c".into())),
            Code::FAILED_PRECONDITION
        );
        let lost = Error::Agent {
            what: "start the container",
            source: AgentError::Transport("connection reset".into()),
        };
        assert_eq!(code_of(lost), Code::UNAVAILABLE);
        let missing = Error::Agent {
            what: "signal the process",
            source: AgentError::Status {
                code: Code::NOT_FOUND as i32,
                message: "no such process".into(),
            },
        };
        assert_eq!(code_of(missing), Code::NOT_FOUND);
    }

    #[test]
    fn the_message_carries_its_causes() {
        let e = Error::Agent {
            what: "start the container",
            source: AgentError::Status {
                code: Code::INTERNAL as i32,
                message: "exec: sh: not found".into(),
            },
        };
        assert_eq!(e.chain(), "Cannot start the container: exec: sh: not found");
    }
}
