//! containerd-shim-kata-v2: husk's containerd runtime v2 shim (runtime type
//! `io.containerd.kata.v2`).
//!
//! containerd runs the binary three ways:
//! - `start`: find or launch the shim serving this container's sandbox and print its address;
//! - no action (`-socket ADDR`): serve the Task API for every container of one sandbox VM;
//! - `delete`: clean up after a shim that died, from the bundle directory.
//!
//! The bootstrap is ours rather than `containerd_shim::run` because that one speaks only the
//! v3 task API and its JSON start reply, which containerd 1.6 (Debian 12's) does not
//! understand. We print the plain address every containerd accepts and serve the Task service
//! under both its v2 and v3 names; the messages of the two are the same.

use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _, Result};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::shim::shim_ttrpc::create_task;
use containerd_shim::protos::ttrpc;
use containerd_shim::publisher::RemotePublisher;
use husk_shim::service::{self, RemoteEvents, TaskService};

const ENV_CONFIG_PATH: &str = "HUSK_CONFIG_PATH";

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("containerd-shim-kata-v2: {e}");
            std::process::exit(2);
        }
    };
    if flags.version {
        println!(
            "containerd-shim-kata-v2 (husk) {}",
            env!("CARGO_PKG_VERSION")
        );
        return;
    }
    let result = match flags.action.as_str() {
        "start" => start(&flags),
        "delete" => delete(&flags),
        "" => serve(&flags),
        other => Err(anyhow!("unknown action {other:?}: use start or delete")),
    };
    if let Err(e) = result {
        eprintln!("containerd-shim-kata-v2: {e:#}");
        std::process::exit(1);
    }
}

fn bundle_dir(flags: &containerd_shim::Flags) -> Result<PathBuf> {
    if flags.bundle.is_empty() {
        std::env::current_dir().context("cannot read the current directory (the bundle)")
    } else {
        Ok(PathBuf::from(&flags.bundle))
    }
}

/// `start`: prints the address of the shim serving this container's sandbox, launching it
/// when the sandbox has none yet.
fn start(flags: &containerd_shim::Flags) -> Result<()> {
    let mut input = Vec::new();
    let _ = std::io::stdin().take(1 << 20).read_to_end(&mut input);
    let config_path = config_path_option(&input);

    let bundle = bundle_dir(flags)?;
    let spec = husk_shim::spec::read_bundle_spec(&bundle)?;
    let sandbox = husk_shim::spec::sandbox_id(&spec, &flags.id);
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &sandbox);
    let sock_path = address.trim_start_matches("unix://");
    if std::os::unix::net::UnixStream::connect(sock_path).is_ok() {
        write_address(&bundle, &address)?;
        print!("{address}");
        return Ok(());
    }
    let _ = std::fs::remove_file(sock_path);

    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let mut cmd = Command::new(exe);
    cmd.current_dir(&bundle)
        .args(["-namespace", &flags.namespace, "-id", &sandbox])
        .args(["-address", &flags.address, "-socket", &address])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(p) = &config_path {
        cmd.env(ENV_CONFIG_PATH, p);
    }
    if flags.debug {
        cmd.arg("-debug");
    }
    // SAFETY: setsid is async-signal-safe; the shim must outlive containerd's process group.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot launch the shim server")?;
    // The server closes its stdout and stderr once it listens, or dies trying.
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if let Ok(Some(status)) = child.try_wait() {
        bail!("the shim server exited ({status}): {}", err.trim());
    }
    if std::os::unix::net::UnixStream::connect(sock_path).is_err() {
        bail!(
            "the shim server does not listen on {address}: {}",
            err.trim()
        );
    }
    write_address(&bundle, &address)?;
    print!("{address}");
    std::io::stdout().flush()?;
    Ok(())
}

/// Leaves the shim's address in the bundle's `address` file, where a restarted containerd looks
/// for the shims of running tasks to reconnect to them.
fn write_address(bundle: &Path, address: &str) -> Result<()> {
    let tmp = bundle.join("address.tmp");
    std::fs::write(&tmp, address)
        .and_then(|_| std::fs::rename(&tmp, bundle.join("address")))
        .with_context(|| format!("cannot write {}", bundle.join("address").display()))
}

/// The `ConfigPath` of containerd's runtime options (`runtimeoptions.v1.Options`, field 2),
/// when containerd sent any on stdin.
fn config_path_option(input: &[u8]) -> Option<String> {
    let any = Any::parse_from_bytes(input).ok()?;
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        return None;
    }
    let mut s = containerd_shim::protos::protobuf::CodedInputStream::from_bytes(&any.value);
    while let Ok(Some(tag)) = s.read_raw_tag_or_eof() {
        if tag == (2 << 3) | 2 {
            return s.read_string().ok().filter(|p| !p.is_empty());
        }
        s.skip_field(containerd_shim::protos::protobuf::rt::WireType::new(
            tag & 7,
        )?)
        .ok()?;
    }
    None
}

/// Serves the Task API for one sandbox until it is shut down.
fn serve(flags: &containerd_shim::Flags) -> Result<()> {
    if flags.socket.is_empty() {
        bail!("-socket is required when serving");
    }
    service::init_logging(Path::new("log"), flags.debug);
    let ttrpc_address =
        std::env::var("TTRPC_ADDRESS").context("TTRPC_ADDRESS is not set by containerd")?;
    let publisher = RemotePublisher::new(&ttrpc_address)
        .map_err(|e| anyhow!("cannot connect to containerd at {ttrpc_address}: {e}"))?;
    let config_path = std::env::var_os(ENV_CONFIG_PATH).map(PathBuf::from);
    let events = RemoteEvents::new(&flags.namespace, &ttrpc_address, publisher);
    let service = TaskService::new(&flags.namespace, &flags.id, config_path, events);
    let mut services = create_task(Arc::new(service.clone()));
    for (name, handler) in create_task(Arc::new(service.clone())) {
        services.insert(
            name.replace("/containerd.task.v3.", "/containerd.task.v2."),
            handler,
        );
    }

    let sock_path = flags.socket.trim_start_matches("unix://");
    if let Some(dir) = Path::new(sock_path).parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(sock_path)
        .with_context(|| format!("cannot listen on {sock_path}"))?;
    let mut server = ttrpc::Server::new()
        .add_listener(listener.into_raw_fd())
        .map_err(|e| anyhow!("ttrpc: {e}"))?
        .register_service(services);
    server.start().map_err(|e| anyhow!("ttrpc: {e}"))?;
    tracing::info!(sandbox = %flags.id, socket = sock_path, "shim serving");
    // Tell `start` we listen: our stdout and stderr are its pipes.
    detach_stdio();

    service.wait_shutdown();
    tracing::info!(sandbox = %flags.id, "shim shutting down");
    server.shutdown();
    let _ = std::fs::remove_file(sock_path);
    Ok(())
}

fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let fd = null.into_raw_fd();
        // SAFETY: dup2 onto our own stdout/stderr with a valid fd, then close the spare.
        unsafe {
            libc::dup2(fd, 1);
            libc::dup2(fd, 2);
            libc::close(fd);
        }
    }
}

/// `delete`: containerd's cleanup after a shim died. Removes what the dead shim left of this
/// container (and of the sandbox, when it was the last) and reports it killed.
fn delete(flags: &containerd_shim::Flags) -> Result<()> {
    let bundle = bundle_dir(flags)?;
    let sandbox = husk_shim::spec::read_bundle_spec(&bundle)
        .map(|spec| husk_shim::spec::sandbox_id(&spec, &flags.id))
        .unwrap_or_else(|_| flags.id.clone());
    husk_shim::host::cleanup_after_crash(&flags.namespace, &sandbox, &flags.id);
    // The dead server's socket, unless a live shim still answers on it.
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &sandbox);
    let sock_path = address.trim_start_matches("unix://");
    if std::os::unix::net::UnixStream::connect(sock_path).is_err() {
        let _ = std::fs::remove_file(sock_path);
    }
    let resp = containerd_shim::api::DeleteResponse {
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: Some(service::now()).into(),
        ..Default::default()
    };
    let bytes = resp.write_to_bytes()?;
    std::io::stdout().write_all(&bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_path_from_runtime_options() {
        // runtimeoptions.v1.Options { type_url = "x" (1), config_path = "/etc/k.toml" (2) }
        let mut value = vec![0x0a, 1, b'x', 0x12, 11];
        value.extend_from_slice(b"/etc/k.toml");
        let any = Any {
            type_url: "type.googleapis.com/runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        };
        let bytes = any.write_to_bytes().unwrap();
        assert_eq!(config_path_option(&bytes).as_deref(), Some("/etc/k.toml"));
        assert_eq!(config_path_option(b""), None);
    }
}
