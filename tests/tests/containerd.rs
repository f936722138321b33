//! `ctr` against a private containerd whose `io.containerd.kata.v2` runtime is our
//! containerd-shim-kata-v2: every container runs in its own husk VM. One test-host boot runs all
//! the scenarios of tests/containerd/husk-scenarios.sh; each test checks one of them.

use std::sync::OnceLock;

use husk_integration::{assert_nothing_left, shim_scenarios_batch, Batch, Section};

fn batch() -> &'static Batch {
    static BATCH: OnceLock<Batch> = OnceLock::new();
    BATCH.get_or_init(|| {
        shim_scenarios_batch(
            "tests/containerd/husk-scenarios.sh",
            &["target/release/husk-task-update"],
        )
    })
}

fn section(name: &str) -> &'static Section {
    husk_integration::section(batch(), name)
}

#[test]
fn ctr_run_rm_prints_the_output() {
    let s = section("echo");
    assert_eq!(s.status, 0, "{}", s.output);
    assert!(s.output.contains("hello from husk"), "{}", s.output);
}

#[test]
fn the_exit_status_reaches_ctr() {
    let s = section("exit_status");
    assert_eq!(s.status, 3, "{}", s.output);
    assert!(s.output.contains("before"), "{}", s.output);
}

#[test]
fn stdin_reaches_the_container() {
    let s = section("stdin");
    assert_eq!(s.status, 0, "{}", s.output);
    assert!(
        s.output.contains("got: a line from the host"),
        "{}",
        s.output
    );
    // `wc -l` ends only at EOF.
    assert_eq!(s.after("rest "), "2", "{}", s.output);
}

#[test]
fn a_tty_container_gets_a_terminal() {
    let s = section("tty");
    assert_eq!(s.status, 0, "{}", s.output);
    assert!(s.output.contains("/dev/pts/0"), "{}", s.output);
    assert!(s.output.contains("tty-done"), "{}", s.output);
}

#[test]
fn env_cwd_and_pid_namespace_come_from_the_spec() {
    let s = section("oci");
    assert_eq!(s.status, 0, "{}", s.output);
    assert_eq!(s.after("env "), "FOO=bar", "{}", s.output);
    assert_eq!(s.after("cwd "), "/tmp", "{}", s.output);
    assert_eq!(s.after("id "), "0:0", "{}", s.output);
    // The container's command is PID 1 of its own PID namespace, not our agent.
    assert!(s.after("pid1 ").starts_with("sh -c"), "{}", s.output);
    // No hostname in ctr's spec: the host's name, as under runc; never the guest's "(none)".
    let host = s.after("host name ");
    assert!(!host.is_empty(), "{}", s.output);
    assert_eq!(s.after("hostname "), host, "{}", s.output);
    // --memory-limit reaches the container's cgroup in the guest.
    assert_eq!(s.after("memory.max "), "100663296", "{}", s.output);
}

#[test]
fn ctr_task_update_and_ps_reach_the_guest() {
    let s = section("update");
    assert_eq!(s.status, 0, "{}", s.output);
    assert_eq!(s.after("update status "), "0", "{}", s.output);
    assert_eq!(s.after("memory.max "), "67108864", "{}", s.output);
    assert_eq!(s.after("cpu.max "), "50000 100000", "{}", s.output);
    // Resources that are not OCI LinuxResources are refused, with the reason.
    assert_eq!(s.after("bad update status "), "1", "{}", s.output);
    assert!(s.output.contains("not OCI LinuxResources"), "{}", s.output);
    // sh and its sleep.
    assert_eq!(s.after("ps count "), "2", "{}", s.output);
}

#[test]
fn ctr_task_pause_and_resume_freeze_the_container() {
    let s = section("pause");
    assert_eq!(s.status, 0, "{}", s.output);
    assert_eq!(s.after("pause status "), "0", "{}", s.output);
    let states: Vec<&str> = s
        .output
        .lines()
        .filter_map(|l| l.strip_prefix("ls: "))
        .collect();
    assert_eq!(states, ["PAUSED", "RUNNING"], "{}", s.output);
    // A paused container takes no new process, and says why.
    assert!(
        s.output.contains("is paused: resume it first"),
        "{}",
        s.output
    );
    assert_ne!(s.after("exec while paused "), "0", "{}", s.output);
    assert_eq!(s.after("resume status "), "0", "{}", s.output);
    assert!(s.output.contains("pz1 answers"), "{}", s.output);
    assert!(s.output.contains("event /tasks/paused"), "{}", s.output);
    assert!(s.output.contains("event /tasks/resumed"), "{}", s.output);
}

#[test]
fn an_out_of_memory_kill_is_a_task_oom_event() {
    let s = section("oom");
    assert!(s.output.contains("filling"), "{}", s.output);
    assert_eq!(s.after("status "), "137", "{}", s.output);
    assert!(s.output.contains("event /tasks/oom"), "{}", s.output);
}

#[test]
fn exec_into_a_running_container() {
    let s = section("exec");
    assert_eq!(s.status, 0, "{}", s.output);
    assert_eq!(s.after("ls: "), "RUNNING", "{}", s.output);
    assert!(s.output.contains("exec ok"), "{}", s.output);
    assert_eq!(s.after("exec status "), "5", "{}", s.output);
    assert_eq!(s.after("exec user "), "65534", "{}", s.output);
    assert!(s.output.contains("exec-tty-done"), "{}", s.output);
    assert_eq!(s.after("after kill c1: "), "STOPPED", "{}", s.output);
    assert!(s.output.contains("exit code 137"), "{}", s.output);
}

#[test]
fn sigterm_stops_a_container_that_handles_it() {
    let s = section("sigterm");
    assert_eq!(s.status, 0, "{}", s.output);
    assert_eq!(s.after("after SIGTERM: "), "STOPPED", "{}", s.output);
    // The trap exits 0, so ctr has no non-zero exit to warn about.
    assert!(!s.output.contains("non-zero exit code"), "{}", s.output);
}

#[test]
fn two_containers_run_at_once_in_two_vms() {
    let s = section("two");
    assert_eq!(s.status, 0, "{}", s.output);
    assert!(s.output.contains("ls: p1 RUNNING"), "{}", s.output);
    assert!(s.output.contains("ls: p2 RUNNING"), "{}", s.output);
    assert_eq!(s.after("vmms: "), "2", "{}", s.output);
    assert!(s.output.contains("p2 answers"), "{}", s.output);
    let cgroups: Vec<&str> = s
        .output
        .lines()
        .filter_map(|l| l.strip_prefix("vmm cgroup /"))
        .collect();
    assert_eq!(cgroups.len(), 2, "{}", s.output);
    for c in ["p1", "p2"] {
        assert!(
            cgroups.iter().any(|g| g.ends_with(&format!("/{c}"))),
            "{}",
            s.output
        );
    }
}

#[test]
fn a_restarted_containerd_finds_the_running_task_again() {
    let s = section("restart");
    assert_eq!(s.status, 0, "{}", s.output);
    assert_eq!(s.after("after restart: "), "RUNNING", "{}", s.output);
    assert!(s.output.contains("r1 answers"), "{}", s.output);
    // The shim's events reach the new containerd.
    assert!(s.output.contains("event /tasks/exit"), "{}", s.output);
}

#[test]
fn a_dead_vm_stops_its_tasks_and_leaves_nothing() {
    let s = section("vmm_killed");
    assert_eq!(s.status, 0, "{}", s.output);
    assert_eq!(s.after("after the VMM died: "), "STOPPED", "{}", s.output);
    assert_eq!(s.after("delete status "), "0", "{}", s.output);
    assert_nothing_left(s, &["vmm pid", "sandbox dir", "mount ", "cgroup "]);
}

#[test]
fn a_guest_that_stops_answering_is_killed_and_its_task_stops() {
    let s = section("vmm_hung");
    assert_eq!(s.status, 0, "{}", s.output);
    assert_eq!(s.after("after the VMM froze: "), "STOPPED", "{}", s.output);
    assert_eq!(s.after("delete status "), "0", "{}", s.output);
    assert_eq!(s.after("health kills "), "1", "{}", s.output);
    assert_nothing_left(s, &["vmm pid", "sandbox dir", "mount ", "cgroup "]);
}

#[test]
fn a_broken_configuration_names_file_and_key() {
    let s = section("bad_config");
    assert_eq!(s.after("status "), "1", "{}", s.output);
    assert!(
        s.output
            .contains("bad.toml: hypervisor.husk.default_memory"),
        "{}",
        s.output
    );
}

#[test]
fn a_missing_kernel_names_the_path() {
    let s = section("missing_kernel");
    assert_eq!(s.after("status "), "1", "{}", s.output);
    assert!(
        s.output
            .contains("/nonexistent/husk/vmlinux does not exist"),
        "{}",
        s.output
    );
}

#[test]
fn nothing_is_left_after_the_last_delete() {
    let s = section("cleanup");
    assert_eq!(s.status, 0, "{}", s.output);
    assert_eq!(s.output.trim(), "leftovers checked", "{}", s.output);
}

#[test]
fn output_written_just_before_exit_is_not_lost() {
    let s = section("big_output");
    assert_eq!(s.after("status "), "0", "{}", s.output);
    assert_eq!(s.after("lines "), "200001", "{}", s.output);
    assert_eq!(s.after("tail "), "last line", "{}", s.output);
}

#[test]
fn task_events_and_metrics_reach_containerd() {
    let s = section("events");
    assert_eq!(s.status, 0, "{}", s.output);
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/delete",
    ] {
        assert!(
            s.output.contains(&format!("event {topic}")),
            "{topic}\n{}",
            s.output
        );
    }
    assert!(
        s.output.contains("pids.current             1"),
        "{}",
        s.output
    );
}

#[test]
fn containers_of_one_cri_sandbox_share_its_vm() {
    let s = section("pod");
    assert_eq!(s.status, 0, "{}", s.output);
    assert_eq!(s.after("vmms: "), "1", "{}", s.output);
    assert_eq!(s.after("shims: "), "1", "{}", s.output);
    assert!(s.output.contains("w1 in pod"), "{}", s.output);
    assert_eq!(s.after("after deleting w1: "), "vmms 1", "{}", s.output);
    assert_eq!(s.after("after deleting podA: "), "vmms 0", "{}", s.output);
}

#[test]
fn a_killed_shim_is_cleaned_up_by_delete() {
    let s = section("shim_crash");
    assert_eq!(s.status, 0, "{}", s.output);
    assert_eq!(s.after("vmms before: "), "1", "{}", s.output);
    assert_eq!(s.after("vmms after: "), "0", "{}", s.output);
    assert_nothing_left(
        s,
        &["vmm pid", "sandbox dir", "mount ", "socket ", "cgroup "],
    );
}

#[test]
fn ctr_attach_gets_the_output_of_a_detached_container() {
    let s = section("attach");
    assert_eq!(s.status, 0, "{}", s.output);
    // Output written while nobody was attached is kept for the next client.
    assert!(s.output.contains("attached tick 1"), "{}", s.output);
    assert!(s.output.contains("attached tick 3"), "{}", s.output);
}

#[test]
fn a_hostile_container_cannot_steer_the_shim_through_the_share() {
    let s = section("hostile_share");
    assert_eq!(s.status, 0, "{}", s.output);
    assert!(s.output.contains("share entry rootfs"), "{}", s.output);
    // The guest's view of the share is read-only above the container's own files...
    for attempt in [
        "rm mounts: ",
        "ln in mounts: ",
        "mv mounts: ",
        "ln x: ",
        "ln hs2: ",
    ] {
        assert!(
            s.after(attempt).contains("Read-only file system"),
            "{attempt}\n{}",
            s.output
        );
    }
    // ...which stay as writable as the spec says.
    assert!(s.output.contains("rootfs writable"), "{}", s.output);
    assert!(s.output.contains("bind writable"), "{}", s.output);
    assert_eq!(s.after("volume "), "from-guest", "{}", s.output);
    assert!(s.output.contains("hs2 runs"), "{}", s.output);
    // Nothing outside the sandbox was touched, nothing of it is left.
    assert_eq!(s.after("victim "), "keep", "{}", s.output);
    assert_eq!(s.after("victim entries "), "1", "{}", s.output);
    assert_nothing_left(
        s,
        &["vmm pid", "sandbox dir", "mount ", "socket ", "cgroup "],
    );
}

#[test]
fn a_hostile_container_cannot_reach_the_agent_or_make_host_devices() {
    let s = section("hostile_guest");
    assert_eq!(s.status, 0, "{}", s.output);
    // A container cannot even open a vsock socket: the agent's own seccomp filter, inherited by
    // everything it starts, answers as a kernel without vsock would.
    for cid in ["1", "2", "3"] {
        let verdict = s.after(&format!("CID {cid}: "));
        assert_eq!(
            verdict, "refused (socket: Address family not supported by protocol)",
            "CID {cid}\n{}",
            s.output
        );
    }
    // virtio-fs serves files, not devices, and no file capabilities.
    assert!(
        s.after("mknod c: ").contains("not permitted"),
        "{}",
        s.output
    );
    assert!(
        s.after("mknod b: ").contains("not permitted"),
        "{}",
        s.output
    );
    assert!(s.output.contains("mknod p: ok"), "{}", s.output);
    assert!(
        s.after("xattr security: ").contains("not permitted"),
        "{}",
        s.output
    );
    assert!(
        s.after("xattr trusted: ").contains("not permitted"),
        "{}",
        s.output
    );
    assert_eq!(s.after("host device nodes: "), "0", "{}", s.output);
    // A `:ro` bind is read-only below its top too.
    assert!(s.after("ro top: ").contains("Read-only"), "{}", s.output);
    assert!(s.after("ro sub: ").contains("Read-only"), "{}", s.output);
    assert_eq!(s.after("host ro files: "), "0", "{}", s.output);
    assert_eq!(s.after("vmm NoNewPrivs: "), "1", "{}", s.output);
    assert_eq!(s.after("jailed vmm: "), "Seccomp 2 mnt own", "{}", s.output);
    // A cgroup that holds someone else's process is refused, and the process lives on.
    assert!(
        s.after("cgroup: ").contains("holds processes"),
        "{}",
        s.output
    );
    assert_eq!(s.after("victim alive: "), "yes", "{}", s.output);
    assert_nothing_left(
        s,
        &["vmm pid", "sandbox dir", "mount ", "socket ", "cgroup "],
    );
}

#[test]
fn the_specs_seccomp_profile_holds_in_the_guest() {
    let s = section("guest_seccomp");
    assert_eq!(s.status, 0, "{}", s.output);
    // Without a profile: the agent's vsock filter only.
    let plain = s.after("plain: ");
    assert!(plain.contains("Seccomp_filters: 1"), "{}", s.output);
    assert!(plain.contains("mkdir ok"), "{}", s.output);
    // With one: both filters, and the profile's answer.
    let profile = s.after("profile: ");
    assert!(profile.contains("Seccomp_filters: 2"), "{}", s.output);
    assert!(profile.contains("Operation not permitted"), "{}", s.output);
    assert!(!profile.contains("mkdir ok"), "{}", s.output);
    // containerd's default profile lets an ordinary container run.
    let default = s.after("default profile: ");
    assert!(default.contains("Seccomp_filters: 2"), "{}", s.output);
    assert!(default.contains("mkdir ok"), "{}", s.output);
    // A profile that needs a seccomp agent is refused at create, by name.
    assert!(
        s.after("notify: ").contains("SCMP_ACT_NOTIFY"),
        "{}",
        s.output
    );
}

#[test]
fn a_pod_namespace_prepared_by_cni_is_the_guests_network() {
    let s = section("network");
    assert_eq!(s.status, 0, "{}", s.output);
    let cni = s.after("cni: ");
    let pod_ip = cni
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no CNI address:\n{}", s.output));
    // The guest has the pod's address, its default route and the veth's MTU.
    assert!(
        s.after("guest addresses: ")
            .starts_with(&format!("{pod_ip}/24")),
        "{}",
        s.output
    );
    assert!(
        s.after("guest route: ").contains("via 10.77.0.1"),
        "{}",
        s.output
    );
    assert_eq!(s.after("guest mtu: "), "1500", "{}", s.output);
    // And, the network being dual-stack, its IPv6 address and default route.
    let pod_ip6 = cni
        .split_whitespace()
        .nth(2)
        .filter(|a| a.starts_with("fd77:"))
        .unwrap_or_else(|| panic!("no CNI IPv6 address:\n{}", s.output));
    let guest6 = s.after("guest ipv6: ");
    assert!(
        guest6.starts_with(&format!("{pod_ip6}/64 route: default via fd77::1")),
        "{}",
        s.output
    );
    assert_eq!(
        s.after("peer to pod over ipv6: "),
        "hello-from-pod",
        "{}",
        s.output
    );
    // Traffic both ways through the bridge, and the gateway.
    assert_eq!(s.after("peer to pod: "), "hello-from-pod", "{}", s.output);
    assert_eq!(s.after("pod to peer: "), "hello-from-peer", "{}", s.output);
    assert_eq!(s.after("pod to gateway: "), "1", "{}", s.output);
    assert_eq!(s.after("requests ok: "), "1000", "{}", s.output);
    assert_eq!(s.after("taps while running: "), "1", "{}", s.output);
    // Delete leaves exactly what CNI made: no tap, qdisc or filter of ours.
    assert_eq!(
        s.after("pod namespace after delete: "),
        "as CNI left it",
        "{}",
        s.output
    );
    // The host's network and a namespace someone lives in are refused, saying why.
    assert!(
        s.after("host network: ").contains("host's network"),
        "{}",
        s.output
    );
    assert!(s.after("host network: ").contains("runc"), "{}", s.output);
    assert!(
        s.after("busy namespace: ").contains("already in use"),
        "{}",
        s.output
    );
}
