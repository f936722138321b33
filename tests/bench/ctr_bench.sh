#!/bin/bash
# `make bench`, containerd part: `ctr run --rm` of busybox `true` with husk
# (io.containerd.kata.v2) against runc on the same private containerd, alternating, and the
# memory of an idle sandbox. Run inside the test host on PVM machines:
#   tests/testhost/run.sh tests/bench/ctr_bench.sh [RUNS]
set -eu
cd "$(dirname "$0")/../.."
RUNS=${1:-10}
IMAGE=docker.io/library/busybox:latest
WORK=$(mktemp -d /tmp/husk-bench.XXXXXX)
. tests/containerd/env.sh
trap 'ctrd_stop; rm -rf "$WORK"' EXIT
husk_ctrd_setup "$WORK" "default_vcpus = 1" "default_memory = 256"

# Seconds of one `ctr run --rm` with runtime $1.
one() {
  local s e
  s=$(date +%s%N)
  $CTR run --rm --runtime "$1" $IMAGE "b$2" true </dev/null >/dev/null
  e=$(date +%s%N)
  echo "$(( (e - s) / 1000 ))"
}

# A warm-up of each, not counted: the first exec of every binary reads it over 9p.
one io.containerd.runc.v2 w1 >/dev/null
one io.containerd.kata.v2 w2 >/dev/null
: > "$WORK/runc"
: > "$WORK/husk"
for i in $(seq "$RUNS"); do
  one io.containerd.runc.v2 "r$i" >> "$WORK/runc"
  one io.containerd.kata.v2 "h$i" >> "$WORK/husk"
done

# median min max of microseconds in file $1, in seconds
stats() {
  sort -n "$1" | awk '{v[NR]=$1} END {
    m = (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2;
    printf "%.3f %.3f %.3f\n", m/1e6, v[1]/1e6, v[NR]/1e6 }'
}
# (no process substitution: the test host has no /dev/fd)
set -- $(stats "$WORK/runc"); rm=$1 rmin=$2 rmax=$3
set -- $(stats "$WORK/husk"); hm=$1 hmin=$2 hmax=$3
echo "ctr run --rm busybox true, $RUNS runs each, alternating, same containerd:"
echo
echo "| runtime | median (s) | min | max | ratio to runc |"
echo "|---|---|---|---|---|"
echo "| runc (io.containerd.runc.v2) | $rm | $rmin | $rmax | 1.00 |"
echo "| husk (io.containerd.kata.v2) | $hm | $hmin | $hmax | $(echo "scale=2; $hm / $rm" | bc) |"

# Memory of an idle sandbox: the shim and the VMM (guest RAM the guest touched is part of the
# VMM's RSS, as shared memory).
kib() { awk -v k="$2" '$1==k":"{print $2}' "/proc/$1/status"; }
$CTR run --runtime io.containerd.kata.v2 -d $IMAGE idle sleep 3600 </dev/null
$CTR run --runtime io.containerd.runc.v2 -d $IMAGE idle-runc sleep 3600 </dev/null
sleep 3
# The jailed VMM is the child of the process the shim started, which only waits.
waiter=$(pgrep -xo husk-vmm)
vmm=$(awk '{print $1}' "/proc/$waiter/task/$waiter/children")
shim=$(pgrep -f containerd-shim-kata-v2 | head -1)
runc_shim=$(pgrep -f containerd-shim-runc-v2 | head -1)
echo
echo "Idle sandbox (busybox sleep, 1 vCPU, 256 MiB guest), KiB:"
echo
echo "| process | VmRSS | RssAnon | RssFile | RssShmem |"
echo "|---|---|---|---|---|"
for p in "containerd-shim-kata-v2:$shim" "husk-vmm (jail's waiter):$waiter" "husk-vmm (VMM):$vmm" \
  "containerd-shim-runc-v2:$runc_shim"; do
  n=${p%%:*}; pid=${p##*:}
  [ -n "$pid" ] || continue
  echo "| $n | $(kib "$pid" VmRSS) | $(kib "$pid" RssAnon) | $(kib "$pid" RssFile) | $(kib "$pid" RssShmem) |"
done
total=$(( $(kib "$shim" VmRSS) + $(kib "$waiter" VmRSS) + $(kib "$vmm" VmRSS) ))
echo
echo "husk sandbox total (shim + both VMM processes): $total KiB; runc shim alone: $(kib "$runc_shim" VmRSS) KiB"
for c in idle idle-runc; do
  $CTR task kill -s SIGKILL $c
done
sleep 2
for c in idle idle-runc; do
  $CTR task delete $c >/dev/null 2>&1 || true
  $CTR container delete $c >/dev/null 2>&1 || true
done
