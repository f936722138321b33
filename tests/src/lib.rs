//! A small harness for husk's integration tests: paths of the built artifacts, and running a
//! batch of commands where standard KVM is available (the test host, `tests/testhost/run.sh`).
//!
//! Booting the test host costs seconds, so tests that need a VM share one batch per test file:
//! the batch runs every scenario in one test-host boot, and each `#[test]` checks its own
//! scenario's section of the output.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A built artifact, relative to the repository root; panics with the command that builds it.
pub fn artifact(rel: &str) -> PathBuf {
    let p = repo().join(rel);
    assert!(
        p.exists(),
        "{} is missing: run `make build guest-image` first (make test does)",
        p.display()
    );
    p
}

pub fn vmm() -> PathBuf {
    artifact("target/release/husk-vmm")
}

pub fn kernel() -> PathBuf {
    artifact("target/guest/vmlinux")
}

pub fn initrd() -> PathBuf {
    artifact("target/guest/initramfs.img")
}

/// Runs `cmd` on this host, with no stdin.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// One scenario's output (stdout and stderr interleaved) and exit status.
#[derive(Debug, Clone)]
pub struct Section {
    pub output: String,
    pub status: i32,
}

impl Section {
    /// The rest of the first output line that starts with `prefix`, or "" if none does.
    pub fn after(&self, prefix: &str) -> &str {
        self.output
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_default()
    }
}

/// tests/testhost/run.sh's exit status for a test host that stalled.
const STALLED: i32 = 123;

/// What huskctl and husk-vmm print when the guest died under a scenario: not a reboot the guest
/// asked for (`the guest reset through the i8042 reset line`, which a scenario may expect), but a
/// triple fault, a kernel panic, a lost agent or an agent that never answered.
const GUEST_DIED: &str =
    "lost the agent|the guest reset through a triple fault|Kernel panic|did not answer within";

/// Seconds one scenario of a batch may take (a VM boot in the test host takes a few).
pub const SCENARIO_TIMEOUT: u32 = 100;

/// The result of a batch: every scenario that ran to its end, or why the batch failed (kept, so
/// that the other tests of the file fail at once instead of booting the test host again).
pub type Batch = Result<BTreeMap<String, Section>, String>;

/// Runs named shell scenarios in one test-host boot. Each scenario is a shell command line; its
/// stdout and stderr are captured together, with its exit status.
pub fn run_batch(scenarios: &[(&str, String)]) -> Batch {
    // Each scenario gets SCENARIO_TIMEOUT seconds. A scenario that times out, or whose guest
    // died under it (huskctl lost its agent, the guest reset or never answered), is run once
    // more: a safety net for the emulated test host's own faults (tests/testhost/README.md,
    // "Reliability"). The section then holds the second attempt's output after a `RETRIED`
    // line; the first attempt goes to stderr, which target/testhost-logs keeps, and
    // tests/retry-summary.sh counts every retry at the end of `make test` (more than one fails).
    let mut script = String::from("set +e\ncd \"$HUSK_REPO\"\nout=$(mktemp)\n");
    for (name, cmd) in scenarios {
        let quoted = cmd.replace('\'', "'\\''");
        let attempt = format!(
            "timeout -k 5 {SCENARIO_TIMEOUT} sh -c '{quoted}' </dev/null >\"$out\" 2>&1; rc=$?\n"
        );
        script.push_str(&format!(
            "echo '=== begin {name}'\n\
             {attempt}\
             if [ $rc = 124 ] || grep -qE '{GUEST_DIED}' \"$out\"; then \
             echo 'RETRIED {name}: the first attempt (status '$rc') is on stderr'; \
             sed 's/^/first attempt of {name}: /' \"$out\" >&2\n\
             {attempt}fi\n\
             cat \"$out\"\n\
             echo \"=== end {name} $rc\"\n"
        ));
    }
    // A batch that hangs must fail in minutes, not at CI's limit.
    let timeout = std::env::var("HUSK_TESTHOST_TIMEOUT")
        .unwrap_or_else(|_| (60 + 2 * SCENARIO_TIMEOUT as usize * scenarios.len()).to_string());
    testhost_batch(&["sh", "-c", &script], &timeout)
}

/// The batch of a scenario script that drives containerd with our shim (`script`, relative to
/// the repository): the VMM, guest image and shim must be built, and `extra` artifacts too.
pub fn shim_scenarios_batch(script: &str, extra: &[&str]) -> Batch {
    let _ = (vmm(), kernel(), initrd());
    let _ = artifact("target/release/containerd-shim-kata-v2");
    for a in extra {
        let _ = artifact(a);
    }
    testhost_batch(&[&repo().join(script).to_string_lossy()], "900")
}

/// Runs `args` in the test host (from the repository, within `timeout` seconds) and splits its
/// stdout into the sections it framed with `=== begin` / `=== end` lines.
/// A test host whose emulated machine stalls (rare, under TCG) is killed by run.sh with status
/// 123; the batch then runs once more, and says so on stderr.
pub fn testhost_batch(args: &[&str], timeout: &str) -> Batch {
    let launch = || {
        run(Command::new(repo().join("tests/testhost/run.sh"))
            .args(args)
            .env("HUSK_REPO", repo())
            .env("HUSK_TESTHOST_TIMEOUT", timeout)
            .current_dir(repo()))
    };
    let mut out = launch();
    keep_log(args, &out);
    if out.status.code() == Some(STALLED) {
        eprintln!(
            "RETRIED the batch: the test host stalled\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out = launch();
        keep_log(args, &out);
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "the test host failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(parse_sections(&stdout))
}

/// Appends a batch's output to target/testhost-logs/NAME.log (NAME from its script), so that
/// what passing tests do not show (a stalled test host, a retried boot) can be read after a run.
fn keep_log(args: &[&str], out: &Output) {
    let name = args
        .iter()
        .rev()
        .find_map(|a| a.rsplit('/').next().filter(|n| n.ends_with(".sh")))
        .unwrap_or("batch");
    let dir = repo().join("target/testhost-logs");
    let _ = std::fs::create_dir_all(&dir);
    let text = format!(
        "--- exit {:?}\n--- stdout\n{}\n--- stderr\n{}\n",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    use std::io::Write as _;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
    {
        let _ = f.write_all(text.as_bytes());
    }
}

/// The scenario's `leftovers` listing has no line of these kinds.
pub fn assert_nothing_left(s: &Section, kinds: &[&str]) {
    let left: Vec<&str> = s
        .output
        .lines()
        .filter(|l| kinds.iter().any(|k| l.starts_with(k)))
        .collect();
    assert!(left.is_empty(), "{left:?}\n{}", s.output);
}

/// Scenario `name` of a batch, or a panic that shows why the batch failed or every scenario's
/// output.
pub fn section<'a>(batch: &'a Batch, name: &str) -> &'a Section {
    let batch = batch.as_ref().unwrap_or_else(|why| panic!("{why}"));
    batch
        .get(name)
        .unwrap_or_else(|| panic!("scenario {name} did not run to its end: {batch:#?}"))
}

fn parse_sections(stdout: &str) -> BTreeMap<String, Section> {
    let mut sections = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in stdout.lines() {
        if let Some(name) = line.strip_prefix("=== begin ") {
            current = Some((name.to_string(), String::new()));
        } else if let Some(rest) = line.strip_prefix("=== end ") {
            let (name, status) = rest.rsplit_once(' ').unwrap_or((rest, "-1"));
            if let Some((cur, output)) = current.take() {
                if cur == name {
                    let status = status.parse().unwrap_or(-1);
                    sections.insert(cur, Section { output, status });
                }
            }
        } else if let Some((_, output)) = current.as_mut() {
            output.push_str(line);
            output.push('\n');
        }
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_split_by_markers() {
        let s = parse_sections("noise\n=== begin a\nx\ny\n=== end a 3\n=== begin b\n=== end b 0\n");
        assert_eq!(s["a"].output, "x\ny\n");
        assert_eq!(s["a"].status, 3);
        assert_eq!(s["b"].status, 0);
    }

    #[test]
    fn unterminated_section_is_missing() {
        let s = parse_sections("=== begin a\nx\n");
        assert!(!s.contains_key("a"));
    }
}
