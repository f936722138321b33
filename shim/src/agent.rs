//! The host's side of the agent's ttrpc API. Connections go through husk-vmm's hybrid-vsock
//! socket (`CONNECT <port>\n`). A sandbox's [`Agent`] keeps one connection for short calls, one
//! for health checks (so that many blocked stream reads never delay them), and opens one more per
//! process for its blocking reads and wait: the agent serves each connection with its own bounded
//! thread pool.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use husk_agent_protocol::agent_ttrpc::AgentServiceClient;
use husk_agent_protocol::health::CheckRequest;
use husk_agent_protocol::health_ttrpc::HealthClient;
use husk_agent_protocol::ttrpc;

/// How an agent call failed: the agent answered with an error, or the connection did not work.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    /// The agent's answer: its status code as sent (`error` maps it to ours) and its message.
    #[error("{message}")]
    Status { code: i32, message: String },
    #[error("The agent connection failed: {0}")]
    Transport(String),
}

impl From<ttrpc::Error> for AgentError {
    fn from(e: ttrpc::Error) -> AgentError {
        match e {
            ttrpc::Error::RpcStatus(s) => AgentError::Status {
                code: s.code.value(),
                message: s.message,
            },
            other => AgentError::Transport(other.to_string()),
        }
    }
}

/// The human part of an agent error: the status message for an RPC status, else the error.
pub fn rpc_message(e: &ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// A bounded call context, for calls that answer at once.
pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(30).as_nanos() as i64)
}

/// A context without a deadline, for calls that block until something happens (reads, waits).
pub fn unbounded() -> ttrpc::context::Context {
    ttrpc::context::Context::default()
}

/// Opens a new stream to the agent's API port.
pub type Dialer = Arc<dyn Fn() -> std::io::Result<UnixStream> + Send + Sync>;

/// The dialer of a VM's agent behind husk-vmm's hybrid-vsock socket `sock`.
pub fn vsock_dialer(sock: &Path) -> Dialer {
    let sock = sock.to_path_buf();
    Arc::new(move || hybrid_connect(&sock, husk_agent_protocol::AGENT_PORT))
}

/// A sandbox's agent.
#[derive(Clone)]
pub struct Agent {
    api: AgentServiceClient,
    health: HealthClient,
    dial: Dialer,
}

impl Agent {
    /// Connects and checks that the agent answers.
    pub fn connect(dial: Dialer, timeout: Duration) -> Result<Agent, AgentError> {
        let api = client(&dial)?;
        let health = HealthClient::new(client(&dial)?);
        let agent = Agent {
            api: AgentServiceClient::new(api),
            health,
            dial,
        };
        agent.check_health(timeout)?;
        Ok(agent)
    }

    /// The connection for calls that answer at once.
    pub fn api(&self) -> &AgentServiceClient {
        &self.api
    }

    /// The health-check connection.
    pub fn health(&self) -> &HealthClient {
        &self.health
    }

    pub fn check_health(&self, timeout: Duration) -> Result<(), AgentError> {
        let ctx = ttrpc::context::with_timeout(timeout.as_nanos() as i64);
        self.health.check(ctx, &CheckRequest::new())?;
        Ok(())
    }

    /// A connection of its own, for one process's blocking reads and its wait; it closes when
    /// the last clone of the client is dropped.
    pub fn process_connection(&self) -> Result<AgentServiceClient, AgentError> {
        Ok(AgentServiceClient::new(client(&self.dial)?))
    }
}

fn client(dial: &Dialer) -> Result<ttrpc::Client, AgentError> {
    let stream = dial().map_err(|e| AgentError::Transport(e.to_string()))?;
    ttrpc::Client::new(stream.into_raw_fd()).map_err(AgentError::from)
}

/// `CONNECT <port>\n` on a hybrid-vsock socket, and its `OK <port>\n` answer.
pub fn hybrid_connect(sock: &Path, port: u32) -> std::io::Result<UnixStream> {
    let refused = |what: &str| std::io::Error::new(std::io::ErrorKind::ConnectionRefused, what);
    let mut stream = UnixStream::connect(sock)?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    // Read the reply byte by byte: nothing after its newline belongs to us.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 32 {
        match stream.read(&mut b)? {
            0 => return Err(refused("the guest closed the connection")),
            _ if b[0] == b'\n' => break,
            _ => line.push(b[0]),
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(refused("the guest did not accept the connection"));
    }
    stream.set_read_timeout(None)?;
    Ok(stream)
}

/// The longest agent log line passed on; the rest of a longer line is dropped.
const LOG_LINE_MAX: usize = 16 * 1024;

/// Passes the agent's log lines (its connections to `listener`) to `out`, until the listener
/// fails. Lines are capped: the guest does not choose how much the host buffers.
pub fn copy_log(listener: UnixListener, mut out: Box<dyn Write + Send>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { return };
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match (&mut reader)
                .take(LOG_LINE_MAX as u64)
                .read_until(b'\n', &mut line)
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if line.last() != Some(&b'\n') {
                // Too long: skip to the end of the line.
                let mut rest = Vec::new();
                if (&mut reader)
                    .take(1 << 30)
                    .read_until(b'\n', &mut rest)
                    .is_err()
                {
                    break;
                }
            }
            let text = String::from_utf8_lossy(&line);
            let _ = writeln!(out, "{}", text.trim_end());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_agent_log_lines_are_cut() {
        let dir = std::env::temp_dir().join(format!("husk-log-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("log.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        struct Sink(std::sync::mpsc::Sender<Vec<u8>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let _ = self.0.send(b.to_vec());
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        std::thread::spawn(move || copy_log(listener, Box::new(Sink(tx))));
        let mut s = UnixStream::connect(&sock).unwrap();
        s.write_all(b"first\n").unwrap();
        s.write_all(&vec![b'x'; LOG_LINE_MAX * 3]).unwrap();
        s.write_all(b"\nlast\n").unwrap();
        drop(s);
        let mut got = Vec::new();
        while let Ok(b) = rx.recv_timeout(Duration::from_secs(5)) {
            got.extend(b);
            if got.ends_with(b"last\n") {
                break;
            }
        }
        let text = String::from_utf8(got).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{}", text.len());
        assert_eq!(lines[0], "first");
        assert_eq!(lines[1].len(), LOG_LINE_MAX);
        assert_eq!(lines[2], "last");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
