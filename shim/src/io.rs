//! A process's stdio between the host and the agent's stream calls: output read from the agent
//! and written to a host file (containerd's fifos, or huskctl's own stdout), input read from a
//! host file and written to the agent. Used by the shim and by huskctl.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::sync::mpsc;

use husk_agent_protocol::agent as pb;
use husk_agent_protocol::agent_ttrpc::AgentServiceClient;

use crate::agent::{ctx, unbounded};

/// Bytes asked for per ReadStdout/ReadStderr call.
pub const READ_CHUNK: u32 = 128 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Copies one output stream of process (`cid`, `eid`) to `out` until the process closes it or
/// the agent goes. A writer that fails (a reader that went away) is dropped and the stream
/// still drained, so that the process never blocks on a full pipe.
pub fn pump_output(
    agent: &AgentServiceClient,
    cid: &str,
    eid: &str,
    stream: Stream,
    mut out: Option<Box<dyn Write + Send>>,
) {
    let req = pb::ReadStreamRequest {
        container_id: cid.into(),
        exec_id: eid.into(),
        len: READ_CHUNK,
        ..Default::default()
    };
    loop {
        let r = match stream {
            Stream::Stdout => agent.read_stdout(unbounded(), &req),
            Stream::Stderr => agent.read_stderr(unbounded(), &req),
        };
        let data = match r {
            Ok(r) if !r.data.is_empty() => r.data,
            _ => return,
        };
        if let Some(w) = out.as_mut() {
            if w.write_all(&data).and_then(|_| w.flush()).is_err() {
                out = None;
            }
        }
    }
}

/// Copies `input` to the process's stdin until EOF, then closes the process's stdin.
pub fn pump_input(agent: &AgentServiceClient, cid: &str, eid: &str, mut input: impl Read) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let req = pb::WriteStreamRequest {
            container_id: cid.into(),
            exec_id: eid.into(),
            data: buf[..n].to_vec(),
            ..Default::default()
        };
        if agent.write_stdin(ctx(), &req).is_err() {
            return;
        }
    }
    close_stdin(agent, cid, eid);
}

pub fn close_stdin(agent: &AgentServiceClient, cid: &str, eid: &str) {
    let req = pb::CloseStdinRequest {
        container_id: cid.into(),
        exec_id: eid.into(),
        ..Default::default()
    };
    let _ = agent.close_stdin(ctx(), &req);
}

/// Opens one of containerd's output fifos read-write, as containerd's own shims do: the open
/// does not wait for containerd's side, and output survives a client that detaches (`ctr run
/// -d`) for the next one that attaches.
fn open_fifo_for_output(path: &str) -> Option<Box<dyn Write + Send>> {
    if path.is_empty() {
        return None;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .ok()
        .map(|f| Box::new(f) as Box<dyn Write + Send>)
}

/// The copiers of a process with containerd's fifos.
pub struct FifoIo {
    /// Yields once per output stream that finished.
    pub outputs_done: mpsc::Receiver<()>,
    pub outputs: usize,
    pub stdin: Option<std::thread::JoinHandle<()>>,
}

/// Starts copying process (`cid`, `eid`)'s output to containerd's fifos and containerd's input
/// to it. Without an stdin fifo, the process reads EOF (as from /dev/null) — unless it has a
/// terminal, which stays open.
pub fn start_fifo_io(
    agent: &AgentServiceClient,
    cid: &str,
    eid: &str,
    stdio: &crate::container::Stdio,
) -> FifoIo {
    let (done_tx, outputs_done) = mpsc::channel();
    let mut streams = vec![(Stream::Stdout, stdio.stdout.clone())];
    if !stdio.terminal {
        streams.push((Stream::Stderr, stdio.stderr.clone()));
    }
    let outputs = streams.len();
    for (stream, path) in streams {
        let agent = agent.clone();
        let (cid, eid) = (cid.to_string(), eid.to_string());
        let tx = done_tx.clone();
        std::thread::spawn(move || {
            pump_output(&agent, &cid, &eid, stream, open_fifo_for_output(&path));
            let _ = tx.send(());
        });
    }
    let stdin = if stdio.stdin.is_empty() {
        if !stdio.terminal {
            close_stdin(agent, cid, eid);
        }
        None
    } else {
        let agent = agent.clone();
        let (cid, eid, path) = (cid.to_string(), eid.to_string(), stdio.stdin.clone());
        Some(std::thread::spawn(move || {
            // Blocks (in this thread only) until containerd opens its end of the fifo: reading
            // before that would see an end of file.
            match std::fs::File::open(&path) {
                Ok(f) => pump_input(&agent, &cid, &eid, f),
                Err(_) => close_stdin(&agent, &cid, &eid),
            }
        }))
    };
    FifoIo {
        outputs_done,
        outputs,
        stdin,
    }
}
