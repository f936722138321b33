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
. tests/cri/lib.sh
# sandbox_cgroup_only: the pod's cgroup holds the shim as well as the VMM (checked by s_resources).
cri_setup "default_vcpus = 1" "default_memory = 256" "[runtime]" "sandbox_cgroup_only = true" || exit 1

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
    {
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
    }
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
# 0.0.0.0, on 127.0.0.1 and on the pod IP only, in the pod, with each handler.
s_port_forward() {
  local h pod c port got
  for h in kata runc; do
    pod=$(cri runp --name "pf-$h" --uid "pf-$h" --runtime-handler "$h") || { echo "$h runp failed"; continue; }
    c=$(cri create "$pod" --name web --image $IMAGE -- sh -c \
      'mkdir -p /www && echo hello-pf > /www/index.html && httpd -p 8080 -h /www &&
       ip=$(ip -4 -o addr show eth0 | sed "s/.* inet \([0-9.]*\).*/\1/") && httpd -p "$ip:8082" -h /www &&
       httpd -f -p 127.0.0.1:8081 -h /www')
    cri start "$c"
    # 8080 waits for the servers to start; by then the others are up. containerd 1.6 dials
    # localhost in the pod's namespace, so under runc a server on the pod IP alone (8082) is not
    # reached; under husk the agent dials the guest's addresses too.
    for port in 8080 8081 8082; do
      got=""
      for _ in $(seq "$([ $port = 8080 ] && echo 30 || echo 2)"); do
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

# Resources as kubelet sets them, in a pod cgroup made as kubelet makes it (cgroup_parent): a
# cpuset of the host's last CPU and an OOM score. Under husk the container's guest cpuset is the
# vCPU that runs there, the vCPU thread is pinned to it, and the sandbox cgroup below the pod's
# holds the VMM, every thread of it and the shim.
s_resources() {
  local h pod c cpu parent vmm cg t pid
  cpu=$(( $(nproc) - 1 ))
  echo "asked cpu $cpu"
  for h in kata runc; do
    parent=/husk-pods/res-$h
    mkdir -p "/sys/fs/cgroup$parent"
    pod=$(cri runp --name "res-$h" --uid "res-$h" --cgroup-parent "$parent" --runtime-handler "$h") ||
      { echo "$h runp failed"; continue; }
    c=$(cri create "$pod" --name app --image $IMAGE --cpuset "$cpu" --oom-score-adj 500 -- sleep 1000)
    cri start "$c" >/dev/null
    echo "$h state $(wait_state "$c" CONTAINER_RUNNING)"
    echo "$h container cpuset $(cri exec-sync "$c" -- cat /sys/fs/cgroup/cpuset.cpus.effective)"
    echo "$h container oom_score_adj $(cri exec-sync "$c" -- cat /proc/1/oom_score_adj)"
    if [ "$h" = runc ]; then
      pid=$(cri inspect "$c" --verbose | /usr/bin/python3 -c '
import json, sys
print(json.loads(json.load(sys.stdin)["info"]["info"])["pid"])')
      cg=$(sed -n 's/^0:://p' "/proc/$pid/cgroup")
      echo "$h container cgroup below parent $(case $cg in "$parent"/*) echo yes ;; *) echo "no: $cg" ;; esac)"
    else

      # The jailed VMM is the newest husk-vmm, the child of the one the shim started.
      vmm=$(pgrep -xn husk-vmm)
      cg=$(sed -n 's/^0:://p' "/proc/$vmm/cgroup")
      echo "$h vmm oom_score_adj $(for p in $(pgrep -x husk-vmm); do cat "/proc/$p/oom_score_adj"; done | sort -u | tr '\n' ' ')"
      for t in /proc/$vmm/task/*; do
        [ "$(cat "$t/comm")" = vcpu0 ] && echo "$h vcpu0 cpus $(sed -n 's/^Cpus_allowed_list:\s*//p' "$t/status")"
      done
      echo "$h sandbox cgroup below parent $(case $cg in "$parent"/*) echo yes ;; *) echo "no: $cg" ;; esac)"
      echo "$h sandbox cgroup cpuset $(cat "/sys/fs/cgroup$cg/cpuset.cpus")"
      echo "$h vmm threads cgroups $(cat /proc/"$vmm"/task/*/cgroup | sort -u | wc -l)"
      echo "$h shim in sandbox cgroup $(grep -lx "0::$cg" /proc/$(pgrep -fn containerd-shim-kata-v2)/cgroup >/dev/null && echo yes || echo no)"
    fi
    cri stopp "$pod" >/dev/null && cri rmp "$pod" >/dev/null
    echo "$h removed $?"
    rmdir "/sys/fs/cgroup$parent" /sys/fs/cgroup/husk-pods 2>/dev/null
  done
  leftovers
}

# kubectl exec -it with the terminal's size, and kubectl attach with stdin: CRI Exec and Attach
# through containerd's streaming server (websockets), with each handler.
s_streams() {
  local h pod c r out st
  for h in kata runc; do
    pod=$(cri runp --name "st-$h" --uid "st-$h" --runtime-handler "$h") || { echo "$h runp failed"; continue; }
    c=$(cri create "$pod" --name app --image $IMAGE -- sleep 1000)
    cri start "$c" >/dev/null
    # kubectl exec -it (stdin and a terminal). The size is sent first; the loop only waits for
    # it to reach the terminal.
    out=$(cri exec "$c" --stdin --tty --size 100x30 --timeout 60 -- sh -c \
      'for i in $(seq 100); do s=$(stty size); [ "$s" = "30 100" ] && break; sleep 0.1; done; echo "size $s"; exit 3')
    st=$?
    echo "$h exec tty $(echo "$out" | tr -d '\r' | grep '^size') status $st"
    out=$(cri exec "$c" --stdin-data 'piped\n' --timeout 60 -- sh -c 'read l; echo "read $l"; echo err >&2' 2>&1)
    echo "$h exec stdin $(echo "$out" | sort | tr '\n' ' ')"
    # A container that reads its stdin (kubectl run -i, kubectl attach).
    r=$(cri create "$pod" --name reader --image $IMAGE --stdin -- sh -c 'read line; echo "got $line"')
    cri start "$r" >/dev/null
    echo "$h attach $(cri attach "$r" --stdin-data 'hello\n' --timeout 60)"
    echo "$h reader $(wait_state "$r" CONTAINER_EXITED)"
    cri stopp "$pod" >/dev/null && cri rmp "$pod" >/dev/null
    echo "$h removed $?"
  done
  leftovers
}

# A privileged pod under husk: its privileged container gets the guest's devices (the serial
# port here) and the capabilities to use them in the guest, never the host's devices (the test
# host's /dev/kvm); a plain sibling gets neither. /dev/shm is the pod's, sized as CRI made it,
# in guest memory.
s_privileged() {
  local pod c p has='for d in "$@"; do [ -e "$d" ] && echo -n "$d "; done; echo'
  pod=$(cri runp --name priv --uid priv --privileged --runtime-handler kata) || return 1
  c=$(cri create "$pod" --name app --image $IMAGE --privileged -- sleep 1000)
  cri start "$c" >/dev/null
  p=$(cri create "$pod" --name plain --image $IMAGE -- sleep 1000)
  cri start "$p" >/dev/null
  echo "state $(wait_state "$c" CONTAINER_RUNNING) $(wait_state "$p" CONTAINER_RUNNING)"
  echo "privileged devices $(cri exec-sync "$c" -- sh -c "$has" - /dev/ttyS0 /dev/kvm /dev/vsock)"
  echo "plain devices $(cri exec-sync "$p" -- sh -c "$has" - /dev/ttyS0 /dev/kvm /dev/vsock)"
  echo "privileged mount $(cri exec-sync "$c" -- sh -c 'mkdir -p /mnt/t && mount -t tmpfs t /mnt/t && echo ok')"
  echo "plain mount $(cri exec-sync "$p" -- sh -c 'mkdir -p /mnt/t && mount -t tmpfs t /mnt/t 2>/dev/null && echo ok || echo refused')"
  echo "shm type $(cri exec-sync "$c" -- stat -f -c %T /dev/shm)"
  echo "shm size $(cri exec-sync "$c" -- stat -f -c '%b %S' /dev/shm | awk '{print $1 * $2 / 1024}')"
  echo "shm shared $(cri exec-sync "$c" -- sh -c 'echo x > /dev/shm/seg' && cri exec-sync "$p" -- cat /dev/shm/seg)"
  cri stopp "$pod" >/dev/null && cri rmp "$pod" >/dev/null
  echo "removed $?"
  leftovers
}

scenarios=${*:-pod host_namespaces memory port_forward resources streams privileged}
for s in $scenarios; do
  echo "=== begin $s"
  "s_$s" 2>&1
  echo "=== end $s $?"
done
