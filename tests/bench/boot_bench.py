#!/usr/bin/env python3
"""Boot-time benchmark: husk-vmm against QEMU's microvm machine, same kernel, initramfs, kernel
command line, vCPUs and memory, on the same host, in one run.

Time is measured from starting the VMM process to the agent's ready line on the guest console;
the guest's own uptime at that line is reported too. Also reports husk-vmm's resident memory at
the ready line without the guest's RAM (husk keeps guest RAM in a memfd, counted as RssShmem).
Prints a Markdown table. Usage: boot_bench.py VMM KERNEL INITRD [RUNS]
"""
import os
import re
import statistics
import subprocess
import sys
import time

READY = re.compile(rb"husk-agent: ready in ([0-9.]+) s")
CMDLINE = "console=ttyS0 quiet panic=-1 pci=off 8250.nr_uarts=1 tsc=reliable no_timer_check"
TIMEOUT = 120


def status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def boot_once(cmd):
    """Returns (seconds to ready line, guest uptime at ready, RSS without guest RAM in KiB)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    elapsed, uptime, rss = None, None, None
    deadline = start + TIMEOUT
    buf = b""
    try:
        while time.monotonic() < deadline:
            chunk = proc.stdout.readline()
            if not chunk:
                break
            buf += chunk
            m = READY.search(chunk)
            if m:
                elapsed = time.monotonic() - start
                uptime = float(m.group(1))
                # The jailed husk-vmm is two processes: the one started here and the VMM inside.
                rss = sum(status_kib(p, "RssAnon") + status_kib(p, "RssFile")
                          for p in [proc.pid] + children(proc.pid))
                break
        # The idle guest powers off by itself; give it a moment, then stop it either way.
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if elapsed is None:
        sys.stderr.write(f"no ready line from {cmd[0]}:\n{buf.decode(errors='replace')[-2000:]}\n")
        sys.exit(1)
    return elapsed, uptime, rss


def main():
    vmm, kernel, initrd = sys.argv[1:4]
    runs = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    husk = [vmm, "--kernel", kernel, "--initrd", initrd, "--vcpus", "1", "--memory", "256",
            "--console", "stdio", "--cmdline", CMDLINE]
    # acpi=off: QEMU's microvm ACPI is hardware-reduced, which takes away the ISA IRQ of the
    # serial console; without ACPI it describes the CPUs with an MP table instead.
    qemu = ["qemu-system-x86_64", "-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", "host", "-m", "256",
            "-smp", "1", "-kernel", kernel, "-initrd", initrd, "-append", CMDLINE,
            "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot"]
    results = {"husk-vmm": [], "husk-vmm --no-jail": [], "qemu microvm": []}
    # Interleave them so that a slow phase of the host hits all alike.
    for _ in range(runs):
        results["husk-vmm"].append(boot_once(husk))
        results["husk-vmm --no-jail"].append(boot_once(husk + ["--no-jail"]))
        results["qemu microvm"].append(boot_once(qemu))

    med = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
    print(f"Boot to the agent's ready line, {runs} runs each, 1 vCPU, 256 MiB, same kernel/initramfs/cmdline")
    print()
    print("| VMM | median (s) | min (s) | max (s) | guest uptime at ready, median (s) | ratio to QEMU |")
    print("|---|---|---|---|---|---|")
    for name, rs in results.items():
        times = [r[0] for r in rs]
        up = statistics.median(r[1] for r in rs)
        print(f"| {name} | {med[name]:.3f} | {min(times):.3f} | {max(times):.3f} | {up:.3f} | "
              f"{med[name] / med['qemu microvm']:.2f} |")
    print()
    for name in ["husk-vmm", "husk-vmm --no-jail"]:
        rss = statistics.median(r[2] for r in results[name])
        print(f"{name} RSS at the ready line without guest RAM (RssAnon + RssFile, both processes "
              f"of the jail), median: {rss / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
