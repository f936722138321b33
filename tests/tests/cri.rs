//! Kubernetes pods through CRI, as kubelet makes them: a private containerd with its CRI plugin,
//! CNI's bridge and the handlers `kata` (husk) and `runc`, driven by tests/cri/cri.py. One
//! test-host boot runs every scenario of tests/cri/cri-scenarios.sh; each test checks one.

use std::sync::OnceLock;

use husk_integration::{
    artifact, assert_nothing_left, initrd, kernel, repo, testhost_batch, vmm, Batch, Section,
};

fn batch() -> &'static Batch {
    static BATCH: OnceLock<Batch> = OnceLock::new();
    BATCH.get_or_init(|| {
        let _ = (vmm(), kernel(), initrd());
        let _ = artifact("target/release/containerd-shim-kata-v2");
        let script = repo().join("tests/cri/cri-scenarios.sh");
        testhost_batch(&[&script.to_string_lossy()], "900")
    })
}

fn section(name: &str) -> &'static Section {
    husk_integration::section(batch(), name)
}

/// Nothing of husk's or runc's is left: no VMM, shim, sandbox directory, mount, tap or netns.
fn assert_all_gone(s: &Section) {
    let kinds = [
        "vmm pid",
        "shim pid",
        "sandbox dir",
        "mount",
        "link",
        "cgroup",
        "netns",
    ];
    assert_nothing_left(s, &kinds);
}

#[test]
fn a_pod_is_one_vm_whose_containers_share_hostname_ipc_and_volumes() {
    let s = section("pod");
    assert_eq!(s.status, 0, "{}", s.output);
    for h in ["kata", "runc"] {
        let line = |what: &str| s.after(&format!("{h} {what} ")).to_string();
        assert_eq!(line("pod ip"), "10.88.0", "{h}\n{}", s.output);
        assert_eq!(line("app state"), "CONTAINER_RUNNING", "{h}\n{}", s.output);
        assert_eq!(line("side state"), "CONTAINER_RUNNING", "{h}\n{}", s.output);
        // PodSandboxConfig.hostname, in every container of the pod.
        assert_eq!(line("hostname"), "web-0", "{h}\n{}", s.output);
        assert_eq!(line("side hostname"), "web-0", "{h}\n{}", s.output);
        assert_eq!(line("ipc shared"), "ipc: same", "{h}\n{}", s.output);
        // ExecSync: exit codes, and a timeout that ends the call.
        assert_eq!(line("exec-sync status"), "7", "{h}\n{}", s.output);
        assert!(
            line("exec-sync timeout status").contains("DEADLINE_EXCEEDED"),
            "{h}\n{}",
            s.output
        );
        assert_eq!(line("stats"), "cpu True memory True", "{h}\n{}", s.output);
        // One container replaced while its sibling runs on.
        assert_eq!(
            line("replaced state"),
            "CONTAINER_RUNNING side CONTAINER_RUNNING",
            "{h}\n{}",
            s.output
        );
        // stdout, stderr and /dev/stdout in the CRI log file, in CRI's format.
        assert_eq!(
            line("log"),
            "stderr F err-line|stdout F dev-stdout|stdout F out-line|",
            "{h}\n{}",
            s.output
        );
        assert_eq!(line("log format"), "1", "{h}\n{}", s.output);
        assert_eq!(line("removed"), "0", "{h}\n{}", s.output);
    }
    // Volumes as kubelet hands them over.
    for h in ["kata", "runc"] {
        let line = |what: &str| s.after(&format!("{h} {what} ")).to_string();
        assert_eq!(
            line("resolv"),
            "search svc.cluster.local nameserver 10.88.0.1 ",
            "{h}\n{}",
            s.output
        );
        assert_eq!(line("emptyDir shared"), "hi", "{h}\n{}", s.output);
        assert_eq!(line("emptyDir on host"), "hi", "{h}\n{}", s.output);
        assert_eq!(line("subPath file"), "single", "{h}\n{}", s.output);
        assert_eq!(line("missing hostPath"), "writable", "{h}\n{}", s.output);
        assert_eq!(line("read-only"), "refused", "{h}\n{}", s.output);
        assert_eq!(line("projected update"), "v2", "{h}\n{}", s.output);
    }
    assert_all_gone(s);
}

#[test]
fn host_namespace_pods_are_refused_by_field_and_run_with_runc() {
    let s = section("host_namespaces");
    assert_eq!(s.status, 0, "{}", s.output);
    for (flag, field) in [
        ("--host-network", "hostNetwork: true"),
        ("--host-pid", "hostPID: true"),
        ("--host-ipc", "hostIPC: true"),
    ] {
        let kata = s.after(&format!("kata {flag} "));
        assert!(kata.starts_with("refused:"), "{flag}\n{}", s.output);
        assert!(kata.contains(field), "{flag}\n{}", s.output);
        assert!(kata.contains("runc"), "{flag}\n{}", s.output);
        assert_eq!(
            s.after(&format!("runc {flag} ")),
            "accepted",
            "{}",
            s.output
        );
    }
    assert_all_gone(s);
}

#[test]
fn memory_limits_reach_the_guest_or_are_refused_beyond_the_vm() {
    let s = section("memory");
    assert_eq!(s.status, 0, "{}", s.output);
    assert_eq!(s.after("small memory.max "), "67108864", "{}", s.output);
    let big = s.after("big ");
    assert!(big.starts_with("refused:"), "{}", s.output);
    assert!(big.contains("4096 MiB"), "{}", s.output);
    assert!(big.contains("default_memory"), "{}", s.output);
    assert_eq!(s.after("removed "), "0", "{}", s.output);
    assert_all_gone(s);
}

#[test]
fn port_forward_reaches_servers_on_any_address_loopback_and_the_pod_ip() {
    let s = section("port_forward");
    assert_eq!(s.status, 0, "{}", s.output);
    for h in ["kata", "runc"] {
        for port in [8080, 8081] {
            assert_eq!(
                s.after(&format!("{h} port {port}: ")),
                "hello-pf",
                "{}",
                s.output
            );
        }
    }
    // A server on the pod IP alone: husk reaches it. (containerd 1.6 dials localhost in the
    // pod's namespace, so runc's pods do not: that line is only printed.)
    assert_eq!(s.after("kata port 8082: "), "hello-pf", "{}", s.output);
    assert_all_gone(s);
}

#[test]
fn cpusets_pin_the_vcpus_and_oom_scores_reach_the_vmm_in_the_pods_cgroup() {
    let s = section("resources");
    assert_eq!(s.status, 0, "{}", s.output);
    let cpu = s.after("asked cpu ").to_string();
    let line = |h: &str, what: &str| s.after(&format!("{h} {what} ")).to_string();
    for h in ["kata", "runc"] {
        assert_eq!(line(h, "state"), "CONTAINER_RUNNING", "{}", s.output);
        assert_eq!(line(h, "container oom_score_adj"), "500", "{}", s.output);
        assert_eq!(line(h, "removed"), "0", "{}", s.output);
    }
    // runc: the host CPU itself. husk: in the guest, the one vCPU, which runs on that CPU.
    assert_eq!(line("runc", "container cpuset"), cpu, "{}", s.output);
    assert_eq!(
        line("runc", "container cgroup below parent"),
        "yes",
        "{}",
        s.output
    );
    assert_eq!(line("kata", "container cpuset"), "0", "{}", s.output);
    assert_eq!(line("kata", "vcpu0 cpus"), cpu, "{}", s.output);
    assert_eq!(line("kata", "sandbox cgroup cpuset"), cpu, "{}", s.output);
    // The VMM (and its jail's waiter) take the container's OOM score, not the pause's -998.
    assert_eq!(
        line("kata", "vmm oom_score_adj").trim(),
        "500",
        "{}",
        s.output
    );
    // The pod's cgroup_parent holds the sandbox cgroup, which holds every VMM thread and, with
    // sandbox_cgroup_only, the shim.
    assert_eq!(
        line("kata", "sandbox cgroup below parent"),
        "yes",
        "{}",
        s.output
    );
    assert_eq!(line("kata", "vmm threads cgroups"), "1", "{}", s.output);
    assert_eq!(
        line("kata", "shim in sandbox cgroup"),
        "yes",
        "{}",
        s.output
    );
    assert_all_gone(s);
}

#[test]
fn exec_with_a_terminal_and_its_size_and_attach_with_stdin() {
    let s = section("streams");
    assert_eq!(s.status, 0, "{}", s.output);
    for h in ["kata", "runc"] {
        let line = |what: &str| s.after(&format!("{h} {what} ")).to_string();
        // kubectl exec -it: the terminal's size reaches the process; its exit code comes back.
        assert_eq!(
            line("exec tty"),
            "size 30 100 status 3",
            "{h}\n{}",
            s.output
        );
        assert_eq!(line("exec stdin"), "err read piped ", "{h}\n{}", s.output);
        // kubectl attach: stdin reaches the container, its output comes back, it exits.
        assert_eq!(line("attach"), "got hello", "{h}\n{}", s.output);
        assert_eq!(line("reader"), "CONTAINER_EXITED", "{h}\n{}", s.output);
        assert_eq!(line("removed"), "0", "{h}\n{}", s.output);
    }
    assert_all_gone(s);
}

#[test]
fn privileged_pods_get_the_guests_devices_never_the_hosts() {
    let s = section("privileged");
    assert_eq!(s.status, 0, "{}", s.output);
    assert_eq!(
        s.after("state "),
        "CONTAINER_RUNNING CONTAINER_RUNNING",
        "{}",
        s.output
    );
    // The guest's serial port, not the node's /dev/kvm, nor the agent's vsock.
    let devices = |who: &str| s.after(&format!("{who} devices ")).trim().to_string();
    assert_eq!(devices("privileged"), "/dev/ttyS0", "{}", s.output);
    assert_eq!(devices("plain"), "", "{}", s.output);
    assert_eq!(s.after("privileged mount "), "ok", "{}", s.output);
    assert_eq!(s.after("plain mount "), "refused", "{}", s.output);
    // CRI's 64 MiB /dev/shm, one for the whole pod, in guest memory.
    assert_eq!(s.after("shm type "), "tmpfs", "{}", s.output);
    assert_eq!(s.after("shm size "), "65536", "{}", s.output);
    assert_eq!(s.after("shm shared "), "x", "{}", s.output);
    assert_eq!(s.after("removed "), "0", "{}", s.output);
    assert_all_gone(s);
}
