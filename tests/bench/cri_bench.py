"""`make bench`, CRI part: pods started as kubelet starts them, through containerd's CRI
plugin, with the handler `kata` (husk) against `runc` on the same containerd, in one process
(no client start-up in the numbers):

- one pod at a time, RUNS each, alternating: RunPodSandbox, then CreateContainer and
  StartContainer, then the first ExecSync answered; then StopPodSandbox and RemovePodSandbox;
- PODS pods started at once: the wall time until every one answered an ExecSync, then the host
  memory of the idle pods (proportional set sizes of every process of theirs on the host, the
  guest's memory apart) and their idle CPU use, from which the RuntimeClass overhead follows.

Run by tests/bench/cri_bench.sh, with containerd up (tests/cri/lib.sh)."""

import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cri"))
import cri  # noqa: E402

IMAGE = "docker.io/library/busybox:latest"
HANDLERS = (("runc", "runc"), ("husk", "kata"))


def pod_to_exec(c, handler, name):
    """Times one pod: returns its id and the seconds to (sandbox ready, container running,
    ExecSync answered), each from the RunPodSandbox call."""
    t0 = time.monotonic()
    pod = c.run_pod_sandbox(cri.pod_config(name, uid=name), handler).pod_sandbox_id
    t1 = time.monotonic()
    cfg = cri.container_config("app", IMAGE, ["sleep"], ["3600"])
    ctr = c.create_container(pod, cfg).container_id
    c.start_container(ctr)
    t2 = time.monotonic()
    out = c.exec_sync(ctr, ["echo", "ready"]).stdout
    t3 = time.monotonic()
    if out != b"ready\n":
        raise RuntimeError("pod %s: ExecSync printed %r" % (name, out))
    return pod, (t1 - t0, t2 - t0, t3 - t0)


def remove(c, pod):
    t0 = time.monotonic()
    c.stop_pod_sandbox(pod)
    c.remove_pod_sandbox(pod)
    return time.monotonic() - t0


def med(xs):
    return statistics.median(xs)


def sequential(c, runs):
    times = {label: [] for label, _ in HANDLERS}
    gone = {label: [] for label, _ in HANDLERS}
    # One of each first, not counted: the first exec of every binary reads it over 9p.
    for label, handler in HANDLERS:
        remove(c, pod_to_exec(c, handler, "warm-%s" % label)[0])
    for i in range(runs):
        for label, handler in HANDLERS:
            pod, t = pod_to_exec(c, handler, "seq-%s-%d" % (label, i))
            times[label].append(t)
            gone[label].append(remove(c, pod))
    print("Pods through CRI, one at a time: %d runs each, alternating, same containerd; "
          "seconds from RunPodSandbox (median, min-max of the last column):" % runs)
    print()
    print("| handler | sandbox ready | container running | ExecSync answered | min-max | "
          "ratio to runc | Stop+RemovePodSandbox |")
    print("|---|---|---|---|---|---|---|")
    base = med([t[2] for t in times["runc"]])
    for label, handler in HANDLERS:
        ts = times[label]
        last = [t[2] for t in ts]
        print("| %s (%s) | %.2f | %.2f | %.2f | %.2f-%.2f | %.2f | %.2f |" % (
            label, handler, med([t[0] for t in ts]), med([t[1] for t in ts]), med(last),
            min(last), max(last), med(last) / base, med(gone[label])))


def pids_where(pred):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if pred(int(d)):
                    out.append(int(d))
            except OSError:
                pass
    return out


def cmdline(pid):
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        return f.read().split(b"\0")


def ppid(pid):
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def comm(pid):
    with open("/proc/%d/comm" % pid) as f:
        return f.read().strip()


def descendants(roots):
    """`roots` and every process below them."""
    parent = {}
    for p in pids_where(lambda p: True):
        try:
            parent[p] = ppid(p)
        except OSError:
            pass
    found = set(roots)
    grew = True
    while grew:
        grew = False
        for p, pp in parent.items():
            if pp in found and p not in found:
                found.add(p)
                grew = True
    return sorted(found)


def rollup(pid):
    """kB of Pss and Pss_Shmem (the guest's RAM, for a VMM) of process `pid`."""
    vals = {}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                vals[parts[0][:-1]] = int(parts[1])
    return vals.get("Pss", 0), vals.get("Pss_Shmem", 0)


def cpu_ticks(pids):
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total


def shim_pids(name):
    def is_shim(p):
        argv = cmdline(p)
        return bool(argv) and os.path.basename(argv[0]).decode(errors="replace") == name
    return pids_where(is_shim)


def at_once(c, pods, idle_s):
    print("%d pods started at once (one thread each), then idle:" % pods)
    print()
    print("| handler | wall time to all ExecSync answered (s) | host PSS of the pods' processes, "
          "guest RAM apart (MiB) | per pod (MiB) | guest RAM touched, per pod (MiB) | "
          "idle CPU, per pod (millicores) |")
    print("|---|---|---|---|---|---|")
    per_pod_husk = None
    for label, handler in HANDLERS:
        made, errors = [], []

        def one(i):
            try:
                made.append(pod_to_exec(c, handler, "par-%s-%d" % (label, i))[0])
            except Exception as e:  # reported below; the row then fails
                errors.append("%s" % e)
        threads = [threading.Thread(target=one, args=(i,)) for i in range(pods)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        if errors:
            raise RuntimeError("%s: %d of %d pods failed: %s" % (label, len(errors), pods, errors[0]))
        time.sleep(3)
        shims = shim_pids("containerd-shim-%s-v2" % ("kata" if handler == "kata" else "runc"))
        procs = descendants(shims)
        tick = os.sysconf("SC_CLK_TCK")
        c0 = cpu_ticks(procs)
        time.sleep(idle_s)
        cpu_m = (cpu_ticks(procs) - c0) / tick / idle_s * 1000 / pods
        pss = shmem = 0
        for p in procs:
            try:
                a, b = rollup(p)
            except OSError:
                continue
            pss += a
            shmem += b if comm(p) == "husk-vmm" else 0
        host = (pss - shmem) / 1024
        print("| %s (%s) | %.2f | %.1f | %.1f | %s | %.0f |" % (
            label, handler, wall, host, host / pods,
            "%.1f" % (shmem / 1024 / pods) if handler == "kata" else "-", cpu_m))
        if handler == "kata":
            per_pod_husk = (host + shmem / 1024) / pods, cpu_m
        for pod in made:
            remove(c, pod)
    mib, cpu_m = per_pod_husk
    # Rounded up to 8 MiB and 50m, with a quarter more for a busier guest than an idle one.
    mem = -(-int(mib * 1.25) // 8) * 8
    cpu = max(50, -(-int(cpu_m * 1.25) // 50) * 50)
    print()
    print("RuntimeClass overhead from these numbers (an idle pod's shim, VMM and touched guest "
          "RAM, plus a quarter): podFixed memory %dMi, cpu %dm" % (mem, cpu))


def main():
    sock, runs, pods = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with cri.Cri(sock, timeout=900) as c:
        if runs > 0:
            sequential(c, runs)
            print()
        if pods > 0:
            at_once(c, pods, idle_s=10)


if __name__ == "__main__":
    main()
