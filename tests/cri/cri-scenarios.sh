#!/bin/bash
# Kubernetes pods through CRI, as kubelet makes them: a private containerd with its CRI plugin,
# CNI's bridge, and the runtime handlers `kata` (husk) and `runc`. Each scenario runs with both
# handlers where the behaviour should match, so the tests compare husk with runc rather than with
# our own reading. Run inside the test host, as root, from the repository:
#   tests/testhost/run.sh tests/cri/cri-scenarios.sh [SCENARIO...]
# Each scenario's output is framed by "=== begin NAME" and "=== end NAME STATUS" lines; its
# lines start with the handler they were measured with.
set -u
cd "$(dirname "$0")/../.."
REPO=$PWD
IMAGE=docker.io/library/busybox:latest
T=${HUSK_CRI_TIMEOUT:-120}

WORK=$(mktemp -d /tmp/husk-cri.XXXXXX)
export CTRD_NAMESPACE=k8s.io CTRD_CRI=1 HUSK_CRI_STATE=$WORK/cri-state
. tests/containerd/env.sh
trap 'cleanup_pods; ctrd_stop; ip link del husk-cri0 2>/dev/null; rm -rf "$WORK"' EXIT
husk_ctrd_setup "$WORK" "default_vcpus = 1" "default_memory = 256" || exit 1
ctrd_import_pause || exit 1

cri() { timeout -k 5 "$T" /usr/bin/python3 "$REPO/tests/cri/cri.py" --socket "$CTRD_SOCK" "$@"; }

# Removes every pod CRI knows (a failed scenario's too).
cleanup_pods() {
  local p
  for p in $(cri pods 2>/dev/null | /usr/bin/python3 -c '
import json, sys
for p in json.load(sys.stdin).get("items", []): print(p["id"])' 2>/dev/null); do
    cri stopp "$p" >/dev/null 2>&1
    cri rmp "$p" >/dev/null 2>&1
  done
}

# What husk or runc left on this machine once every pod is gone.
leftovers() {
  pgrep -x husk-vmm | sed 's/^/vmm pid /'
  pgrep -f containerd-shim | sed 's/^/shim pid /'
  ls -A /run/husk/s 2>/dev/null | sed 's/^/sandbox dir /'
  grep -E '/run/husk|kata-containers|io.containerd.grpc.v1.cri' /proc/mounts | sed 's/^/mount /'
  ip -o link show | grep -E 'tap|_husk' | sed 's/^/link /'
  find /sys/fs/cgroup -name '*husk*' -type d 2>/dev/null | sed 's/^/cgroup /'
  ls /var/run/netns 2>/dev/null | grep cni | sed 's/^/netns /'
}

# json FIELD.PATH: reads a field of the JSON object on stdin ("a.b.0.c").
json() {
  /usr/bin/python3 -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[int(k)] if isinstance(v, list) else v.get(k, "")
print(v)' "$1"
}

# wait_running CID: waits until container CID runs (or exited); prints its state.
wait_state() {
  local st=""
  for _ in $(seq 100); do
    st=$(cri inspect "$1" | json status.state)
    [ "$st" = "$2" ] && break
    sleep 0.2
  done
  echo "$st"
}

# The pod every handler gets: hostname, DNS, a log directory, volumes as kubelet hands them over.
s_pod() {
  local h vol
  for h in kata runc; do
    vol=$WORK/vol-$h
    mkdir -p "$vol/empty" "$vol/projected" "$WORK/logs-$h"
    echo v1 > "$vol/projected/key"
    echo single > "$vol/file"
    local pod c1 c2
    pod=$(cri runp --name "p-$h" --uid "uid-$h" --hostname web-0 --log-dir "$WORK/logs-$h" \
      --dns-server 10.88.0.1 --dns-search svc.cluster.local --runtime-handler "$h") ||
      { echo "$h runp failed"; continue; }
    echo "$h pod ip $(cri inspectp "$pod" | json status.network.ip | cut -d. -f1-3)"
    c1=$(cri create "$pod" --name app --image $IMAGE --log-path app.log \
      --mount "$vol/empty:/data" --mount "$vol/projected:/etc/conf:ro" \
      --mount "$vol/file:/etc/single.conf" --mount "$WORK/new-$h/sub:/made" \
      -- sh -c 'echo out-line; echo err-line >&2; echo dev-stdout > /dev/stdout; echo hi > /data/from-app; exec sleep 1000')
    cri start "$c1" >/dev/null
    echo "$h app state $(wait_state "$c1" CONTAINER_RUNNING)"
    c2=$(cri create "$pod" --name side --image $IMAGE --log-path side.log --mount "$vol/empty:/data" \
      -- sh -c 'exec sleep 1000')
    cri start "$c2" >/dev/null
    echo "$h side state $(wait_state "$c2" CONTAINER_RUNNING)"
    echo "$h hostname $(cri exec-sync "$c1" -- hostname)"
    echo "$h side hostname $(cri exec-sync "$c2" -- hostname)"
    # The volume checks run with husk only: in the test host, runc's containers do not see the
    # bind mounts CRI gives them (even /etc/resolv.conf), a fault of that nested setup we have
    # not explained; with husk they arrive through the VM's shared directory.
    if [ "$h" = kata ]; then
      echo "$h resolv $(cri exec-sync "$c1" -- cat /etc/resolv.conf | tr '\n' ' ')"
      echo "$h hosts has hostname $(cri exec-sync "$c1" -- grep -c web-0 /etc/hosts)"
      echo "$h emptyDir shared $(cri exec-sync "$c2" -- cat /data/from-app)"
      echo "$h emptyDir on host $(cat "$vol/empty/from-app")"
      echo "$h subPath file $(cri exec-sync "$c1" -- cat /etc/single.conf)"
      echo "$h missing hostPath $(cri exec-sync "$c1" -- sh -c 'echo x > /made/f && echo writable')"
      echo "$h read-only $(cri exec-sync "$c1" -- sh -c 'echo x > /etc/conf/key 2>/dev/null && echo written || echo refused')"
      # kubelet rewrites projected volumes in place while the pod runs: an atomic rename.
      echo v2 > "$vol/projected/.key.new" && mv "$vol/projected/.key.new" "$vol/projected/key"
      local seen=""
      for _ in $(seq 50); do
        seen=$(cri exec-sync "$c1" -- cat /etc/conf/key)
        [ "$seen" = v2 ] && break
        sleep 0.2
      done
      echo "$h projected update $seen"
    fi
    echo "$h ipc shared $(cri exec-sync "$c1" -- readlink /proc/self/ns/ipc | cut -c1-4)$( \
      [ "$(cri exec-sync "$c1" -- readlink /proc/self/ns/ipc)" = "$(cri exec-sync "$c2" -- readlink /proc/self/ns/ipc)" ] && echo ' same')"
    cri exec-sync "$c1" --timeout 2 -- sleep 30 >/dev/null 2>"$WORK/timeout.err"
    echo "$h exec-sync timeout status $? $(head -c 200 "$WORK/timeout.err")"
    echo "$h exec-sync status $(cri exec-sync "$c1" -- sh -c 'exit 7'; echo $?)"
    echo "$h stats $(cri stats "$c1" | /usr/bin/python3 -c '
import json, sys
s = json.load(sys.stdin)["stats"]
print("cpu", int(s["cpu"].get("usage_core_nano_seconds", {}).get("value", 0)) > 0,
      "memory", int(s["memory"].get("working_set_bytes", {}).get("value", 0)) > 0)')"
    # A changed image: the container goes, a new one comes, the sibling runs on.
    cri stop "$c1" --timeout 5 >/dev/null && cri rm "$c1" >/dev/null
    c1=$(cri create "$pod" --name app --image $IMAGE --log-path app-1.log -- sh -c 'echo second; exec sleep 1000')
    cri start "$c1" >/dev/null
    echo "$h replaced state $(wait_state "$c1" CONTAINER_RUNNING) side $(cri inspect "$c2" | json status.state)"
    sleep 1
    echo "$h log $(sed -E 's/^[0-9T:.+-]+Z? //' "$WORK/logs-$h/app.log" | sort | tr '\n' '|')"
    echo "$h log format $(head -n1 "$WORK/logs-$h/app.log" | grep -cE '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+(Z|[+-][0-9:]+) (stdout|stderr) [FP] ')"
    cri stopp "$pod" >/dev/null && cri rmp "$pod" >/dev/null
    echo "$h removed $?"
  done
  leftovers
}

# Pods that ask for the node's namespaces: refused by husk, naming the field; runc runs them.
s_host_namespaces() {
  local flag pod
  for flag in --host-network --host-pid --host-ipc; do
    if pod=$(cri runp --name "h$flag" --uid "h$flag" --runtime-handler kata $flag 2>"$WORK/err"); then
      echo "kata $flag accepted"
      cri stopp "$pod" >/dev/null; cri rmp "$pod" >/dev/null
    else
      echo "kata $flag refused: $(tail -n1 "$WORK/err")"
    fi
    if pod=$(cri runp --name "r$flag" --uid "r$flag" --runtime-handler runc $flag 2>"$WORK/err"); then
      echo "runc $flag accepted"
      cri stopp "$pod" >/dev/null; cri rmp "$pod" >/dev/null
    else
      echo "runc $flag refused: $(tail -n1 "$WORK/err")"
    fi
  done
  leftovers
}

# A memory limit: within the VM it reaches the container's cgroup; beyond the VM (containerd 1.6
# does not tell the shim the pod's total at RunPodSandbox) it is refused, saying what to change.
s_memory() {
  local pod c
  pod=$(cri runp --name mem --uid mem --runtime-handler kata) || return 1
  c=$(cri create "$pod" --name small --image $IMAGE --memory 67108864 -- sleep 1000) &&
    cri start "$c" && echo "small memory.max $(cri exec-sync "$c" -- cat /sys/fs/cgroup/memory.max)"
  # (CRI's CreateContainer only records the container: the shim sees it at StartContainer.)
  c=$(cri create "$pod" --name big --image $IMAGE --memory 4294967296 -- sleep 1000)
  if cri start "$c" 2>"$WORK/err"; then
    echo "big accepted"
  else
    echo "big refused: $(tail -n1 "$WORK/err")"
  fi
  cri stopp "$pod" && cri rmp "$pod"
  echo "removed $?"
  leftovers
}

# kubectl port-forward (CRI PortForward through containerd's streaming server) to servers on
# 0.0.0.0 and on 127.0.0.1 in the pod, with each handler.
s_port_forward() {
  local h pod c port got
  for h in kata runc; do
    pod=$(cri runp --name "pf-$h" --uid "pf-$h" --runtime-handler "$h") || { echo "$h runp failed"; continue; }
    c=$(cri create "$pod" --name web --image $IMAGE -- sh -c \
      'mkdir -p /www && echo hello-pf > /www/index.html && httpd -p 8080 -h /www && httpd -f -p 127.0.0.1:8081 -h /www')
    cri start "$c"
    for port in 8080 8081; do
      got=""
      for _ in $(seq 30); do
        got=$(cri pf-get "$pod" $port --send 'GET /index.html HTTP/1.0\r\n\r\n' --timeout 10 2>"$WORK/pf.err" | tail -n1)
        [ "$got" = hello-pf ] && break
        sleep 0.5
      done
      echo "$h port $port: ${got:-$(tail -n1 "$WORK/pf.err")}"
    done
    cri stopp "$pod" && cri rmp "$pod"
  done
  leftovers
}

scenarios=${*:-pod host_namespaces memory port_forward}
for s in $scenarios; do
  echo "=== begin $s"
  "s_$s" 2>&1
  echo "=== end $s $?"
done
