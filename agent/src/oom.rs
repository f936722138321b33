//! Out-of-memory kills in the containers' cgroups, reported to the host for containerd's
//! TaskOOM event. The kernel tells inotify watchers of a cgroup's `memory.events` when the file
//! changes; its `oom_kill` counter says whether the change was a kill.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

/// Watches the `memory.events` of each container and queues the id of a container whose
/// `oom_kill` count went up.
pub struct OomWatcher {
    inotify: Inotify,
    state: Mutex<State>,
    ready: Condvar,
}

#[derive(Default)]
struct State {
    watched: HashMap<WatchDescriptor, Watched>,
    queue: VecDeque<String>,
}

struct Watched {
    container: String,
    file: PathBuf,
    kills: u64,
}

impl OomWatcher {
    /// Starts the watcher's thread.
    pub fn start() -> std::io::Result<Arc<Self>> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC)?;
        let this = Arc::new(OomWatcher {
            inotify,
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
        });
        let watcher = this.clone();
        std::thread::Builder::new()
            .name("oom".into())
            .spawn(move || watcher.run())?;
        Ok(this)
    }

    /// Watches container `container`, whose cgroup directory is `cgroup_dir`.
    pub fn watch(&self, container: &str, cgroup_dir: &Path) -> std::io::Result<()> {
        let file = cgroup_dir.join("memory.events");
        let wd = self.inotify.add_watch(&file, AddWatchFlags::IN_MODIFY)?;
        let kills = read_kills(&file);
        self.state.lock().expect("oom lock").watched.insert(
            wd,
            Watched {
                container: container.to_string(),
                file,
                kills,
            },
        );
        Ok(())
    }

    /// Stops watching container `container` (its cgroup is going away).
    pub fn forget(&self, container: &str) {
        let mut st = self.state.lock().expect("oom lock");
        let wds: Vec<WatchDescriptor> = st
            .watched
            .iter()
            .filter(|(_, w)| w.container == container)
            .map(|(wd, _)| *wd)
            .collect();
        for wd in wds {
            st.watched.remove(&wd);
            // The watch may be gone already, with its cgroup.
            let _ = self.inotify.rm_watch(wd);
        }
    }

    /// Waits for the next out-of-memory kill and returns its container's id.
    pub fn next(&self) -> String {
        let mut st = self.state.lock().expect("oom lock");
        loop {
            if let Some(id) = st.queue.pop_front() {
                return id;
            }
            st = self.ready.wait(st).expect("oom lock");
        }
    }

    fn run(&self) {
        loop {
            let events = match self.inotify.read_events() {
                Ok(events) => events,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    crate::log::info(&format!("OOM watcher stopped: {e}"));
                    return;
                }
            };
            let mut st = self.state.lock().expect("oom lock");
            for ev in events {
                let Some(w) = st.watched.get_mut(&ev.wd) else {
                    continue;
                };
                let kills = read_kills(&w.file);
                if kills > w.kills {
                    w.kills = kills;
                    let id = w.container.clone();
                    st.queue.push_back(id);
                    self.ready.notify_all();
                }
            }
        }
    }
}

fn read_kills(file: &Path) -> u64 {
    parse_kills(&std::fs::read_to_string(file).unwrap_or_default())
}

/// The `oom_kill` count of a cgroup v2 `memory.events` file.
fn parse_kills(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kills_from_memory_events() {
        let text = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_kills(text), 1);
        assert_eq!(parse_kills(""), 0);
        assert_eq!(parse_kills("oom_kill x\n"), 0);
    }
}
