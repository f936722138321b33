//! Drives one sandbox's agent directly over its ttrpc API, for the tests and the benchmark:
//! things `huskctl run` (one command per VM) cannot show, such as several processes at once or
//! what happens to the socket when a client misbehaves.
//!
//! `husk-agent-check check` prints one `ok NAME` / `FAIL NAME: why` line per check and exits 1
//! if any failed. `husk-agent-check bench` prints Markdown table rows.
//! Both boot a VM with the built guest image (`target/guest`), like `huskctl run`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use husk_agent_protocol::agent::*;
use husk_agent_protocol::agent_ttrpc::AgentServiceClient;
use husk_agent_protocol::health::CheckRequest;
use husk_agent_protocol::ttrpc::context::Context;
use husk_shim::agent::hybrid_connect;
use husk_shim::vm::{find_guest_image, find_vmm, Vm as Sandbox, VmConfig as SandboxConfig};

fn config(vcpus: u8) -> SandboxConfig {
    let (kernel, initrd) = find_guest_image().expect("guest image");
    let vmm = std::env::var_os("HUSK_VMM")
        .map(Into::into)
        .unwrap_or_else(|| find_vmm().expect("husk-vmm"));
    SandboxConfig {
        vmm,
        kernel,
        initrd,
        vcpus,
        memory_mib: 256,
        kernel_params: None,
        boot_timeout: Duration::from_secs(120),
        volumes: Vec::new(),
        runtime_dir: None,
        fs_cache: None,
        fs_all_xattrs: false,
        cgroup_procs: None,
        net: Vec::new(),
    }
}

fn exec(agent: &AgentServiceClient, id: &str, args: &[&str]) -> Result<(), String> {
    let req = ExecProcessRequest {
        exec_id: id.into(),
        process: protobuf::MessageField::some(Process {
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    agent
        .exec_process(Context::default(), &req)
        .map(|_| ())
        .map_err(|e| format!("exec {id}: {e:?}"))
}

/// Reads a whole output stream of `id`.
fn read_all(agent: &AgentServiceClient, id: &str, stderr: bool) -> Vec<u8> {
    let req = ReadStreamRequest {
        exec_id: id.into(),
        len: 128 * 1024,
        ..Default::default()
    };
    let mut out = Vec::new();
    loop {
        let r = if stderr {
            agent.read_stderr(Context::default(), &req)
        } else {
            agent.read_stdout(Context::default(), &req)
        };
        match r {
            Ok(r) if !r.data.is_empty() => out.extend_from_slice(&r.data),
            _ => return out,
        }
    }
}

fn wait(agent: &AgentServiceClient, id: &str) -> Result<i32, String> {
    let req = WaitProcessRequest {
        exec_id: id.into(),
        ..Default::default()
    };
    agent
        .wait_process(Context::default(), &req)
        .map(|r| r.status)
        .map_err(|e| format!("wait {id}: {e:?}"))
}

/// Runs `args` to completion: (status, stdout, stderr).
fn run(
    agent: &AgentServiceClient,
    id: &str,
    args: &[&str],
) -> Result<(i32, Vec<u8>, Vec<u8>), String> {
    exec(agent, id, args)?;
    let (a, b) = (agent.clone(), agent.clone());
    let (i1, i2) = (id.to_string(), id.to_string());
    let out = std::thread::spawn(move || read_all(&a, &i1, false));
    let err = std::thread::spawn(move || read_all(&b, &i2, true));
    let status = wait(agent, id)?;
    Ok((status, out.join().unwrap(), err.join().unwrap()))
}

fn check(sandbox: &Sandbox) -> bool {
    let agent = sandbox.agent.api();
    let sock = sandbox.runtime_dir().join("vsock.sock");
    let mut all_ok = true;
    let mut report = |name: &str, r: Result<(), String>| match r {
        Ok(()) => println!("ok {name}"),
        Err(why) => {
            all_ok = false;
            println!("FAIL {name}: {why}");
        }
    };

    report(
        "health_and_version",
        (|| {
            let h = sandbox
                .agent
                .health()
                .check(Context::default(), &CheckRequest::new())
                .map_err(|e| format!("{e:?}"))?;
            let v = sandbox
                .agent
                .health()
                .version(Context::default(), &CheckRequest::new())
                .map_err(|e| format!("{e:?}"))?;
            if h.status.value() != 1 || v.agent_version.is_empty() {
                return Err(format!(
                    "status {:?}, version {:?}",
                    h.status, v.agent_version
                ));
            }
            Ok(())
        })(),
    );

    // Eight processes at once, each with its own output and exit status.
    report(
        "eight_concurrent_execs",
        (|| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let agent = agent.clone();
                    std::thread::spawn(move || {
                        let script = format!("sleep 1; echo proc-{i}; exit {i}");
                        run(&agent, &format!("c{i}"), &["/bin/sh", "-c", &script])
                    })
                })
                .collect();
            for (i, h) in handles.into_iter().enumerate() {
                let (status, out, _) = h.join().unwrap()?;
                if status != i as i32 || out != format!("proc-{i}\n").as_bytes() {
                    return Err(format!(
                        "process {i}: status {status}, stdout {:?}",
                        String::from_utf8_lossy(&out)
                    ));
                }
            }
            Ok(())
        })(),
    );

    report(
        "unknown_process_is_not_found",
        match wait(agent, "nope") {
            Err(e) if e.contains("NOT_FOUND") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    report(
        "duplicate_exec_id_is_refused",
        (|| {
            exec(agent, "dup", &["/bin/sleep", "1"])?;
            let second = exec(agent, "dup", &["/bin/true"]);
            wait(agent, "dup")?;
            match second {
                Err(e) if e.contains("ALREADY_EXISTS") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })(),
    );

    report(
        "signal_kills",
        (|| {
            exec(agent, "sig", &["/bin/sleep", "30"])?;
            let req = SignalProcessRequest {
                exec_id: "sig".into(),
                signal: 15,
                ..Default::default()
            };
            agent
                .signal_process(Context::default(), &req)
                .map_err(|e| format!("{e:?}"))?;
            match wait(agent, "sig")? {
                143 => Ok(()),
                s => Err(format!("status {s}")),
            }
        })(),
    );

    report(
        "missing_binary_is_an_error",
        match exec(agent, "nobin", &["/no/such/binary"]) {
            Err(e) if e.contains("cannot run /no/such/binary") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    // Host connections to a port nobody listens on are closed, not left hanging.
    report(
        "unlistened_port_is_closed",
        (|| {
            let mut s = UnixStream::connect(&sock).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(b"CONNECT 4242\n").map_err(|e| e.to_string())?;
            let mut b = [0u8; 16];
            match s.read(&mut b) {
                Ok(0) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
                other => Err(format!("expected a close, got {other:?}")),
            }
        })(),
    );

    // Garbage on the handshake closes that client; the agent stays reachable.
    report(
        "garbage_handshake_leaves_the_vmm_serving",
        (|| {
            let mut g = UnixStream::connect(&sock).map_err(|e| e.to_string())?;
            let _ = g.write_all(&[0xffu8; 200]);
            let mut g2 = UnixStream::connect(&sock).map_err(|e| e.to_string())?;
            let _ = g2.write_all(b"HELLO 1024\n");
            let s = hybrid_connect(&sock, 1024)
                .ok()
                .ok_or("no second connection to the agent")?;
            drop(s);
            let (status, out, _) = run(agent, "after-garbage", &["/bin/echo", "still-here"])?;
            if status != 0 || out != b"still-here\n" {
                return Err(format!(
                    "status {status}, {:?}",
                    String::from_utf8_lossy(&out)
                ));
            }
            Ok(())
        })(),
    );

    all_ok
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn bench() {
    let mut boots = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let t = Instant::now();
        let sb = Sandbox::start(&config(1), Box::new(std::io::sink())).expect("sandbox");
        boots.push(t.elapsed().as_secs_f64());
        last = Some(sb);
    }
    let sb = last.unwrap();
    let agent = sb.agent.api();
    let mut execs = Vec::new();
    for i in 0..10 {
        let t = Instant::now();
        run(agent, &format!("t{i}"), &["/bin/true"]).expect("true");
        execs.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // Guest to host: 64 MiB of stdout through vsock and the agent API.
    let mib = 64;
    let t = Instant::now();
    let (_, out, _) = run(
        agent,
        "g2h",
        &["/bin/sh", "-c", &format!("head -c {} /dev/zero", mib << 20)],
    )
    .expect("g2h");
    let g2h = out.len() as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64();
    // Host to guest: 64 MiB into the process's stdin.
    exec(agent, "h2g", &["/bin/sh", "-c", "cat > /dev/null"]).expect("h2g");
    let chunk = vec![0u8; 128 * 1024];
    let t = Instant::now();
    for _ in 0..(mib * 8) {
        let req = WriteStreamRequest {
            exec_id: "h2g".into(),
            data: chunk.clone(),
            ..Default::default()
        };
        agent.write_stdin(Context::default(), &req).expect("stdin");
    }
    let req = CloseStdinRequest {
        exec_id: "h2g".into(),
        ..Default::default()
    };
    agent.close_stdin(Context::default(), &req).expect("close");
    wait(agent, "h2g").expect("h2g wait");
    let h2g = mib as f64 / t.elapsed().as_secs_f64();

    println!(
        "| husk-vmm start to first successful Health.Check (median of 3) | {:.3} s |",
        median(boots)
    );
    println!(
        "| exec round trip of `true` (median of 10) | {:.1} ms |",
        median(execs)
    );
    println!("| guest to host, 64 MiB of stdout over vsock + ttrpc | {g2h:.1} MiB/s |");
    println!("| host to guest, 64 MiB of stdin over vsock + ttrpc | {h2g:.1} MiB/s |");
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("check") => {
            let sb = match Sandbox::start(&config(2), Box::new(std::io::sink())) {
                Ok(sb) => sb,
                Err(e) => {
                    println!("FAIL boot: {e}");
                    std::process::exit(1);
                }
            };
            println!("ok boot");
            let ok = check(&sb);
            drop(sb);
            std::process::exit(if ok { 0 } else { 1 });
        }
        Some("bench") => bench(),
        _ => {
            eprintln!("usage: husk-agent-check check|bench");
            std::process::exit(2);
        }
    }
}
