//! Processes the host asked us to run: spawning with pipes or a terminal, their output, their
//! exit status (filled in by PID 1's reaper), signals and terminal size.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("process {0} already exists")]
    Exists(String),
    #[error("no process {0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The container runtime refused: its message.
    #[error("{0}")]
    Runtime(String),
}

pub struct Spec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub terminal: bool,
    pub uid: u32,
    pub gid: u32,
    pub rows: u16,
    pub columns: u16,
}

/// One running (or finished) process.
pub struct Proc {
    pub pid: i32,
    stdin: Mutex<Option<File>>,
    stdout: Mutex<Option<File>>,
    stderr: Mutex<Option<File>>,
    /// The terminal's controlling side, for resizing (tty processes only).
    pty: Option<File>,
    status: Mutex<Option<i32>>,
    exited: Condvar,
    /// Set once a WaitProcess has returned the status to the host.
    waited: std::sync::atomic::AtomicBool,
}

impl Proc {
    pub fn write_stdin(&self, data: &[u8]) -> Result<usize, std::io::Error> {
        match self.stdin.lock().expect("stdin lock").as_mut() {
            Some(f) => f.write_all(data).map(|_| data.len()),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }

    pub fn close_stdin(&self) {
        self.stdin.lock().expect("stdin lock").take();
    }

    /// Reads up to `len` bytes of stdout (or stderr); an empty result means the stream ended.
    pub fn read_output(&self, stderr: bool, len: usize) -> Result<Vec<u8>, std::io::Error> {
        let stream = if stderr { &self.stderr } else { &self.stdout };
        let mut guard = stream.lock().expect("output lock");
        let Some(f) = guard.as_mut() else {
            return Ok(Vec::new());
        };
        let mut buf = vec![0u8; len.clamp(1, 1 << 20)];
        let n = loop {
            match f.read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // A terminal whose last user closed it reads EIO: that is its end.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => break 0,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            guard.take();
        }
        buf.truncate(n);
        Ok(buf)
    }

    pub fn wait(&self) -> i32 {
        let mut status = self.status.lock().expect("status lock");
        loop {
            if let Some(s) = *status {
                self.waited.store(true, std::sync::atomic::Ordering::SeqCst);
                return s;
            }
            status = self.exited.wait(status).expect("status lock");
        }
    }

    /// True once the host has received the exit status and read both output streams to their
    /// end: nothing is left for it to collect.
    fn collected(&self) -> bool {
        self.waited.load(std::sync::atomic::Ordering::SeqCst)
            && self.stdout.lock().expect("output lock").is_none()
            && self.stderr.lock().expect("output lock").is_none()
    }

    pub fn resize(&self, rows: u16, columns: u16) -> Result<(), std::io::Error> {
        let Some(pty) = &self.pty else {
            return Err(std::io::Error::other("the process has no terminal"));
        };
        set_winsize(pty, rows, columns)
    }
}

fn set_winsize(pty: &File, rows: u16, columns: u16) -> Result<(), std::io::Error> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer; the fd is a pty we own.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(pty), libc::TIOCSWINSZ, &ws) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Held while spawning and while PID 1 reaps. Spawning must not race the reaper: the standard
/// library reaps a child whose exec failed by itself (and aborts if someone else did), and a
/// child that exits at once must already be in the pid table when its status is collected.
pub static SPAWN_LOCK: Mutex<()> = Mutex::new(());

/// Every process by exec id, and by pid for the reaper.
#[derive(Default)]
pub struct Table {
    by_id: Mutex<HashMap<String, Arc<Proc>>>,
    by_pid: Mutex<HashMap<i32, Arc<Proc>>>,
}

impl Table {
    pub fn get(&self, id: &str) -> Result<Arc<Proc>, ProcessError> {
        self.by_id
            .lock()
            .expect("table lock")
            .get(id)
            .cloned()
            .ok_or_else(|| ProcessError::NotFound(id.into()))
    }

    /// Forgets process `id` once its status and all its output were collected.
    pub fn forget_if_collected(&self, id: &str) {
        let mut by_id = self.by_id.lock().expect("table lock");
        if by_id.get(id).is_some_and(|p| p.collected()) {
            by_id.remove(id);
        }
    }

    /// Records the exit status of `pid` if it is one of ours. Called by PID 1's reaper.
    pub fn exited(&self, pid: i32, status: i32) {
        if let Some(p) = self.by_pid.lock().expect("table lock").remove(&pid) {
            *p.status.lock().expect("status lock") = Some(status);
            p.exited.notify_all();
        }
    }

    pub fn spawn(&self, id: &str, spec: Spec) -> Result<Arc<Proc>, ProcessError> {
        if spec.args.is_empty() {
            return Err(ProcessError::BadRequest(
                "the process has no arguments".into(),
            ));
        }
        let _spawning = SPAWN_LOCK.lock().expect("spawn lock");
        let mut by_id = self.by_id.lock().expect("table lock");
        if by_id.contains_key(id) {
            return Err(ProcessError::Exists(id.into()));
        }
        let mut cmd = Command::new(&spec.args[0]);
        cmd.args(&spec.args[1..]).env_clear();
        for kv in &spec.env {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        if !spec.env.iter().any(|kv| kv.starts_with("PATH=")) {
            cmd.env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
        }
        cmd.current_dir(if spec.cwd.is_empty() { "/" } else { &spec.cwd });
        cmd.uid(spec.uid).gid(spec.gid);

        let io_err = |what: &str| {
            let what = what.to_string();
            move |e| ProcessError::Io(what, e)
        };
        let (stdin, stdout, stderr, pty) = if spec.terminal {
            let (master, slave) = open_pty().map_err(io_err("cannot open a terminal"))?;
            set_winsize(&master, spec.rows.max(1), spec.columns.max(1))
                .map_err(io_err("cannot size the terminal"))?;
            let slave_fd = std::os::fd::AsRawFd::as_raw_fd(&slave);
            cmd.stdin(Stdio::from(slave.try_clone().map_err(io_err("dup"))?))
                .stdout(Stdio::from(slave.try_clone().map_err(io_err("dup"))?))
                .stderr(Stdio::from(slave));
            // SAFETY: only async-signal-safe calls between fork and exec: setsid and ioctl.
            unsafe {
                cmd.pre_exec(move || {
                    libc::setsid();
                    if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                        let _ = slave_fd;
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let out = master.try_clone().map_err(io_err("dup"))?;
            let input = master.try_clone().map_err(io_err("dup"))?;
            (Some(input), Some(out), None, Some(master))
        } else {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            (None, None, None, None)
        };
        // SAFETY: setting a signal disposition between fork and exec is async-signal-safe; the
        // child must not inherit PID 1's blocked signal mask.
        unsafe {
            cmd.pre_exec(|| {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                Ok(())
            });
        }

        let mut child = cmd
            .spawn()
            .map_err(io_err(&format!("cannot run {}", spec.args[0])))?;
        let into_file = |fd: OwnedFd| File::from(fd);
        let stdio = Stdio3 {
            stdin: stdin.or_else(|| child.stdin.take().map(|s| into_file(s.into()))),
            stdout: stdout.or_else(|| child.stdout.take().map(|s| into_file(s.into()))),
            stderr: stderr.or_else(|| child.stderr.take().map(|s| into_file(s.into()))),
            pty,
        };
        // `child` is dropped without waiting: PID 1's reaper collects every exit.
        let pid = child.id() as i32;
        drop(child);
        Ok(self.insert_locked(&mut by_id, id, pid, stdio))
    }

    /// True when a process is registered under `id`.
    pub fn contains(&self, id: &str) -> bool {
        self.by_id.lock().expect("table lock").contains_key(id)
    }

    /// Registers a process started elsewhere (a container's). The caller holds [`SPAWN_LOCK`]
    /// from before the process could exit until this returns, so its exit is not missed.
    pub fn register(&self, id: &str, pid: i32, stdio: Stdio3) -> Result<Arc<Proc>, ProcessError> {
        let mut by_id = self.by_id.lock().expect("table lock");
        if by_id.contains_key(id) {
            return Err(ProcessError::Exists(id.into()));
        }
        Ok(self.insert_locked(&mut by_id, id, pid, stdio))
    }

    /// Forgets every process whose id starts with `prefix`, collected or not.
    pub fn forget_prefix(&self, prefix: &str) {
        let mut by_id = self.by_id.lock().expect("table lock");
        let gone: Vec<String> = by_id
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        let mut by_pid = self.by_pid.lock().expect("table lock");
        for k in gone {
            if let Some(p) = by_id.remove(&k) {
                by_pid.remove(&p.pid);
            }
        }
    }

    fn insert_locked(
        &self,
        by_id: &mut HashMap<String, Arc<Proc>>,
        id: &str,
        pid: i32,
        stdio: Stdio3,
    ) -> Arc<Proc> {
        let proc = Arc::new(Proc {
            pid,
            stdin: Mutex::new(stdio.stdin),
            stdout: Mutex::new(stdio.stdout),
            stderr: Mutex::new(stdio.stderr),
            pty: stdio.pty,
            status: Mutex::new(None),
            exited: Condvar::new(),
            waited: std::sync::atomic::AtomicBool::new(false),
        });
        self.by_pid
            .lock()
            .expect("table lock")
            .insert(proc.pid, proc.clone());
        by_id.insert(id.into(), proc.clone());
        proc
    }
}

/// The agent's ends of a process's standard streams: pipes, or a terminal (`pty` then holds
/// the controlling side and stdin/stdout are copies of it).
#[derive(Default)]
pub struct Stdio3 {
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
    pub pty: Option<File>,
}

pub fn open_pty() -> Result<(File, File), std::io::Error> {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two fds into valid pointers; name, termios and winsize may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just opened by openpty and are owned by nothing else.
    Ok(unsafe { (File::from_raw_fd(master), File::from_raw_fd(slave)) })
}
