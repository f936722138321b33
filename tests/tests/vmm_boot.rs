//! husk-vmm boots our guest kernel and initramfs to the agent, on standard KVM (the test host
//! here), and fails clearly on bad input.

use std::process::Command;
use std::sync::OnceLock;

use husk_integration::{initrd, kernel, repo, run, run_batch, vmm, Batch, Section};

const READY: &str = "husk-agent: ready in ";

/// Every scenario that needs a VM, run in one test-host boot.
fn batch() -> &'static Batch {
    static BATCH: OnceLock<Batch> = OnceLock::new();
    BATCH.get_or_init(|| {
        let boot = |vcpus: u32, append: &str| {
            let mut cmd = format!(
                "{} --kernel {} --initrd {} --vcpus {vcpus} --memory 256 --console stdio",
                vmm().display(),
                kernel().display(),
                initrd().display()
            );
            if !append.is_empty() {
                cmd.push_str(&format!(" --append '{append}'"));
            }
            cmd
        };
        run_batch(&[
            ("one_vcpu", boot(1, "-- /bin/busybox nproc")),
            ("two_vcpus", boot(2, "-- /bin/busybox nproc")),
            ("idle", boot(2, "")),
            ("guest_poweroff", boot(1, "-- /bin/busybox poweroff")),
            ("guest_reboot", boot(1, "-- /bin/busybox reboot -f")),
            (
                "exit_status",
                boot(1, "-- /bin/sh -c \"echo from-guest; exit 5\""),
            ),
            ("jail", jail_facts("")),
            ("no_jail", jail_facts("--no-jail")),
        ])
    })
}

/// tests/vmm/jail-facts.sh: what the host sees of a running VMM.
fn jail_facts(extra: &str) -> String {
    format!(
        "{} {} {} {} {extra}",
        repo().join("tests/vmm/jail-facts.sh").display(),
        vmm().display(),
        kernel().display(),
        initrd().display()
    )
}

fn section(name: &str) -> &'static Section {
    husk_integration::section(batch(), name)
}

/// The line the agent prints after `marker`, or a panic with the whole output.
fn line_after<'a>(s: &'a Section, marker: &str) -> &'a str {
    s.output
        .lines()
        .find_map(|l| l.split_once(marker).map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no {marker:?} in:\n{}", s.output))
}

#[test]
fn boots_one_vcpu_to_the_agent() {
    let s = section("one_vcpu");
    assert!(line_after(s, READY).contains("(1 vCPUs, "), "{}", s.output);
    assert!(
        s.output.lines().any(|l| l.trim() == "1"),
        "nproc in the guest: {}",
        s.output
    );
    assert_eq!(s.status, 0, "{}", s.output);
}

#[test]
fn boots_two_vcpus_and_the_guest_sees_both() {
    let s = section("two_vcpus");
    assert!(line_after(s, READY).contains("(2 vCPUs, "), "{}", s.output);
    assert!(
        s.output.lines().any(|l| l.trim() == "2"),
        "nproc in the guest: {}",
        s.output
    );
    assert_eq!(s.status, 0, "{}", s.output);
}

#[test]
fn idle_guest_prints_ready_and_powers_off() {
    let s = section("idle");
    let ready = line_after(s, READY);
    assert!(ready.contains("MiB, kernel 6.1"), "{ready}");
    assert!(
        s.output.contains("husk-agent: powering off"),
        "{}",
        s.output
    );
    assert_eq!(s.status, 0, "{}", s.output);
}

#[test]
fn guest_poweroff_exits_zero() {
    let s = section("guest_poweroff");
    assert!(
        s.output.contains("husk-agent: powering off"),
        "{}",
        s.output
    );
    assert_eq!(s.status, 0, "{}", s.output);
}

#[test]
fn guest_reboot_exits_three() {
    let s = section("guest_reboot");
    // A reboot the guest asked for, through a reset device: never a triple fault.
    assert!(
        s.output
            .contains("the guest reset through the ACPI reset register"),
        "{}",
        s.output
    );
    assert_eq!(s.status, 3, "{}", s.output);
}

#[test]
fn guest_command_output_reaches_the_console() {
    let s = section("exit_status");
    assert!(
        s.output.lines().any(|l| l.trim() == "from-guest"),
        "{}",
        s.output
    );
    assert!(
        s.output
            .contains("husk-agent: command exited with status 5"),
        "{}",
        s.output
    );
    assert_eq!(s.status, 0, "a guest that powers off exits 0: {}", s.output);
}

// Bad input: these fail before any VM exists, so they run on this host directly.

fn vmm_cmd(args: &[&str]) -> (i32, String) {
    let out = run(Command::new(vmm()).args(args));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_kernel_is_named() {
    let (code, err) = vmm_cmd(&["--kernel", "/nonexistent/vmlinux"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "husk-vmm: Kernel /nonexistent/vmlinux does not exist"
    );
}

#[test]
fn unreadable_kernel_is_named() {
    let (code, err) = vmm_cmd(&["--kernel", "/proc"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("husk-vmm: Kernel /proc cannot be read"),
        "{err}"
    );
}

#[test]
fn missing_initramfs_is_named() {
    let k = kernel();
    let (code, err) = vmm_cmd(&[
        "--kernel",
        k.to_str().unwrap(),
        "--initrd",
        "/nonexistent/i.img",
    ]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "husk-vmm: Initramfs /nonexistent/i.img does not exist"
    );
}

#[test]
fn too_little_memory_is_refused() {
    let k = kernel();
    let (code, err) = vmm_cmd(&["--kernel", k.to_str().unwrap(), "--memory", "32"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "husk-vmm: Guest memory of 32 MiB is too small: the guest needs at least 64 MiB"
    );
}

#[test]
fn no_dev_kvm_is_explained() {
    // A private mount namespace with an empty /dev: /dev/kvm does not exist there.
    let (k, i) = (kernel(), initrd());
    let script = format!(
        "mount -t tmpfs none /dev && exec {} --kernel {} --initrd {}",
        vmm().display(),
        k.display(),
        i.display()
    );
    let out = run(Command::new("unshare").args(["--mount", "sh", "-c", &script]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("/dev/kvm does not exist: enable virtualization"),
        "{err}"
    );
}

#[test]
fn pvm_kvm_is_explained_or_standard_kvm_boots() {
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    let (k, i) = (kernel(), initrd());
    let (code, err) = vmm_cmd(&[
        "--kernel",
        k.to_str().unwrap(),
        "--initrd",
        i.to_str().unwrap(),
        "--console",
        "off",
    ]);
    if pvm {
        assert_eq!(code, 1);
        assert!(err.contains("/dev/kvm is PVM"), "{err}");
        assert!(err.contains("tests/testhost/run.sh"), "{err}");
    } else {
        // On a standard-KVM host the same command boots, and the idle guest powers off.
        assert_eq!(code, 0, "{err}");
    }
}

/// `KEY=VALUE` lines of a jail-facts section.
fn facts(s: &Section) -> std::collections::BTreeMap<String, String> {
    s.output
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn the_vmm_runs_in_its_jail() {
    let s = section("jail");
    let f = facts(s);
    let get = |k: &str| {
        f.get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {k} in:\n{}", s.output))
    };
    // Its own namespaces, pid 1 in its pid namespace.
    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        assert_eq!(
            get(&format!("ns_{ns}")),
            "own",
            "{ns} namespace:\n{}",
            s.output
        );
    }
    assert_eq!(get("vmm_NSpid"), "1", "{}", s.output);
    // A root with only what the VM needs: no /etc, no /usr.
    assert_eq!(get("root_has_etc"), "no", "{}", s.output);
    assert!(
        !get("root_entries")
            .split(' ')
            .any(|e| e == "usr" || e == "etc"),
        "{}",
        s.output
    );
    // With a virtio-fs share: CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID, SETGID,
    // SETUID and nothing else, in the bounding set too.
    assert_eq!(get("vmm_CapEff"), "00000000000000df", "{}", s.output);
    assert_eq!(get("vmm_CapBnd"), "00000000000000df", "{}", s.output);
    assert_eq!(get("vmm_NoNewPrivs"), "1", "{}", s.output);
    // The outer process that only waits keeps nothing.
    assert_eq!(get("outer_CapEff"), "0000000000000000", "{}", s.output);
    assert_eq!(get("outer_Seccomp"), "2", "{}", s.output);
    // Every thread under a seccomp filter (mode 2), and the kinds we expect are there.
    let threads: Vec<&str> = s
        .output
        .lines()
        .filter(|l| l.starts_with("thread "))
        .collect();
    for kind in ["vcpu0", "dev-spawner", "vsock", "virtio-fs", "virtio-rng"] {
        assert!(
            threads
                .iter()
                .any(|t| t.starts_with(&format!("thread {kind} "))),
            "{kind}: {threads:?}"
        );
    }
    assert!(
        threads.iter().all(|t| t.ends_with("Seccomp=2")),
        "{threads:?}"
    );
    // Killing the process the shim started ends the VMM inside.
    assert_eq!(get("vmm_alive_after_kill"), "no", "{}", s.output);
    assert_eq!(get("stderr"), "", "{}", s.output);
}

#[test]
fn no_jail_is_explicit_and_leaves_the_vmm_as_it_was_started() {
    let s = section("no_jail");
    let f = facts(s);
    assert_eq!(
        f.get("ns_mnt").map(String::as_str),
        Some("same"),
        "{}",
        s.output
    );
    assert_eq!(
        f.get("vmm_Seccomp").map(String::as_str),
        Some("0"),
        "{}",
        s.output
    );
    assert_eq!(
        f.get("vmm_alive_after_kill").map(String::as_str),
        Some("no"),
        "{}",
        s.output
    );
}
