//! Calls a shim's Task.Update as containerd does for CRI's UpdateContainerResources: the OCI
//! LinuxResources as JSON in an Any. Debian's `ctr` (1.6) has no `task update`, so the tests use
//! this to change a running container's limits.
//!
//! `husk-task-update ADDRESS CONTAINER RESOURCES_JSON`, where ADDRESS is the shim's socket as
//! containerd records it (the `address` file of the task's state directory).

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::shim::shim::UpdateTaskRequest;
use containerd_shim::protos::shim::shim_ttrpc::TaskClient;
use containerd_shim::protos::ttrpc::{context, Client, Error};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, address, id, json] = &args[..] else {
        eprintln!("usage: husk-task-update ADDRESS CONTAINER RESOURCES_JSON");
        std::process::exit(2);
    };
    let client = match Client::connect(address.trim()) {
        Ok(c) => TaskClient::new(c),
        Err(e) => {
            eprintln!("husk-task-update: cannot connect to {address}: {e}");
            std::process::exit(1);
        }
    };
    let req = UpdateTaskRequest {
        id: id.clone(),
        resources: Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: json.clone().into_bytes(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    match client.update(context::with_timeout(30_000_000_000), &req) {
        Ok(_) => {}
        Err(Error::RpcStatus(s)) => {
            eprintln!("husk-task-update: {:?}: {}", s.code(), s.message());
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("husk-task-update: {e}");
            std::process::exit(1);
        }
    }
}
