#!/usr/bin/env bash
# `make bench`: boot-time table of husk-vmm against QEMU microvm, run where standard KVM is
# (inside the test host on PVM machines, see tests/testhost/README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${HUSK_BENCH_RUNS:-5}
where=$(tests/testhost/run.sh --check 2>/dev/null | head -1 || true)
echo "Where: ${where:-unknown}"
HUSK_TESTHOST_TIMEOUT=${HUSK_TESTHOST_TIMEOUT:-1200} tests/testhost/run.sh python3 tests/bench/boot_bench.py \
  target/release/husk-vmm target/guest/vmlinux target/guest/initramfs.img "$runs" </dev/null

echo
echo "Agent over vsock (1 vCPU, 256 MiB; through the agent's ttrpc API, as huskctl and the shim use it):"
echo
echo "| measurement | value |"
echo "|---|---|"
HUSK_TESTHOST_TIMEOUT=${HUSK_TESTHOST_TIMEOUT:-1200} tests/testhost/run.sh target/release/husk-agent-check bench </dev/null

echo
HUSK_TESTHOST_TIMEOUT=${HUSK_TESTHOST_TIMEOUT:-1200} tests/testhost/run.sh tests/bench/fs_bench.sh target/release/huskctl </dev/null

echo
HUSK_TESTHOST_TIMEOUT=${HUSK_TESTHOST_TIMEOUT:-1200} tests/testhost/run.sh tests/bench/ctr_bench.sh "${HUSK_BENCH_CTR_RUNS:-10}" </dev/null

echo
HUSK_TESTHOST_TIMEOUT=${HUSK_TESTHOST_TIMEOUT:-1200} tests/testhost/run.sh tests/bench/net_bench.sh \
  target/x86_64-unknown-linux-gnu/release/husk-netprobe "${HUSK_BENCH_NET_MIB:-64}" </dev/null

echo
HUSK_TESTHOST_TIMEOUT=${HUSK_TESTHOST_TIMEOUT:-1500} tests/testhost/run.sh tests/bench/cri_bench.sh \
  "${HUSK_BENCH_CRI_RUNS:-10}" "${HUSK_BENCH_CRI_PODS:-10}" </dev/null
