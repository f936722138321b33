#!/usr/bin/env python3
"""Small network probes for tests/bench/net_bench.sh, run inside a namespace:

  net_probe.py send HOST PORT MIB   send MIB MiB over one TCP connection; print MiB/s
  net_probe.py sink PORT MIB        accept one connection, read MIB MiB (or to EOF); print MiB/s
  net_probe.py rtt HOST PORT N      N HTTP GETs, one connection each; print the median in ms
"""
import http.client
import socket
import statistics
import sys
import time

CHUNK = 1 << 16


def send(host, port, mib):
    data = b"\0" * CHUNK
    total = mib << 20
    s = socket.create_connection((host, port), timeout=60)
    start = time.monotonic()
    sent = 0
    while sent < total:
        s.sendall(data)
        sent += len(data)
    s.shutdown(socket.SHUT_WR)
    # The receiver closes once it has read everything: that is when the data has arrived.
    while s.recv(CHUNK):
        pass
    elapsed = time.monotonic() - start
    s.close()
    print(f"{mib / elapsed:.1f}")


def sink(port, mib):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(1)
    ls.settimeout(120)
    c, _ = ls.accept()
    # A stalled transfer ends the probe with an error instead of waiting for good.
    c.settimeout(60)
    got = 0
    start = None
    # busybox nc does not half-close at the end of its input: stop at the size agreed on.
    while got < mib << 20:
        d = c.recv(1 << 20)
        if not d:
            break
        if start is None:
            start = time.monotonic()
        got += len(d)
    elapsed = time.monotonic() - (start or time.monotonic())
    c.close()
    print(f"{(got / (1 << 20)) / max(elapsed, 1e-6):.1f}")


def rtt(host, port, n):
    times = []
    for _ in range(n):
        start = time.monotonic()
        c = http.client.HTTPConnection(host, port, timeout=10)
        c.request("GET", "/")
        c.getresponse().read()
        c.close()
        times.append((time.monotonic() - start) * 1e3)
    print(f"{statistics.median(times):.2f}")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "send":
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "sink":
        sink(int(sys.argv[2]), int(sys.argv[3]))
    elif cmd == "rtt":
        rtt(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(__doc__)
