//! Seccomp in the guest, in two parts.
//!
//! The agent's own filter ([`deny_vsock`]): vsock is the agent's line to the host, and nothing
//! the agent starts may open a vsock socket, whatever the container's spec says. PID 1 installs
//! the filter on all its threads once its vsock listener is bound and before it serves a single
//! request; from then on every process it starts (runtime helpers, containers, their execs,
//! commands run outside a container) inherits it across fork and exec and cannot remove it. A
//! container's own OCI filter stacks on top, and the kernel takes the strictest answer of the
//! two. After that point the agent only accepts on its listener: it opens no vsock socket
//! itself (its log connection to the host is opened before, see `log::init`).
//!
//! The checks on a container's OCI profile ([`check_profile`], [`nnp_for_libcontainer`]):
//! libcontainer loads the profile itself, but some profiles cannot work here and must be refused
//! (or put in a form libcontainer handles) before a container is created.
//!
//! What the filter relies on in the guest kernel: no io_uring (`CONFIG_IO_URING=n`, pinned in
//! guest-image/kernel.fragment): an `IORING_OP_SOCKET` request creates a socket without the
//! `socket` system call, out of seccomp's sight. Other ABIs need nothing from the kernel: the
//! filter answers ENOSYS to every system call that is not x86-64's, x32 numbers included, so
//! neither i386's `socketcall` (whose arguments a filter cannot read) nor x32's `socket` gets
//! through even on a kernel with those ABIs (ours has neither).

use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use serde_json::Value;

/// What `socket(AF_VSOCK, ...)` returns to everything the agent starts: EAFNOSUPPORT, what a
/// kernel without vsock answers, so vsock simply looks absent. Software that finds itself in a
/// VM probes vsock and takes "not supported" errors as "no vsock here" (systemd's ssh generator,
/// for one), where EPERM would be a failure to report. The agent's log says why it is absent.
pub const VSOCK_ERRNO: i32 = libc::EAFNOSUPPORT;

/// The system calls that create sockets of a family given as their first argument.
const SOCKET_CALLS: [&str; 2] = ["socket", "socketpair"];

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("Cannot build the vsock filter")]
    Build(#[source] libseccomp::error::SeccompError),
    #[error("Cannot load the vsock filter")]
    Load(#[source] std::io::Error),
    #[error(
        "The seccomp profile uses SCMP_ACT_NOTIFY ({0}): the guest has no seccomp agent to \
         answer it"
    )]
    Notify(String),
    #[error(
        "The seccomp profile names a listenerPath ({0}): the guest has no seccomp agent \
         listening there"
    )]
    Listener(String),
}

/// The agent's filter: `socket` and `socketpair` with the vsock family fail with
/// [`VSOCK_ERRNO`]; everything else is allowed. Loading it sets no `no_new_privs` (a container
/// without `noNewPrivileges` keeps its setuid programs) and covers every thread (TSYNC).
pub fn vsock_filter() -> Result<ScmpFilterContext, SeccompError> {
    let build = |ctx: &mut ScmpFilterContext| -> Result<(), libseccomp::error::SeccompError> {
        // no_new_privs would pass to every container: PID 1 loads the filter with
        // CAP_SYS_ADMIN instead.
        ctx.set_ctl_nnp(false)?;
        ctx.set_ctl_tsync(true)?;
        // The kernel's own error code when loading fails, for the log.
        ctx.set_api_sysrawrc(true)?;
        // A system call of another ABI than x86-64 (see the module comment) is refused as a
        // kernel without that ABI refuses it, rather than killing the thread.
        ctx.set_act_badarch(ScmpAction::Errno(libc::ENOSYS))?;
        // The family is an `int`: the kernel ignores the upper half of the 64-bit register, so
        // the filter must too, or 0xffffffff_00000028 would pass as not-vsock.
        let vsock = ScmpArgCompare::new(
            0,
            ScmpCompareOp::MaskedEqual(u64::from(u32::MAX)),
            libc::AF_VSOCK as u64,
        );
        for name in SOCKET_CALLS {
            ctx.add_rule_conditional(
                ScmpAction::Errno(VSOCK_ERRNO),
                ScmpSyscall::from_name(name)?,
                &[vsock],
            )?;
        }
        Ok(())
    };
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).map_err(SeccompError::Build)?;
    build(&mut ctx).map_err(SeccompError::Build)?;
    Ok(ctx)
}

/// Installs [`vsock_filter`] on every thread of this process, for good.
pub fn deny_vsock() -> Result<(), SeccompError> {
    vsock_filter()?.load().map_err(|e| {
        // The kernel's error code where there is one (see `set_api_sysrawrc`).
        SeccompError::Load(match e.sysrawrc() {
            Some(rc) => std::io::Error::from_raw_os_error(-rc),
            None => std::io::Error::other(e.to_string()),
        })
    })?;
    tracing::info!(
        syscalls = ?SOCKET_CALLS,
        family = libc::AF_VSOCK,
        answer = %std::io::Error::from_raw_os_error(VSOCK_ERRNO),
        "vsock denied to every process the agent starts (seccomp, all threads)"
    );
    Ok(())
}

/// Refuses a profile (`linux.seccomp` of an OCI spec) that needs a seccomp agent: the kernel
/// hands `SCMP_ACT_NOTIFY` system calls to a process that libcontainer reaches through the
/// profile's `listenerPath`, and the guest has no such process. Refused here, the create fails
/// at once with this message, rather than late (or never) inside libcontainer.
pub fn check_profile(spec: &Value) -> Result<(), SeccompError> {
    let profile = &spec["linux"]["seccomp"];
    if profile.is_null() {
        return Ok(());
    }
    let notify = |action: &Value| action.as_str() == Some("SCMP_ACT_NOTIFY");
    if notify(&profile["defaultAction"]) {
        return Err(SeccompError::Notify("defaultAction".into()));
    }
    let notified: Vec<&str> = profile["syscalls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|rule| notify(&rule["action"]))
        .flat_map(|rule| rule["names"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    if !notified.is_empty() {
        return Err(SeccompError::Notify(notified.join(", ")));
    }
    match profile["listenerPath"].as_str() {
        Some(path) if !path.is_empty() => Err(SeccompError::Listener(path.to_string())),
        _ => Ok(()),
    }
}

/// Drops `"noNewPrivileges": false` from an OCI process (a spec's `process`, or an exec's).
///
/// libcontainer 0.7 loads the profile at one of two points, chosen by whether the key is
/// present, not by its value. Absent: before it drops capabilities, while CAP_SYS_ADMIN allows
/// the load (runc's order too). Present: as late as possible before exec, after the drop, which
/// only works with `no_new_privs` set, so an explicit `false` (no `no_new_privs`) would make the
/// load fail with EACCES for any container without CAP_SYS_ADMIN. Absent and `false` mean the
/// same in the OCI spec.
pub fn nnp_for_libcontainer(process: &mut Value) {
    if let Some(p) = process.as_object_mut() {
        if p.get("noNewPrivileges") == Some(&Value::Bool(false)) {
            p.remove("noNewPrivileges");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};

    use serde_json::json;

    use super::*;

    /// The filter as the kernel gets it: its BPF program, exported through a pipe.
    fn exported_bpf() -> Vec<libc::sock_filter> {
        let ctx = vsock_filter().expect("the filter builds");
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into a valid array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both fds were just created and are owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        ctx.export_bpf(&w).expect("the filter exports");
        drop(w);
        let mut bytes = Vec::new();
        std::fs::File::from(r).read_to_end(&mut bytes).unwrap();
        let size = std::mem::size_of::<libc::sock_filter>();
        assert!(
            !bytes.is_empty() && bytes.len() % size == 0,
            "{}",
            bytes.len()
        );
        bytes
            .chunks_exact(size)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect()
    }

    /// Runs `checks` in a forked child under the filter; the test process itself stays
    /// unfiltered. Returns the child's exit status: 0, or the number of the first failed check.
    fn in_filtered_child(checks: fn() -> i32) -> i32 {
        // Everything that allocates happens before fork: the test harness has other threads,
        // and the child may only make system calls.
        let prog_insns = exported_bpf();
        let prog = libc::sock_fprog {
            len: prog_insns.len() as u16,
            filter: prog_insns.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: the child only makes system calls (prctl, seccomp, socket, close) and leaves
        // with _exit; `prog` and the instructions it points to live until after waitpid.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: plain system calls on valid arguments; `prog` is a valid sock_fprog. The
            // no_new_privs bit lets an unprivileged test load the filter; it stays in the child.
            unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::syscall(
                        libc::SYS_seccomp,
                        libc::SECCOMP_SET_MODE_FILTER,
                        libc::SECCOMP_FILTER_FLAG_TSYNC,
                        &prog as *const libc::sock_fprog,
                    ) != 0
                {
                    libc::_exit(100);
                }
                libc::_exit(checks());
            }
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above; `status` is valid for writes.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// Whether `socket(family, SOCK_STREAM, 0)` fails with `want` (`Some`) or succeeds (`None`).
    fn socket_answers(family: u64, want: Option<i32>) -> bool {
        // SAFETY: socket and close are plain system calls; the raw form passes the family as
        // the full 64-bit register.
        let fd = unsafe { libc::syscall(libc::SYS_socket, family, libc::SOCK_STREAM as u64, 0u64) };
        let err = errno();
        if fd >= 0 {
            // SAFETY: `fd` was just created by this process.
            unsafe { libc::close(fd as i32) };
        }
        match want {
            Some(e) => fd == -1 && err == e,
            None => fd >= 0,
        }
    }

    /// The same for `socketpair`.
    fn socketpair_answers(family: i32, want: Option<i32>) -> bool {
        let mut fds = [-1; 2];
        // SAFETY: socketpair writes two fds into a valid array.
        let rc = unsafe { libc::socketpair(family, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
        let err = errno();
        for fd in fds.into_iter().filter(|&fd| fd >= 0) {
            // SAFETY: the fds were just created by this process.
            unsafe { libc::close(fd) };
        }
        match want {
            Some(e) => rc == -1 && err == e,
            None => rc == 0,
        }
    }

    /// The number of seccomp filters on this process.
    fn own_filters() -> String {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
        };
        line("Seccomp_filters:")
            .or(line("Seccomp:"))
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn vsock_is_refused_and_the_rest_allowed() {
        fn checks() -> i32 {
            let vsock = libc::AF_VSOCK as u64;
            let results = [
                socket_answers(vsock, Some(VSOCK_ERRNO)),
                // Garbage in the upper half of the register: the kernel still reads AF_VSOCK.
                socket_answers(0xdead_beef_0000_0000 | vsock, Some(VSOCK_ERRNO)),
                socketpair_answers(libc::AF_VSOCK, Some(VSOCK_ERRNO)),
                socket_answers(libc::AF_UNIX as u64, None),
                socket_answers(libc::AF_INET as u64, None),
                socketpair_answers(libc::AF_UNIX, None),
            ];
            results
                .iter()
                .position(|ok| !ok)
                .map_or(0, |i| i as i32 + 1)
        }
        // The checks tell the filter's answer from the kernel's only where vsock works without
        // it; elsewhere the exported program still has to carry our errno (test below).
        if !socket_answers(libc::AF_VSOCK as u64, None) {
            eprintln!("no vsock on this machine: the filter's errno is the kernel's too");
        }
        let before = own_filters();
        assert_eq!(in_filtered_child(checks), 0, "check number that failed");
        // The filter stayed in the child.
        assert_eq!(own_filters(), before);
    }

    /// Set in the copy of the test binary that runs [`deny_vsock_in_a_copy`].
    const COPY_ENV: &str = "HUSK_AGENT_SECCOMP_TEST_COPY";

    /// The real installation, as PID 1 does it (libseccomp, TSYNC, no no_new_privs), in a copy
    /// of this test binary that runs that one test.
    #[test]
    fn deny_vsock_covers_every_thread_without_no_new_privs() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: loading a filter without no_new_privs takes root");
            return;
        }
        let name = "seccomp::tests::deny_vsock_in_a_copy";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads=1", "--nocapture"])
            .env(COPY_ENV, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
    }

    #[test]
    fn deny_vsock_in_a_copy() {
        if std::env::var_os(COPY_ENV).is_none() {
            return;
        }
        let vsock = libc::AF_VSOCK as u64;
        // A thread that exists before the filter: TSYNC must reach it too.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let older = std::thread::spawn(move || {
            wait.recv().unwrap();
            socket_answers(vsock, Some(VSOCK_ERRNO))
        });
        deny_vsock().expect("the filter loads");
        go.send(()).unwrap();
        assert!(older.join().unwrap(), "a thread older than the filter");
        assert!(socket_answers(vsock, Some(VSOCK_ERRNO)));
        assert!(socket_answers(libc::AF_UNIX as u64, None));
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(status.lines().any(|l| l == "NoNewPrivs:\t0"), "{status}");
    }

    #[test]
    fn the_filter_is_exported_for_x86_64_with_our_errno() {
        let prog = exported_bpf();
        let ret_errno = libc::SECCOMP_RET_ERRNO | VSOCK_ERRNO as u32;
        assert!(
            prog.iter().any(|i| i.k == ret_errno),
            "{} insns",
            prog.len()
        );
        assert!(prog.iter().any(|i| i.k == libc::AF_VSOCK as u32));
        let ctx = vsock_filter().unwrap();
        assert!(
            !ctx.get_ctl_nnp().unwrap(),
            "no_new_privs would reach containers"
        );
        assert!(ctx.get_ctl_tsync().unwrap());
    }

    #[test]
    fn notify_profiles_are_refused() {
        let spec = |profile: Value| json!({"linux": {"seccomp": profile}});
        assert!(check_profile(&json!({})).is_ok());
        assert!(check_profile(&spec(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ALLOW"}]
        })))
        .is_ok());
        let e = check_profile(&spec(json!({"defaultAction": "SCMP_ACT_NOTIFY"}))).unwrap_err();
        assert!(matches!(e, SeccompError::Notify(ref w) if w == "defaultAction"));
        let e = check_profile(&spec(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": "/run/seccomp-agent.sock",
            "syscalls": [
                {"names": ["mkdir", "mknod"], "action": "SCMP_ACT_NOTIFY"},
                {"names": ["chmod"], "action": "SCMP_ACT_ERRNO"}
            ]
        })))
        .unwrap_err();
        assert!(matches!(e, SeccompError::Notify(ref w) if w == "mkdir, mknod"));
        assert!(
            e.to_string().contains("SCMP_ACT_NOTIFY (mkdir, mknod)"),
            "{e}"
        );
        let e = check_profile(&spec(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": "/run/seccomp-agent.sock"
        })))
        .unwrap_err();
        assert!(matches!(e, SeccompError::Listener(_)));
    }

    #[test]
    fn only_an_explicit_false_no_new_privileges_is_dropped() {
        let mut p = json!({"args": ["sh"], "noNewPrivileges": false});
        nnp_for_libcontainer(&mut p);
        assert_eq!(p, json!({"args": ["sh"]}));
        let mut p = json!({"args": ["sh"], "noNewPrivileges": true});
        nnp_for_libcontainer(&mut p);
        assert_eq!(p["noNewPrivileges"], true);
        let mut p = Value::Null;
        nnp_for_libcontainer(&mut p);
        assert!(p.is_null());
    }
}
