//! Test harness: a network namespace of its own (`ip netns add`), deleted on drop, also when the
//! test fails.

use std::fs::File;
use std::os::fd::AsFd;
use std::process::Command;

pub struct TestNs {
    pub name: String,
}

impl TestNs {
    /// Namespace `husk-nl-<pid>-<tag>`, with nothing but `lo` (down).
    pub fn new(tag: &str) -> TestNs {
        let name = format!("husk-nl-{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        TestNs { name }
    }

    /// `ip -n <ns> args...`
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Runs `work` on a thread inside the namespace.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let file = File::open(format!("/var/run/netns/{}", self.name)).expect("open the netns");
        crate::netns::run_in(file.as_fd(), work).expect("enter the netns")
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
