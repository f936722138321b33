//! The thread a virtio device serves its queues on.
//!
//! A vCPU that notifies a queue only writes to that queue's eventfd ([`QueueEvents`]); the
//! device's [`Worker`] wakes up in `epoll_wait` and does the work, so a slow request never holds
//! a vCPU or the transport's lock. Each worker waits on the fds its [`EventHandler`] registers
//! and on a stop eventfd of its own. [`Worker::stop`], or dropping the worker, signals that
//! eventfd and joins the thread: no worker outlives its device's activation. A handler that must
//! sometimes ignore a ready fd (a tap while the guest has no buffers for its frames) registers it
//! with [`Interest::readable_watch`] and switches the wake-ups off and on with its [`ReadWatch`].

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::DeviceState;

/// The token of the worker's own stop eventfd; handlers cannot register it.
pub const STOP_TOKEN: u64 = u64::MAX;
/// The most events one `epoll_wait` returns.
const EVENT_BATCH: usize = 64;
/// How long the VMM waits for a worker when it stops: one stuck in a host syscall (a FUSE read
/// of a FIFO, a hung network file system) must not keep the VMM from exiting.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("Cannot create the worker's epoll or stop event")]
    Setup(#[source] io::Error),
    #[error("Cannot watch fd {0}")]
    Register(RawFd, #[source] io::Error),
    #[error("Token {0:#x} is reserved for the stop event")]
    ReservedToken(u64),
    #[error("Cannot start the worker thread")]
    Spawn(#[source] io::Error),
    #[error("Waiting for events failed")]
    Wait(#[source] io::Error),
    #[error("The device cannot go on")]
    Device(#[source] io::Error),
}

/// What a device does on its worker thread.
pub trait EventHandler: Send + 'static {
    /// Adds the fds the handler waits on, each with the token [`Self::handle_event`] receives
    /// when it is ready. Called once, on the activating thread, before the worker starts.
    fn register(&mut self, interest: &Interest<'_>) -> Result<(), WorkerError>;

    /// Called once on the worker thread before it waits for the first event: set-up that must run
    /// under the worker's seccomp filter rather than the activating vCPU's. An error ends the
    /// worker, like one from [`Self::handle_event`].
    fn on_start(&mut self) -> Result<(), WorkerError> {
        Ok(())
    }

    /// Handles one ready fd. An error ends the worker: it is logged and the thread returns.
    fn handle_event(&mut self, token: u64, events: EventSet) -> Result<(), WorkerError>;

    /// Called after every batch of events, for work that any event may have made possible.
    fn batch_done(&mut self) {}
}

/// Where an [`EventHandler`] registers the fds it waits on.
pub struct Interest<'a> {
    epoll: &'a Arc<Epoll>,
}

impl<'a> Interest<'a> {
    /// Registration on an epoll of the caller's, for a handler driven by hand.
    #[cfg(test)]
    pub(crate) fn new(epoll: &'a Arc<Epoll>) -> Self {
        Interest { epoll }
    }

    /// Wakes the worker with `token` whenever `fd` is readable. `fd` must stay open for as long
    /// as the worker runs (the handler owns it, or a clone of it).
    pub fn readable(&self, fd: &impl AsRawFd, token: u64) -> Result<(), WorkerError> {
        if token == STOP_TOKEN {
            return Err(WorkerError::ReservedToken(token));
        }
        let fd = fd.as_raw_fd();
        self.epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(|e| WorkerError::Register(fd, e))
    }

    /// Like [`Self::readable`], but the handler can later stop and restart the wake-ups for
    /// `fd` with the returned [`ReadWatch`]. `fd` must stay open for as long as the watch is used.
    pub fn readable_watch(&self, fd: &impl AsRawFd, token: u64) -> Result<ReadWatch, WorkerError> {
        self.readable(fd, token)?;
        Ok(ReadWatch {
            epoll: self.epoll.clone(),
            fd: fd.as_raw_fd(),
            token,
            watching: true,
        })
    }
}

/// An fd the worker waits on only while its handler wants it to. Stopped, the fd is out of the
/// worker's epoll set altogether: however ready it is, even on an error or hang-up, it wakes
/// nobody, so an fd the handler cannot serve yet costs no CPU.
pub struct ReadWatch {
    epoll: Arc<Epoll>,
    fd: RawFd,
    token: u64,
    watching: bool,
}

impl ReadWatch {
    pub fn is_watching(&self) -> bool {
        self.watching
    }

    /// Starts (`true`) or stops (`false`) waking the worker when the fd is readable; a call that
    /// changes nothing makes no system call. Restarted on an fd that is already readable, the
    /// worker wakes at once.
    pub fn set(&mut self, watching: bool) -> io::Result<()> {
        if watching == self.watching {
            return Ok(());
        }
        let (op, events) = if watching {
            (ControlOperation::Add, EventSet::IN)
        } else {
            (ControlOperation::Delete, EventSet::empty())
        };
        self.epoll
            .ctl(op, self.fd, EpollEvent::new(events, self.token))?;
        self.watching = watching;
        Ok(())
    }
}

/// A running worker thread; it hands its [`EventHandler`] back when it ends.
pub struct Worker<H> {
    stop: EventFd,
    thread: Option<JoinHandle<H>>,
}

impl<H: EventHandler> Worker<H> {
    /// Starts a thread called `name` that runs `handler` until [`Worker::stop`].
    pub fn spawn(name: &str, mut handler: H) -> Result<Self, WorkerError> {
        let epoll = Arc::new(Epoll::new().map_err(WorkerError::Setup)?);
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(WorkerError::Setup)?;
        // The thread keeps its own descriptor of the stop event, so that the registration lives
        // as long as the thread does, even past a `stop_within` that gave up on it.
        let thread_stop = stop.try_clone().map_err(WorkerError::Setup)?;
        epoll
            .ctl(
                ControlOperation::Add,
                thread_stop.as_raw_fd(),
                EpollEvent::new(EventSet::IN, STOP_TOKEN),
            )
            .map_err(WorkerError::Setup)?;
        handler.register(&Interest { epoll: &epoll })?;
        let thread_name = name.to_string();
        // Created by the device spawner, so that the thread carries the worker's seccomp
        // filter, not that of the vCPU activating the device.
        let builder = std::thread::Builder::new().name(name.into());
        let thread = crate::jail::seccomp::spawn_device_thread(builder, move || {
            let handler = run(&epoll, handler, &thread_name);
            drop(thread_stop);
            handler
        })
        .map_err(WorkerError::Spawn)?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl<H> Worker<H> {
    /// Tells the thread to stop, waits for it, and returns its handler (`None` if it panicked).
    pub fn stop(mut self) -> Option<H> {
        self.stop_and_join()
    }

    /// True once the thread has returned (stopped, or ended on an error).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Like [`Worker::stop`], but waits at most `grace`; a thread still busy then is left to
    /// the process exit (and logged), and `None` is returned.
    pub fn stop_within(mut self, grace: Duration) -> Option<H> {
        let thread = self.thread.take()?;
        self.signal_stop();
        let deadline = Instant::now() + grace;
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                tracing::error!(
                    thread = thread.thread().name().unwrap_or_default(),
                    "device worker did not stop in time; it ends with the process"
                );
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        join(thread)
    }

    fn stop_and_join(&mut self) -> Option<H> {
        let thread = self.thread.take()?;
        self.signal_stop();
        join(thread)
    }

    fn signal_stop(&self) {
        if let Err(e) = self.stop.write(1) {
            // Only an overflowing counter fails, and then the event is pending anyway.
            tracing::warn!(error = %e, "cannot signal a device worker to stop");
        }
    }
}

fn join<H>(thread: JoinHandle<H>) -> Option<H> {
    match thread.join() {
        Ok(handler) => Some(handler),
        Err(_) => {
            tracing::error!("a device worker panicked");
            None
        }
    }
}

impl<H> DeviceState<Worker<H>> {
    /// Back to `Inactive`: stops the worker, if the device was activated, and waits for it.
    pub fn stop_worker(&mut self) -> Option<H> {
        self.deactivate()?.stop()
    }

    /// Like [`Self::stop_worker`], for when the VMM stops: waits at most [`SHUTDOWN_GRACE`].
    pub fn shut_down_worker(&mut self) -> Option<H> {
        self.deactivate()?.stop_within(SHUTDOWN_GRACE)
    }
}

impl<H> Drop for Worker<H> {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// The worker's loop: wait, hand each event to the handler, until the stop event or an error.
fn run<H: EventHandler>(epoll: &Epoll, mut handler: H, name: &str) -> H {
    if let Err(e) = handler.on_start() {
        log_failure(name, &e);
        return handler;
    }
    let mut events = vec![EpollEvent::default(); EVENT_BATCH];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log_failure(name, &WorkerError::Wait(e));
                return handler;
            }
        };
        for event in &events[..n] {
            if event.data() == STOP_TOKEN {
                return handler;
            }
            if let Err(e) = handler.handle_event(event.data(), event.event_set()) {
                log_failure(name, &e);
                return handler;
            }
        }
        handler.batch_done();
    }
}

fn log_failure(name: &str, e: &WorkerError) {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    tracing::error!(worker = name, error = %msg, "device worker stopped");
}

/// One eventfd per queue the device serves: a queue notification on the vCPU only writes to it,
/// and the device's worker wakes on it with the queue's index as token.
pub struct QueueEvents(Vec<EventFd>);

impl QueueEvents {
    pub fn new(count: usize) -> io::Result<Self> {
        (0..count)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<io::Result<_>>()
            .map(Self)
    }

    /// The same eventfds, for the worker to wait on while the device keeps notifying them.
    pub fn try_clone(&self) -> io::Result<Self> {
        self.0
            .iter()
            .map(EventFd::try_clone)
            .collect::<io::Result<_>>()
            .map(Self)
    }

    /// Wakes the worker for queue `index`; an index without an eventfd is ignored.
    pub fn notify(&self, index: u16) {
        if let Some(evt) = self.0.get(usize::from(index)) {
            if let Err(e) = evt.write(1) {
                tracing::warn!(queue = index, error = %e, "cannot wake a device worker");
            }
        }
    }

    /// Registers every eventfd, with its queue index as token.
    pub fn register(&self, interest: &Interest<'_>) -> Result<(), WorkerError> {
        for (index, evt) in self.0.iter().enumerate() {
            interest.readable(evt, index as u64)?;
        }
        Ok(())
    }

    /// If `token` is one of our queues, takes its pending notifications and returns its index.
    pub fn consume(&self, token: u64) -> Option<usize> {
        let index = usize::try_from(token).ok()?;
        let evt = self.0.get(index)?;
        // Nothing pending (EAGAIN) is fine: the queue is looked at either way.
        let _ = evt.read();
        Some(index)
    }

    /// Forgets pending notifications, so that a reset device does not start with stale ones.
    pub fn clear(&self) {
        for evt in &self.0 {
            let _ = evt.read();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{self, Receiver, Sender};
    use std::time::{Duration, Instant};

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    /// Reports every event it gets on a channel; fails on `fail_on`.
    struct Probe {
        evt: EventFd,
        token: u64,
        fail_on: Option<u64>,
        seen: Sender<(u64, bool)>,
    }

    impl EventHandler for Probe {
        fn register(&mut self, interest: &Interest<'_>) -> Result<(), WorkerError> {
            interest.readable(&self.evt, self.token)
        }

        fn handle_event(&mut self, token: u64, events: EventSet) -> Result<(), WorkerError> {
            let _ = self.evt.read();
            if Some(token) == self.fail_on {
                return Err(WorkerError::Device(io::Error::other("probe failure")));
            }
            let _ = self.seen.send((token, events.contains(EventSet::IN)));
            Ok(())
        }
    }

    fn probe(token: u64, fail_on: Option<u64>) -> (Probe, EventFd, Receiver<(u64, bool)>) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (tx, rx) = mpsc::channel();
        let kick = evt.try_clone().unwrap();
        (
            Probe {
                evt,
                token,
                fail_on,
                seen: tx,
            },
            kick,
            rx,
        )
    }

    fn wait_until(cond: impl Fn() -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn event_on_a_registered_fd_reaches_the_handler() {
        let (p, kick, seen) = probe(7, None);
        let worker = Worker::spawn("test-worker", p).unwrap();
        kick.write(1).unwrap();
        assert_eq!(seen.recv_timeout(WAIT).unwrap(), (7, true));
        kick.write(1).unwrap();
        assert_eq!(seen.recv_timeout(WAIT).unwrap(), (7, true));
        assert!(worker.stop().is_some());
    }

    #[test]
    fn stop_event_ends_the_loop_and_returns_the_handler() {
        let (p, _kick, _seen) = probe(1, None);
        let worker = Worker::spawn("test-worker", p).unwrap();
        assert!(!worker.is_finished());
        let handler = worker.stop().expect("the thread returns its handler");
        assert_eq!(handler.token, 1);
    }

    #[test]
    fn dropping_the_worker_joins_its_thread() {
        let (p, _kick, seen) = probe(1, None);
        let worker = Worker::spawn("test-worker", p).unwrap();
        drop(worker);
        // The handler (and its sender) is gone once the thread has been joined.
        assert_eq!(
            seen.recv_timeout(Duration::ZERO),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
    }

    /// Blocks in its first event until told to go on.
    struct Stuck {
        evt: EventFd,
        release: Receiver<()>,
        _alive: Sender<()>,
    }

    impl EventHandler for Stuck {
        fn register(&mut self, interest: &Interest<'_>) -> Result<(), WorkerError> {
            interest.readable(&self.evt, 0)
        }

        fn handle_event(&mut self, _token: u64, _events: EventSet) -> Result<(), WorkerError> {
            let _ = self.evt.read();
            let _ = self.release.recv();
            Ok(())
        }
    }

    #[test]
    fn stop_within_gives_up_on_a_stuck_worker() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let kick = evt.try_clone().unwrap();
        let (release, release_rx) = mpsc::channel();
        let (alive, alive_rx) = mpsc::channel::<()>();
        let stuck = Stuck {
            evt,
            release: release_rx,
            _alive: alive,
        };
        let worker = Worker::spawn("test-worker", stuck).unwrap();
        kick.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let start = Instant::now();
        assert!(worker.stop_within(Duration::from_millis(50)).is_none());
        assert!(start.elapsed() < WAIT);
        // Released, the thread still sees the stop event and ends on its own.
        release.send(()).unwrap();
        assert_eq!(
            alive_rx.recv_timeout(WAIT),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );

        let (p, _kick, _seen) = probe(1, None);
        let worker = Worker::spawn("test-worker", p).unwrap();
        assert!(worker.stop_within(WAIT).is_some());
    }

    #[test]
    fn device_state_stops_its_worker() {
        let (p, _kick, _seen) = probe(1, None);
        let mut state = DeviceState::Activated(Worker::spawn("test-worker", p).unwrap());
        assert!(state.stop_worker().is_some());
        assert!(!state.is_activated());
        assert!(state.stop_worker().is_none());
        assert!(state.shut_down_worker().is_none());
    }

    #[test]
    fn handler_error_ends_the_worker_without_a_panic() {
        let (p, kick, _seen) = probe(3, Some(3));
        let worker = Worker::spawn("test-worker", p).unwrap();
        kick.write(1).unwrap();
        assert!(wait_until(|| worker.is_finished()));
        assert!(worker.stop().is_some(), "the thread returned, not panicked");
    }

    #[test]
    fn stop_token_cannot_be_registered() {
        let (p, _kick, _seen) = probe(STOP_TOKEN, None);
        assert!(matches!(
            Worker::spawn("test-worker", p),
            Err(WorkerError::ReservedToken(STOP_TOKEN))
        ));
    }

    /// Stops watching its data fd whenever that is ready, without reading it, and watches it
    /// again when its control fd is kicked.
    struct Pauser {
        data: EventFd,
        control: EventFd,
        watch: Option<ReadWatch>,
        seen: Sender<&'static str>,
    }

    impl EventHandler for Pauser {
        fn register(&mut self, interest: &Interest<'_>) -> Result<(), WorkerError> {
            interest.readable(&self.control, 1)?;
            self.watch = Some(interest.readable_watch(&self.data, 0)?);
            Ok(())
        }

        fn on_start(&mut self) -> Result<(), WorkerError> {
            let _ = self.seen.send("started");
            Ok(())
        }

        fn handle_event(&mut self, token: u64, _events: EventSet) -> Result<(), WorkerError> {
            let watch = self.watch.as_mut().expect("registered");
            if token == 1 {
                let _ = self.control.read();
                watch.set(true).map_err(WorkerError::Device)?;
                let _ = self.seen.send("resumed");
            } else {
                watch.set(false).map_err(WorkerError::Device)?;
                let _ = self.seen.send("data");
            }
            Ok(())
        }
    }

    #[test]
    fn a_stopped_watch_wakes_nobody_until_it_is_restarted() {
        let data = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let control = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (kick_data, kick_control) = (data.try_clone().unwrap(), control.try_clone().unwrap());
        let (tx, seen) = mpsc::channel();
        let pauser = Pauser {
            data,
            control,
            watch: None,
            seen: tx,
        };
        let worker = Worker::spawn("test-worker", pauser).unwrap();
        assert_eq!(
            seen.recv_timeout(WAIT),
            Ok("started"),
            "on_start runs first"
        );
        kick_data.write(1).unwrap();
        assert_eq!(seen.recv_timeout(WAIT), Ok("data"));
        // Still readable, but out of the set: no more wake-ups.
        assert_eq!(
            seen.recv_timeout(Duration::from_millis(100)),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        kick_control.write(1).unwrap();
        assert_eq!(seen.recv_timeout(WAIT), Ok("resumed"));
        assert_eq!(seen.recv_timeout(WAIT), Ok("data"), "readable at once");
        let handler = worker.stop().unwrap();
        assert!(!handler.watch.unwrap().is_watching());
    }

    #[test]
    fn queue_events_wake_by_index_and_ignore_unknown_queues() {
        let evts = QueueEvents::new(2).unwrap();
        let theirs = evts.try_clone().unwrap();
        evts.notify(1);
        evts.notify(9); // no such queue: ignored
        assert!(theirs.0[0].read().is_err(), "queue 0 was not notified");
        assert_eq!(theirs.consume(1), Some(1));
        assert!(theirs.0[1].read().is_err(), "consume took the notification");
        assert_eq!(theirs.consume(2), None);
        assert_eq!(theirs.consume(STOP_TOKEN), None);
        evts.notify(0);
        evts.clear();
        assert!(theirs.0[0].read().is_err(), "clear forgot the notification");
    }
}
