#!/bin/bash
# `make bench`, network part: TCP throughput both ways and HTTP request latency between a peer
# namespace and a husk pod on one CNI bridge, beside the same between two plain namespaces on
# that bridge; and what networking adds to a pod's start. Run inside the test host on PVM
# machines:
#   tests/testhost/run.sh tests/bench/net_bench.sh [MIB]
# Not yet part of `make bench`: in the test host it does not finish (issue 11).
set -eu
cd "$(dirname "$0")/../.."
MIB=${1:-64}
IMAGE=docker.io/library/busybox:latest
WORK=$(mktemp -d /tmp/husk-netbench.XXXXXX)
. tests/containerd/env.sh
PROBE=$PWD/tests/bench/net_probe.py
NS="husk-nb-pod husk-nb-peer husk-nb-a husk-nb-b husk-nb-start"
cleanup() {
  $CTR task kill -s SIGKILL nb >/dev/null 2>&1 || true
  sleep 1
  $CTR task delete nb >/dev/null 2>&1 || true
  $CTR container delete nb >/dev/null 2>&1 || true
  pkill -f "httpd -p 8080 -h $WORK" 2>/dev/null || true
  for ns in $NS; do cni "$ns" DEL >/dev/null 2>&1 || true; ip netns del "$ns" 2>/dev/null || true; done
  ip link del husk-br0 2>/dev/null || true
  ctrd_stop
  rm -rf "$WORK"
}
trap cleanup EXIT
husk_ctrd_setup "$WORK" "default_vcpus = 1" "default_memory = 256"
declare -A ip
for ns in $NS; do
  ip netns add "$ns"
  ip[$ns]=$(cni "$ns" ADD)
done
inns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
# Waits until something listens on TCP port $2 in namespace $1 (python starts slowly here).
wait_listen() {
  for _ in $(seq 100); do
    ip netns exec "$1" ss -ltn 2>/dev/null | grep -q ":$2 " && return 0
    sleep 0.2
  done
  echo "nothing listens on port $2 in $1" >&2; return 1
}

# Pod start: `ctr run --rm busybox true` with a CNI namespace and with a new empty one.
one() {
  local s e
  s=$(date +%s%N)
  $CTR run --rm --runtime io.containerd.kata.v2 "$@" </dev/null >/dev/null
  e=$(date +%s%N)
  echo "$(( (e - s) / 1000000 ))"
}
one $IMAGE warm true >/dev/null
with=() without=()
for i in 1 2 3; do
  with+=("$(one --with-ns network:/var/run/netns/husk-nb-start $IMAGE s$i true)")
  without+=("$(one $IMAGE n$i true)")
done
median3() { printf '%s\n' "$@" | sort -n | sed -n 2p; }

mkdir -p "$WORK/www" && echo hello > "$WORK/www/index.html"
$CTR run --runtime io.containerd.kata.v2 -d --with-ns network:/var/run/netns/husk-nb-pod $IMAGE nb \
  sh -c 'echo hello > /tmp/index.html && exec httpd -f -p 8080 -h /tmp' </dev/null
inns husk-nb-a busybox httpd -p 8080 -h "$WORK/www"
pod=${ip[husk-nb-pod]} peer=${ip[husk-nb-peer]} a=${ip[husk-nb-a]} b=${ip[husk-nb-b]}
# (Debian's static busybox wget crashes in its resolver: python asks.)
for _ in $(seq 60); do
  inns husk-nb-peer python3 "$PROBE" rtt "$pod" 8080 1 >/dev/null 2>&1 && break
  sleep 1
done

# peer -> pod: the guest's busybox nc is the sink; the sender times until the sink closes.
($CTR task exec --exec-id sink1 nb sh -c 'nc -l -p 5001 > /dev/null' </dev/null &)
sleep 2
to_pod=$(inns husk-nb-peer python3 "$PROBE" send "$pod" 5001 "$MIB")
# pod -> peer: the peer's sink times from the first byte to the end.
inns husk-nb-peer python3 "$PROBE" sink 5002 "$MIB" > "$WORK/from_pod" &
wait_listen husk-nb-peer 5002
$CTR task exec --exec-id send1 nb sh -c "dd if=/dev/zero bs=65536 count=$((MIB * 16)) 2>/dev/null | nc $peer 5002" </dev/null
wait
from_pod=$(cat "$WORK/from_pod")
# The same between two plain namespaces on the bridge.
inns husk-nb-a python3 "$PROBE" sink 5001 "$MIB" > "$WORK/veth_ab" &
wait_listen husk-nb-a 5001
inns husk-nb-b python3 "$PROBE" send "$a" 5001 "$MIB" > /dev/null
wait
veth=$(cat "$WORK/veth_ab")
rtt_pod=$(inns husk-nb-peer python3 "$PROBE" rtt "$pod" 8080 200)
rtt_veth=$(inns husk-nb-b python3 "$PROBE" rtt "$a" 8080 200)
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }

echo "Pod network (CNI bridge, tc-mirred tap, virtio-net), $MIB MiB per transfer, 1 vCPU guest:"
echo
echo "| measurement | husk pod | two plain veth namespaces | ratio |"
echo "|---|---|---|---|"
echo "| TCP peer -> pod (MiB/s) | $to_pod | $veth | $(ratio "$to_pod" "$veth") |"
echo "| TCP pod -> peer (MiB/s) | $from_pod | $veth | $(ratio "$from_pod" "$veth") |"
echo "| HTTP request round trip, median of 200 (ms) | $rtt_pod | $rtt_veth | $(ratio "$rtt_pod" "$rtt_veth") |"
echo
echo "Pod start, ctr run --rm busybox true, median of 3: with a CNI namespace $(median3 "${with[@]}") ms, with a new empty namespace $(median3 "${without[@]}") ms"
