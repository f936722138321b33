#!/bin/bash
# `make bench`, network part: TCP throughput both ways and HTTP request round trips between a
# peer namespace and a husk pod on one CNI bridge, beside the same between two plain namespaces
# on that bridge; and what networking adds to a pod's start. Runs where standard KVM is (inside
# the test host on PVM machines):
#   tests/testhost/run.sh tests/bench/net_bench.sh PROBE [MIB]
# PROBE is the static husk-netprobe (make netprobe): the same binary measures in the namespaces
# and, bound into the container, in the guest.
set -eu
cd "$(dirname "$0")/../.."
PROBE_BIN=$(realpath -e "${1:?usage: net_bench.sh PROBE [MIB]}")
MIB=${2:-64}
IMAGE=docker.io/library/busybox:latest
WORK=$(mktemp -d /tmp/husk-netbench.XXXXXX)
. tests/containerd/env.sh
NS="husk-nb-pod husk-nb-peer husk-nb-a husk-nb-b husk-nb-start"
mkdir -p "$WORK/probe" "$WORK/www"
cp "$PROBE_BIN" "$WORK/probe/husk-netprobe"
PROBE=$WORK/probe/husk-netprobe
echo hello >"$WORK/www/index.html"
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
# Runs a command in the pod's container.
ing() { $CTR task exec --exec-id "nb$RANDOM" nb "$@" </dev/null; }
# The same in the pod's guest.
wait_listen_guest() {
  for _ in $(seq 60); do
    ing netstat -ltn 2>/dev/null | grep -q ":$1 " && return 0
    sleep 0.5
  done
  echo "net_bench: nothing listens on port $1 in the pod" >&2
  return 1
}

# Pod start: `ctr run --rm busybox true` with a CNI namespace and with a new empty one.
one() {
  local s e
  s=$(date +%s%N)
  $CTR run --rm --runtime io.containerd.kata.v2 "$@" </dev/null >/dev/null
  e=$(date +%s%N)
  echo "$(((e - s) / 1000000))"
}
one $IMAGE warm true >/dev/null
with=() without=()
for i in 1 2 3; do
  with+=("$(one --with-ns network:/var/run/netns/husk-nb-start $IMAGE s$i true)")
  without+=("$(one $IMAGE n$i true)")
done
median3() { printf '%s\n' "$@" | sort -n | sed -n 2p; }

$CTR run --runtime io.containerd.kata.v2 -d --with-ns network:/var/run/netns/husk-nb-pod \
  --mount "type=bind,src=$WORK/probe,dst=/probe,options=rbind:ro" $IMAGE nb \
  sh -c 'echo hello > /tmp/index.html && exec httpd -f -p 8080 -h /tmp' </dev/null
inns husk-nb-a busybox httpd -p 8080 -h "$WORK/www"
pod=${ip[husk-nb-pod]} peer=${ip[husk-nb-peer]} a=${ip[husk-nb-a]} b=${ip[husk-nb-b]}
netns_wait_listen husk-nb-a 8080

# Every transfer is timed by its sender, from the first byte sent until the sink, having read
# everything, closes.
# The tap's counters as "BYTES PACKETS": rx counts the frames the VMM wrote (the guest's),
# tx the frames the VMM read (for the guest).
tap_counters() {
  local d=/sys/class/net/tap0_husk/statistics/$1
  echo $(inns husk-nb-pod cat "${d}_bytes" "${d}_packets")
}
# The mean frame size on the tap in direction $1 since the counters $2 were taken.
mean_frame() {
  local b0 p0 b1 p1
  read -r b0 p0 <<<"$2"
  read -r b1 p1 <<<"$(tap_counters "$1")"
  echo $(((b1 - b0) / (p1 > p0 ? p1 - p0 : 1)))
}
# peer -> pod: the sink runs in the guest.
tx0=$(tap_counters tx)
ing /probe/husk-netprobe sink 5001 "$MIB" >/dev/null &
sink=$!
wait_listen_guest 5001
to_pod=$(inns husk-nb-peer "$PROBE" send "$pod" 5001 "$MIB")
wait $sink
to_pod_frame=$(mean_frame tx "$tx0")
rx0=$(tap_counters rx)
# pod -> peer: the sink runs in the peer namespace, the sender in the guest.
inns husk-nb-peer "$PROBE" sink 5002 "$MIB" >/dev/null &
sink=$!
netns_wait_listen husk-nb-peer 5002
from_pod=$(ing /probe/husk-netprobe send "$peer" 5002 "$MIB")
wait $sink
from_pod_frame=$(mean_frame rx "$rx0")
# The same between two plain namespaces on the bridge, both ways.
inns husk-nb-a "$PROBE" sink 5001 "$MIB" >/dev/null &
sink=$!
netns_wait_listen husk-nb-a 5001
veth_ab=$(inns husk-nb-b "$PROBE" send "$a" 5001 "$MIB")
wait $sink
inns husk-nb-b "$PROBE" sink 5002 "$MIB" >/dev/null &
sink=$!
netns_wait_listen husk-nb-b 5002
veth_ba=$(inns husk-nb-a "$PROBE" send "$b" 5002 "$MIB")
wait $sink
rtt_pod=$(inns husk-nb-peer "$PROBE" rtt "$pod" 8080 200)
rtt_veth=$(inns husk-nb-b "$PROBE" rtt "$a" 8080 200)
ratio() { awk -v x="$1" -v y="$2" 'BEGIN { printf "%.2f", x / y }'; }

echo "Pod network (CNI bridge, tc-mirred tap, virtio-net), $MIB MiB per transfer, 1 vCPU guest,"
echo "husk-netprobe on both ends:"
echo
echo "| measurement | husk pod | two plain veth namespaces | ratio |"
echo "|---|---|---|---|"
echo "| TCP peer -> pod (MiB/s) | $to_pod | $veth_ab (b -> a) | $(ratio "$to_pod" "$veth_ab") |"
echo "| TCP pod -> peer (MiB/s) | $from_pod | $veth_ba (a -> b) | $(ratio "$from_pod" "$veth_ba") |"
echo "| HTTP request round trip, new connection each, median of 200 (ms) | $rtt_pod | $rtt_veth | $(ratio "$rtt_pod" "$rtt_veth") |"
echo
echo "Mean frame on the tap (virtio-net offloads: more than the 1500-byte MTU means TCP segments"
echo "travel whole between guest and host): peer -> pod ${to_pod_frame} bytes, pod -> peer ${from_pod_frame} bytes"
echo
echo "Pod start, ctr run --rm busybox true, median of 3: with a CNI namespace $(median3 "${with[@]}") ms," \
  "with a new empty namespace $(median3 "${without[@]}") ms"
