//! The agent answers over vsock: `huskctl run` end to end (exit statuses, stdio, a terminal) and
//! the agent API driven directly by `husk-agent-check` (concurrent processes, signals, errors,
//! misbehaving socket clients). All of it in one test-host boot.

use std::sync::OnceLock;

use husk_integration::{artifact, initrd, kernel, run_batch, vmm, Batch, Section};

fn batch() -> &'static Batch {
    static BATCH: OnceLock<Batch> = OnceLock::new();
    BATCH.get_or_init(|| {
        // The artifacts must exist before the batch runs (they are found beside huskctl).
        let _ = (vmm(), kernel(), initrd());
        let huskctl = artifact("target/release/huskctl");
        let run = |cmd: &str| format!("{} run -- {cmd}", huskctl.display());
        let check = env!("CARGO_BIN_EXE_husk-agent-check");
        run_batch(&[
            ("exit_0", format!("{}; echo rc=$?", run("/bin/true"))),
            ("exit_1", format!("{}; echo rc=$?", run("/bin/false"))),
            ("exit_42", format!("{}; echo rc=$?", run("/bin/sh -c 'exit 42'"))),
            ("killed", format!("{}; echo rc=$?", run("/bin/sh -c 'kill -9 $$'"))),
            (
                "out_err",
                format!(
                    "e=$(mktemp); o=$({} 2>$e); echo rc=$?; echo \"stdout=[$o]\"; echo \"stderr=[$(cat $e)]\"",
                    run("/bin/sh -c 'echo out; echo err >&2; exit 7'")
                ),
            ),
            (
                "ten_mib",
                format!(
                    "h=$(mktemp); {} 2>$h | sha256sum | cut -d' ' -f1 | sed 's/^/host /'; sed 's/^/guest /' $h",
                    run("/bin/sh -c 'head -c 10485760 /dev/urandom > /tmp/f; sha256sum /tmp/f | cut -d\" \" -f1 >&2; cat /tmp/f'")
                ),
            ),
            ("stdin_line", format!("echo hello-stdin | {}", run("/bin/sh -c 'read l; echo got:$l'"))),
            ("stdin_eof", format!("printf 'a\\nb\\nc\\n' | {}", run("wc -l"))),
            (
                "tty",
                format!(
                    "script -qec \"{} run -t -- /bin/sh -c 'tty; stty size; exit 3'\" /dev/null; echo rc=$?",
                    huskctl.display()
                ),
            ),
            ("agent_api", format!("{check} check")),
        ])
    })
}

fn section(name: &str) -> &'static Section {
    husk_integration::section(batch(), name)
}

fn lines(s: &Section) -> Vec<&str> {
    s.output.lines().map(str::trim).collect()
}

#[test]
fn exit_statuses_are_passed_through() {
    for (name, rc) in [
        ("exit_0", "rc=0"),
        ("exit_1", "rc=1"),
        ("exit_42", "rc=42"),
        ("killed", "rc=137"),
    ] {
        let s = section(name);
        assert!(lines(s).contains(&rc), "{name}: {}", s.output);
    }
}

#[test]
fn stdout_and_stderr_are_kept_apart() {
    let s = section("out_err");
    let l = lines(s);
    assert!(l.contains(&"rc=7"), "{}", s.output);
    assert!(l.contains(&"stdout=[out]"), "{}", s.output);
    assert!(l.contains(&"stderr=[err]"), "{}", s.output);
}

#[test]
fn ten_mib_of_stdout_arrive_intact() {
    let s = section("ten_mib");
    let (host, guest) = (s.after("host "), s.after("guest "));
    assert_eq!(host.len(), 64, "{}", s.output);
    assert_eq!(host, guest, "{}", s.output);
}

#[test]
fn stdin_is_piped_through() {
    let s = section("stdin_line");
    assert!(lines(s).contains(&"got:hello-stdin"), "{}", s.output);
    assert_eq!(s.status, 0, "{}", s.output);
}

#[test]
fn stdin_eof_reaches_the_guest() {
    let s = section("stdin_eof");
    assert!(lines(s).contains(&"3"), "{}", s.output);
}

#[test]
fn tty_gives_a_terminal() {
    let s = section("tty");
    assert!(s.output.contains("/dev/pts/"), "{}", s.output);
    assert!(lines(s).contains(&"rc=3"), "{}", s.output);
}

#[test]
fn agent_api_checks_pass() {
    let s = section("agent_api");
    let failed: Vec<&str> = s.output.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(failed.is_empty(), "{}", s.output);
    for name in [
        "eight_concurrent_execs",
        "signal_kills",
        "unlistened_port_is_closed",
        "garbage_handshake_leaves_the_vmm_serving",
    ] {
        assert!(
            lines(s).contains(&format!("ok {name}").as_str()),
            "{name} missing: {}",
            s.output
        );
    }
    assert_eq!(s.status, 0, "{}", s.output);
}
