//! A container of the sandbox and its processes (the init and the execs), as state machines
//! without I/O: Created → Starting → Running → Stopped, or Created → Stopped for a process that
//! will never run. Every way into Stopped wakes the waiters exactly once.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

use crate::error::{Error, Result};

/// containerd's exit status for a process whose real status is unknown (a start that failed, a
/// lost agent).
pub const UNKNOWN_EXIT: u32 = 255;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    Created,
    /// Start was called and has not finished yet: a second Start is refused.
    Starting,
    Running,
    Stopped,
}

/// Where containerd connects the process's stdio (fifo paths, empty for none).
#[derive(Clone, Debug, Default)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// A process's state as containerd's State call reports it.
#[derive(Clone, Debug)]
pub struct ProcessStatus {
    pub phase: Phase,
    pub paused: bool,
    pub exit_status: u32,
    pub exited_at: Option<SystemTime>,
}

/// How a process ended: what Wait returns and TaskExit announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

pub struct Process {
    pub container: String,
    /// Empty for a container's init.
    pub exec_id: String,
    /// What containerd calls the task's pid: the VMM's (guest pids mean nothing on the host).
    pub pid: u32,
    pub stdio: Stdio,
    /// An exec's OCI process, as JSON.
    pub spec: Vec<u8>,
    state: Mutex<ProcessStatus>,
    changed: Condvar,
    /// The copier of containerd's stdin fifo, which CloseIO lets finish.
    pub stdin_copier: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Process {
    pub fn new(container: &str, exec_id: &str, pid: u32, stdio: Stdio, spec: Vec<u8>) -> Process {
        Process {
            container: container.into(),
            exec_id: exec_id.into(),
            pid,
            stdio,
            spec,
            state: Mutex::new(ProcessStatus {
                phase: Phase::Created,
                paused: false,
                exit_status: 0,
                exited_at: None,
            }),
            changed: Condvar::new(),
            stdin_copier: Mutex::new(None),
        }
    }

    /// The container id for an init, the exec id for an exec: containerd's id of the process.
    pub fn id(&self) -> &str {
        if self.exec_id.is_empty() {
            &self.container
        } else {
            &self.exec_id
        }
    }

    fn what(&self) -> String {
        if self.exec_id.is_empty() {
            format!("Container {}", self.container)
        } else {
            format!("Exec {}", self.exec_id)
        }
    }

    pub fn status(&self) -> ProcessStatus {
        self.state.lock().expect("process lock").clone()
    }

    pub fn phase(&self) -> Phase {
        self.status().phase
    }

    /// Created → Starting; any other phase refuses a second start.
    pub fn begin_start(&self) -> Result<()> {
        let mut st = self.state.lock().expect("process lock");
        if st.phase != Phase::Created {
            return Err(Error::AlreadyStarted(self.what()));
        }
        st.phase = Phase::Starting;
        Ok(())
    }

    /// Starting → Running.
    pub fn started(&self) {
        let mut st = self.state.lock().expect("process lock");
        if st.phase == Phase::Starting {
            st.phase = Phase::Running;
        }
    }

    fn stop(&self, from: &[Phase], status: u32) -> Option<Exit> {
        let mut st = self.state.lock().expect("process lock");
        if !from.contains(&st.phase) {
            return None;
        }
        let at = SystemTime::now();
        st.phase = Phase::Stopped;
        st.paused = false;
        st.exit_status = status;
        st.exited_at = Some(at);
        self.changed.notify_all();
        Some(Exit { status, at })
    }

    /// Starting → Stopped: the start failed; the process never ran.
    pub fn start_failed(&self) -> Option<Exit> {
        self.stop(&[Phase::Starting], UNKNOWN_EXIT)
    }

    /// Running → Stopped with the process's exit status.
    pub fn exited(&self, status: u32) -> Option<Exit> {
        self.stop(&[Phase::Running, Phase::Starting], status)
    }

    /// Created → Stopped: killed with `signal` or deleted before it was started. `None` if it
    /// was not (or no longer) waiting to start.
    pub fn never_ran(&self, signal: u32) -> Option<Exit> {
        self.stop(&[Phase::Created], 128 + signal)
    }

    pub fn set_paused(&self, paused: bool) {
        self.state.lock().expect("process lock").paused = paused;
    }

    /// Blocks until the process stopped.
    pub fn wait(&self) -> Exit {
        let mut st = self.state.lock().expect("process lock");
        while st.phase != Phase::Stopped {
            st = self.changed.wait(st).expect("process lock");
        }
        Exit {
            status: st.exit_status,
            at: st.exited_at.unwrap_or_else(SystemTime::now),
        }
    }
}

/// Signals that do nothing to a process that has not started (their default is to ignore, or 0,
/// which only probes).
pub fn harmless_before_start(signal: u32) -> bool {
    signal == 0
        || [libc::SIGCHLD, libc::SIGCONT, libc::SIGURG, libc::SIGWINCH]
            .iter()
            .any(|s| *s as u32 == signal)
}

pub struct Container {
    pub bundle: String,
    pub init: Arc<Process>,
    pub execs: HashMap<String, Arc<Process>>,
}

impl Container {
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::ExecNotFound {
                container: self.init.container.clone(),
                exec: exec_id.into(),
            })
    }
}

/// Container ids become file names on the host: only containerd's own id alphabet.
pub fn check_id(id: &str) -> Result<()> {
    // 76 is containerd's own limit.
    if husk_agent_protocol::is_plain_name(id, 76) {
        Ok(())
    } else {
        Err(Error::BadId(id.into()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn proc() -> Process {
        Process::new("c1", "", 7, Stdio::default(), Vec::new())
    }

    #[test]
    fn start_once_then_exit_once() {
        let p = proc();
        p.begin_start().unwrap();
        assert!(matches!(p.begin_start(), Err(Error::AlreadyStarted(_))));
        p.started();
        assert_eq!(p.phase(), Phase::Running);
        assert_eq!(p.exited(3).map(|e| e.status), Some(3));
        assert_eq!(p.exited(4), None, "a second exit changes nothing");
        assert_eq!(p.wait().status, 3);
        assert!(matches!(p.begin_start(), Err(Error::AlreadyStarted(_))));
    }

    #[test]
    fn waits_end_for_processes_that_never_run() {
        let killed = proc();
        assert_eq!(
            killed.never_ran(libc::SIGKILL as u32).map(|e| e.status),
            Some(137)
        );
        assert_eq!(killed.wait().status, 137);

        let failed = proc();
        failed.begin_start().unwrap();
        assert_eq!(failed.never_ran(9), None, "being started: not 'never ran'");
        assert_eq!(failed.start_failed().map(|e| e.status), Some(UNKNOWN_EXIT));
        assert_eq!(failed.wait().status, 255);
    }

    #[test]
    fn a_waiter_wakes_when_the_process_stops() {
        let p = Arc::new(proc());
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || p.wait())
        };
        std::thread::sleep(Duration::from_millis(50));
        p.never_ran(15);
        assert_eq!(waiter.join().unwrap().status, 143);
    }

    #[test]
    fn probing_signals_do_not_stop_a_created_process() {
        assert!(harmless_before_start(0));
        assert!(harmless_before_start(libc::SIGWINCH as u32));
        assert!(!harmless_before_start(libc::SIGTERM as u32));
    }

    #[test]
    fn container_ids_cannot_leave_the_share() {
        for good in ["c1", "a.b-c_d", &"x".repeat(76)] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "a b",
            &"x".repeat(77),
        ] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }
}
