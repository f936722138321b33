//! Kubernetes pods through CRI, as kubelet makes them: a private containerd with its CRI plugin,
//! CNI's bridge and the handlers `kata` (husk) and `runc`, driven by tests/cri/cri.py. One
//! test-host boot runs every scenario of tests/cri/cri-scenarios.sh; each test checks one.

use std::sync::OnceLock;

use husk_integration::{assert_nothing_left, shim_scenarios_batch, Batch, Section};

fn batch() -> &'static Batch {
    static BATCH: OnceLock<Batch> = OnceLock::new();
    BATCH.get_or_init(|| shim_scenarios_batch("tests/cri/cri-scenarios.sh", &[]))
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

/// Checks the scenario's lines `<prefix> <what> <value>` (`<what> <value>` with no prefix): each
/// `(what, want)` pair, trailing blanks aside.
fn expect(s: &Section, prefix: &str, pairs: &[(&str, &str)]) {
    for (what, want) in pairs {
        let key = match prefix {
            "" => format!("{what} "),
            p => format!("{p} {what} "),
        };
        assert_eq!(s.after(&key).trim_end(), *want, "{key}\n{}", s.output);
    }
}

#[test]
fn a_pod_is_one_vm_whose_containers_share_hostname_ipc_and_volumes() {
    let s = section("pod");
    assert_eq!(s.status, 0, "{}", s.output);
    for h in ["kata", "runc"] {
        #[rustfmt::skip]
        expect(s, h, &[
            ("pod ip", "10.88.0"),
            ("app state", "CONTAINER_RUNNING"),
            ("side state", "CONTAINER_RUNNING"),
            // PodSandboxConfig.hostname, in every container of the pod.
            ("hostname", "web-0"),
            ("side hostname", "web-0"),
            ("ipc shared", "ipc: same"),
            // ExecSync's exit codes (its timeout below).
            ("exec-sync status", "7"),
            ("stats", "cpu True memory True"),
            // One container replaced while its sibling runs on.
            ("replaced state", "CONTAINER_RUNNING side CONTAINER_RUNNING"),
            // stdout, stderr and /dev/stdout in the CRI log file, in CRI's format.
            ("log", "stderr F err-line|stdout F dev-stdout|stdout F out-line|"),
            ("log format", "1"),
            // Volumes as kubelet hands them over.
            ("resolv", "search svc.cluster.local nameserver 10.88.0.1"),
            ("emptyDir shared", "hi"),
            ("emptyDir on host", "hi"),
            ("subPath file", "single"),
            ("missing hostPath", "writable"),
            ("read-only", "refused"),
            ("projected update", "v2"),
            ("removed", "0"),
        ]);
        let timeout = s.after(&format!("{h} exec-sync timeout status "));
        assert!(timeout.contains("DEADLINE_EXCEEDED"), "{h}\n{}", s.output);
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
        expect(s, "runc", &[(flag, "accepted")]);
    }
    assert_all_gone(s);
}

#[test]
fn memory_limits_reach_the_guest_or_are_refused_beyond_the_vm() {
    let s = section("memory");
    assert_eq!(s.status, 0, "{}", s.output);
    expect(s, "", &[("small memory.max", "67108864"), ("removed", "0")]);
    let big = s.after("big ");
    assert!(big.starts_with("refused:"), "{}", s.output);
    assert!(big.contains("4096 MiB"), "{}", s.output);
    assert!(big.contains("default_memory"), "{}", s.output);
    assert_all_gone(s);
}

#[test]
fn port_forward_reaches_servers_on_any_address_loopback_and_the_pod_ip() {
    let s = section("port_forward");
    assert_eq!(s.status, 0, "{}", s.output);
    for h in ["kata", "runc"] {
        expect(
            s,
            h,
            &[("port 8080:", "hello-pf"), ("port 8081:", "hello-pf")],
        );
    }
    // A server on the pod IP alone: husk reaches it. (containerd 1.6 dials localhost in the
    // pod's namespace, so runc's pods do not: that line is only printed.)
    expect(s, "kata", &[("port 8082:", "hello-pf")]);
    assert_all_gone(s);
}

#[test]
fn cpusets_pin_the_vcpus_and_oom_scores_reach_the_vmm_in_the_pods_cgroup() {
    let s = section("resources");
    assert_eq!(s.status, 0, "{}", s.output);
    let cpu = s.after("asked cpu ");
    #[rustfmt::skip]
    expect(s, "runc", &[
        ("state", "CONTAINER_RUNNING"),
        // The host CPU itself.
        ("container cpuset", cpu),
        ("container oom_score_adj", "500"),
        ("container cgroup below parent", "yes"),
        ("removed", "0"),
    ]);
    #[rustfmt::skip]
    expect(s, "kata", &[
        ("state", "CONTAINER_RUNNING"),
        // In the guest, the one vCPU, which runs on that CPU; the sandbox cgroup has it too.
        ("container cpuset", "0"),
        ("vcpu0 cpus", cpu),
        ("sandbox cgroup cpuset", cpu),
        // The VMM (and its jail's waiter) take the container's OOM score, not the pause's -998.
        ("container oom_score_adj", "500"),
        ("vmm oom_score_adj", "500"),
        // The pod's cgroup_parent holds the sandbox cgroup, which holds every VMM thread and,
        // with sandbox_cgroup_only, the shim.
        ("sandbox cgroup below parent", "yes"),
        ("vmm threads cgroups", "1"),
        ("shim in sandbox cgroup", "yes"),
        ("removed", "0"),
    ]);
    assert_all_gone(s);
}

#[test]
fn exec_with_a_terminal_and_its_size_and_attach_with_stdin() {
    let s = section("streams");
    assert_eq!(s.status, 0, "{}", s.output);
    for h in ["kata", "runc"] {
        #[rustfmt::skip]
        expect(s, h, &[
            // kubectl exec -it: the terminal's size reaches the process; its exit code comes back.
            ("exec tty", "size 30 100 status 3"),
            ("exec stdin", "err read piped"),
            // kubectl attach: stdin reaches the container, its output comes back, it exits.
            ("attach", "got hello"),
            ("reader", "CONTAINER_EXITED"),
            ("removed", "0"),
        ]);
    }
    assert_all_gone(s);
}

#[test]
fn privileged_pods_get_the_guests_devices_never_the_hosts() {
    let s = section("privileged");
    assert_eq!(s.status, 0, "{}", s.output);
    #[rustfmt::skip]
    expect(s, "", &[
        ("state", "CONTAINER_RUNNING CONTAINER_RUNNING"),
        // The guest's serial port, not the node's /dev/kvm, nor the agent's vsock.
        ("privileged devices", "/dev/ttyS0"),
        ("plain devices", ""),
        ("privileged mount", "ok"),
        ("plain mount", "refused"),
        // CRI's 64 MiB /dev/shm, one for the whole pod, in guest memory.
        ("shm type", "tmpfs"),
        ("shm size", "65536"),
        ("shm shared", "x"),
        ("removed", "0"),
    ]);
    assert_all_gone(s);
}
