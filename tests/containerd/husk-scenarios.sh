#!/bin/bash
# ctr against a private containerd with husk as io.containerd.kata.v2: every scenario of
# tests/tests/containerd.rs, in one test-host boot. Run inside the test host, as root, from the
# repository:
#   tests/testhost/run.sh tests/containerd/husk-scenarios.sh [SCENARIO...]
# Each scenario's output is framed by "=== begin NAME" and "=== end NAME STATUS" lines.
set -u
cd "$(dirname "$0")/../.."
REPO=$PWD
IMAGE=docker.io/library/busybox:latest
KATA=io.containerd.kata.v2
T=${HUSK_CTR_TIMEOUT:-90}

WORK=$(mktemp -d /tmp/husk-ctr.XXXXXX)
. tests/containerd/env.sh
trap 'ctrd_stop; rm -rf "$WORK"' EXIT
husk_ctrd_setup "$WORK" "default_vcpus = 1" "default_memory = 256"

# A command that may hang, bounded: ctr passes SIGTERM on to the container, so the KILL after 10
# more seconds is what ends a stuck ctr. On a timeout, what husk was doing goes into the output.
tmo() {
  timeout -k 10 "$T" "$@"
  local st=$?
  if [ $st = 124 ] || [ $st = 137 ]; then
    echo "TIMEOUT ($T s): $*"
    diagnose
  fi
  return $st
}

diagnose() {
  local f p t
  for f in /run/husk/s/*/vm/console.log; do
    [ -f "$f" ] && tail -n 30 "$f" | sed "s|^|diag console $f: |"
  done
  grep -E 'husk|kata|shim' "$CTRD_DIR/containerd.log" | tail -n 40 | cut -c1-400 | sed 's/^/diag log: /'
  for p in $(pgrep -f containerd-shim-kata-v2) $(pgrep -x husk-vmm) $(pgrep -x ctr); do
    for t in /proc/$p/task/*; do
      echo "diag thread $p $(cat /proc/$p/comm 2>/dev/null)/$(cat $t/comm 2>/dev/null) $(awk '{print $3}' $t/stat 2>/dev/null) $(cat $t/wchan 2>/dev/null)"
    done
  done
}

run() { tmo $CTR run --runtime $KATA "$@"; }

# One pid per VM: the process the shim started (the jailed VMM is its child, also husk-vmm).
vmm_pids() {
  local p pp
  for p in $(pgrep -x husk-vmm); do
    pp=$(awk '$1 == "PPid:" {print $2}' /proc/$p/status 2>/dev/null)
    [ "$(cat /proc/$pp/comm 2>/dev/null)" = husk-vmm ] || echo "$p"
  done
}
vmm_count() { vmm_pids | wc -l; }
CGROUP_MOUNT=type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro

# Leftovers of husk on this machine: VMMs, sandbox directories, mounts, shim sockets.
leftovers() {
  pgrep -x husk-vmm | sed 's/^/vmm pid /'
  pgrep -f containerd-shim-kata-v2 | sed 's/^/shim pid /'
  ls -A /run/husk/s 2>/dev/null | sed 's/^/sandbox dir /'
  grep -E '/run/husk|kata-containers' /proc/mounts | sed 's/^/mount /'
  find /run/containerd/s -type s 2>/dev/null | sed 's/^/socket /'
  # Sandbox cgroups: under containerd's namespace (ctr's cgroupsPath is /NAMESPACE/ID).
  find "/sys/fs/cgroup/$CTRD_NAMESPACE" -mindepth 1 -type d 2>/dev/null | sed 's/^/cgroup /'
}

s_echo() { run --rm $IMAGE e1 echo hello from husk </dev/null; }

s_exit_status() { run --rm $IMAGE x1 sh -c 'echo before; exit 3' </dev/null; }

s_stdin() {
  # The container reads its input to the end: the end of ctr's stdin reaches it as EOF.
  printf 'a line from the host\nsecond\nthird\n' |
    run --rm $IMAGE i1 sh -c 'read l; echo "got: $l"; echo "rest $(wc -l)"'
}

# A terminal for ctr: script(1) gives it a pty. `timeout --foreground` keeps ctr in the pty's
# foreground process group (script runs the command with $SHELL, and /bin/sh does not exec the
# last command): a background ctr stops on SIGTTOU when it sets the terminal raw.
s_tty() {
  script -qec "timeout --foreground -k 10 $T $CTR run --runtime $KATA --rm -t $IMAGE t1 sh -c 'tty; echo tty-done'" /dev/null </dev/null
}

s_oci() {
  # What the container sees: its own hostname, env, cwd, user and pid namespace.
  echo "host name $(hostname)"
  # ctr's spec has no cgroup mount (CRI's has): ask for one.
  run --rm --env FOO=bar --cwd /tmp --memory-limit 100663296 --mount "$CGROUP_MOUNT" $IMAGE o1 sh -c \
    'echo "env FOO=$FOO"; echo "cwd $(pwd)"; echo "id $(id -u):$(id -g)"; echo "pid1 $(cat /proc/1/cmdline | tr "\0" " ")"
     echo "hostname $(hostname)"
     echo "memory.max $(cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max)"' </dev/null
}

s_update() {
  # New limits for a running container, and its processes (ctr task ps). Debian's ctr has no
  # `task update`: husk-task-update makes containerd's Update call to the shim.
  tmo $CTR run --runtime $KATA -d --mount "$CGROUP_MOUNT" $IMAGE u1 sh -c 'sleep 600 & wait' || return 1
  target/release/husk-task-update "$(cat "$CTRD_DIR/state/io.containerd.runtime.v2.task/$CTRD_NAMESPACE/u1/address")" \
    u1 '{"memory": {"limit": 67108864}, "cpu": {"quota": 50000, "period": 100000}}'
  echo "update status $?"
  local cg=/sys/fs/cgroup/husk/u1
  echo "memory.max $(tmo $CTR task exec --exec-id m u1 cat $cg/memory.max </dev/null)"
  echo "cpu.max $(tmo $CTR task exec --exec-id c u1 cat $cg/cpu.max </dev/null)"
  target/release/husk-task-update "$(cat "$CTRD_DIR/state/io.containerd.runtime.v2.task/$CTRD_NAMESPACE/u1/address")" \
    u1 '{"memory": {"limit": "lots"}}'
  echo "bad update status $?"
  echo "ps count $($CTR task ps u1 | tail -n +2 | wc -l)"
  husk_task_gone u1
}

s_pause() {
  # ctr task pause/resume: the guest freezes the container's cgroup.
  $CTR events > "$WORK/pause-events" 2>&1 &
  local ev=$!
  sleep 1
  tmo $CTR run --runtime $KATA -d $IMAGE pz1 sleep 600 || return 1
  $CTR task pause pz1
  echo "pause status $?"
  echo "ls: $($CTR task ls | awk '$1=="pz1"{print $3}')"
  tmo $CTR task exec --exec-id x pz1 true </dev/null
  echo "exec while paused $?"
  $CTR task resume pz1
  echo "resume status $?"
  echo "ls: $($CTR task ls | awk '$1=="pz1"{print $3}')"
  tmo $CTR task exec --exec-id y pz1 echo pz1 answers </dev/null
  husk_task_gone pz1
  sleep 1
  kill $ev
  grep -o -E "/tasks/(paused|resumed)" "$WORK/pause-events" | sed 's/^/event /'
}

s_oom() {
  # A container over its memory limit is killed in the guest; containerd hears of it.
  $CTR events > "$WORK/oom-events" 2>&1 &
  local ev=$!
  sleep 1
  run --rm --memory-limit 33554432 $IMAGE oom1 sh -c 'echo filling; tail /dev/zero' </dev/null
  echo "status $?"
  sleep 1
  kill $ev
  awk '{for (i=1;i<=NF;i++) if ($i ~ /^\/tasks\//) print "event", $i}' "$WORK/oom-events"
}

s_exec() {
  tmo $CTR run --runtime $KATA -d $IMAGE c1 sh -c 'while true; do sleep 1; done' || return 1
  echo "ls: $($CTR task ls | awk '$1=="c1"{print $3}')"
  tmo $CTR task exec --exec-id e1 c1 sh -c 'echo exec ok; ps | grep -c "sleep"' </dev/null
  tmo $CTR task exec --exec-id e2 c1 sh -c 'exit 5' </dev/null
  echo "exec status $?"
  echo "exec user $(tmo $CTR task exec --user 65534 --exec-id e4 c1 id -u </dev/null)"
  script -qec "timeout --foreground -k 10 $T $CTR task exec -t --exec-id e3 c1 sh -c 'tty; echo exec-tty-done'" /dev/null </dev/null
  husk_task_gone c1
}

s_sigterm() {
  tmo $CTR run --runtime $KATA -d $IMAGE k1 sh -c 'trap "exit 0" TERM; while true; do sleep 1; done' || return 1
  sleep 1
  $CTR task kill k1
  echo "after SIGTERM: $(husk_task_stopped k1)"
  $CTR task delete k1 && $CTR container delete k1
}

s_two() {
  tmo $CTR run --runtime $KATA -d $IMAGE p1 sleep 600 || return 1
  tmo $CTR run --runtime $KATA -d $IMAGE p2 sleep 600 || return 1
  $CTR task ls | awk '$1=="p1"||$1=="p2"{print "ls:", $1, $3}'
  echo "vmms: $(vmm_count)"
  # Each VMM runs in its sandbox's cgroup, where runc would have put the container.
  local p
  for p in $(vmm_pids); do echo "vmm cgroup $(cut -d: -f3 /proc/$p/cgroup)"; done
  tmo $CTR task exec --exec-id x p2 echo p2 answers </dev/null
  for c in p1 p2; do husk_task_gone $c; done
}

s_big_output() {
  # Everything written just before the exit reaches ctr.
  run --rm $IMAGE big1 sh -c 'seq 1 200000; echo last line' </dev/null > "$WORK/big.out"
  echo "status $?"
  echo "lines $(wc -l < "$WORK/big.out")"
  echo "tail $(tail -n 1 "$WORK/big.out")"
}

s_events() {
  $CTR events > "$WORK/events" 2>&1 &
  local ev=$!
  sleep 1
  tmo $CTR run --runtime $KATA -d $IMAGE ev1 sleep 600 || return 1
  tmo $CTR task exec --exec-id ex1 ev1 true </dev/null
  $CTR task metrics ev1 2>&1 | sed 's/^/metrics /'
  husk_task_gone ev1
  sleep 1
  kill $ev
  awk '{for (i=1;i<=NF;i++) if ($i ~ /^\/tasks\//) print "event", $i}' "$WORK/events"
}

s_attach() {
  tmo $CTR run --runtime $KATA -d $IMAGE a1 sh -c 'i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.3; done' || return 1
  sleep 2
  # ctr attach runs until the task ends: stop it after a while, then look at what it got.
  timeout -s KILL 4 $CTR task attach a1 </dev/null > "$WORK/attach.out" 2>&1
  head -n 3 "$WORK/attach.out" | sed 's/^/attached /'
  husk_task_gone a1
}

s_pod() {
  # Containers that CRI puts in one sandbox share its shim and VM.
  local a=--annotation
  tmo $CTR run --runtime $KATA -d $a io.kubernetes.cri.sandbox-id=podA $IMAGE podA sleep 600 || return 1
  tmo $CTR run --runtime $KATA -d $a io.kubernetes.cri.sandbox-id=podA $IMAGE w1 sleep 600 || return 1
  echo "vmms: $(vmm_count)"
  echo "shims: $(pgrep -fc containerd-shim-kata-v2)"
  tmo $CTR task exec --exec-id x w1 sh -c 'echo "w1 in pod"' </dev/null
  for c in w1 podA; do
    husk_task_gone $c
    echo "after deleting $c: vmms $(vmm_count)"
  done
}

s_restart() {
  # containerd restarts while a husk container runs: it finds the shim again (the bundle's
  # address file) and the task keeps working, events included.
  tmo $CTR run --runtime $KATA -d $IMAGE r1 sleep 600 || return 1
  husk_ctrd_restart || return 1
  echo "after restart: $($CTR task ls | awk '$1=="r1"{print $3}')"
  tmo $CTR task exec --exec-id x r1 echo r1 answers </dev/null
  $CTR events > "$WORK/restart-events" 2>&1 &
  local ev=$!
  sleep 1
  $CTR task kill -s SIGKILL r1
  for _ in $(seq 50); do
    grep -q "/tasks/exit" "$WORK/restart-events" && break
    sleep 0.2
  done
  kill $ev
  grep -o "/tasks/exit" "$WORK/restart-events" | sed 's/^/event /'
  $CTR task delete r1 >/dev/null && $CTR container delete r1
}

s_vmm_killed() {
  # The VM dies under a running container: the task stops with status 255, containerd can
  # delete it, and nothing is left behind.
  tmo $CTR run --runtime $KATA -d $IMAGE vk1 sleep 600 || return 1
  pkill -9 -x husk-vmm
  echo "after the VMM died: $(husk_task_stopped vk1)"
  $CTR task delete vk1
  echo "delete status $?"
  $CTR container delete vk1
  leftovers
}

s_vmm_hung() {
  # The VM stops answering without dying (its VMM frozen): the shim's health checks give up on
  # it, kill it, and the task stops; containerd can delete it.
  tmo $CTR run --runtime $KATA -d $IMAGE vh1 sleep 600 || return 1
  pkill -STOP -x husk-vmm
  local st=""
  for _ in $(seq 120); do
    st=$($CTR task ls | awk '$1=="vh1"{print $3}')
    [ "$st" = STOPPED ] && break
    sleep 1
  done
  echo "after the VMM froze: $st"
  $CTR task delete vh1
  echo "delete status $?"
  $CTR container delete vh1
  grep -c "the guest stopped answering" "$CTRD_DIR/containerd.log" | sed 's/^/health kills /'
  leftovers
}

s_shim_crash() {
  # A shim killed with SIGKILL: containerd runs `containerd-shim-kata-v2 delete`, which must
  # remove the VM, the mounts and the directories the dead shim left.
  tmo $CTR run --runtime $KATA -d $IMAGE cr1 sleep 600 || return 1
  echo "vmms before: $(vmm_count)"
  pkill -9 -f containerd-shim-kata-v2
  for _ in $(seq 50); do
    [ "$(vmm_count)" = 0 ] && break
    sleep 0.2
  done
  echo "vmms after: $(vmm_count)"
  $CTR task delete cr1 >/dev/null 2>&1
  $CTR container delete cr1
  leftovers
}

s_hostile_share() {
  # A privileged container mounts the sandbox share over virtio-fs and tries to steer the shim
  # out of the sandbox directory: its own mounts directory replaced by a symlink to a host
  # directory, an entry pointing at /sys/fs/cgroup, a link where the pod's next container
  # goes. The container is then deleted, and the next one is created where the link was aimed.
  local victim=$WORK/victim a=--annotation
  mkdir -p "$victim" "$WORK/vol" && echo keep > "$victim/file"
  tmo $CTR run --runtime $KATA -d --privileged $a io.kubernetes.cri.sandbox-id=hs1 \
    --mount "type=bind,src=$WORK/vol,dst=/vol,options=rbind:rw" $IMAGE hs1 sleep 600 || return 1
  tmo $CTR task exec --exec-id x hs1 sh -c '
    mkdir -p /share && mount -t virtiofs vol0 /share || { echo "cannot mount the share"; exit 1; }
    ls /share/hs1 | sed "s/^/share entry /"
    bind=$(ls /share/hs1/mounts | head -n 1)
    rm -rf /share/hs1/mounts 2>&1 | head -n 1 | sed "s/^/rm mounts: /"
    ln -s '"$victim"' /share/hs1/mounts/new 2>&1 | sed "s/^/ln in mounts: /"
    mv /share/hs1/mounts /share/hs1/m2 2>&1 | sed "s/^/mv mounts: /"
    ln -s /sys/fs/cgroup /share/hs1/x 2>&1 | sed "s/^/ln x: /"
    ln -s '"$victim"' /share/hs2 2>&1 | sed "s/^/ln hs2: /"
    echo from-guest > /share/hs1/rootfs/tmp/w && echo "rootfs writable"
    echo from-guest > /share/hs1/mounts/$bind/g && echo "bind writable"
  ' </dev/null
  echo "exec status $?"
  tmo $CTR run --runtime $KATA --rm $a io.kubernetes.cri.sandbox-id=hs1 $IMAGE hs2 echo hs2 runs </dev/null
  husk_task_gone hs1
  echo "victim $(cat "$victim/file" 2>&1)"
  echo "victim entries $(ls -A "$victim" | wc -l)"
  echo "volume $(cat "$WORK/vol/g" 2>&1)"
  leftovers
}

s_hostile_guest() {
  # What a container may try against its host: reach the agent over vsock, make a device node
  # on the host through the share, aim the sandbox at a cgroup that holds someone else's process.
  gcc -static -O2 -o "$WORK/hostile-probe" tests/containerd/hostile-probe.c || return 1
  # A read-only bind whose source has a mount inside: read-only all the way down.
  mkdir -p "$WORK/rodir/sub" && mount -t tmpfs tmpfs "$WORK/rodir/sub" || return 1
  tmo $CTR run --runtime $KATA -d --privileged \
    --mount "type=bind,src=$WORK/hostile-probe,dst=/probe,options=rbind:ro" \
    --mount "type=bind,src=$WORK/rodir,dst=/ro,options=rbind:ro" $IMAGE hg1 sleep 600 || return 1
  tmo $CTR task exec --exec-id x hg1 sh -c '
    for cid in 1 2 3; do /probe vsock $cid 1024; done
    mknod /tmp/hostile-char c 1 3 2>&1 | sed "s/^/mknod c: /"
    mknod /tmp/hostile-block b 7 0 2>&1 | sed "s/^/mknod b: /"
    mknod /tmp/hostile-fifo p && echo "mknod p: ok"
    touch /tmp/f
    echo "xattr security: $(/probe xattr /tmp/f security.husk-test)"
    echo "xattr trusted: $(/probe xattr /tmp/f trusted.x)"
    echo "xattr user: $(/probe xattr /tmp/f user.x)"
    (echo x > /ro/top) 2>&1 | sed "s/^/ro top: /"
    (echo x > /ro/sub/f) 2>&1 | sed "s/^/ro sub: /"
  ' </dev/null
  echo "host device nodes: $(find "$CTRD_ROOT" -name 'hostile-*' \( -type c -o -type b \) 2>/dev/null | wc -l)"
  echo "vmm $(grep -E '^NoNewPrivs' /proc/$(pgrep -xo husk-vmm)/status | tr -s '\t ' ' ')"
  # The VMM the shim started is jailed: its child runs the VM under seccomp in its own mounts.
  local outer inner
  outer=$(vmm_pids | head -n1)
  inner=$(awk '{print $1}' "/proc/$outer/task/$outer/children")
  echo "jailed vmm: Seccomp $(awk '$1 == "Seccomp:" {print $2}' "/proc/$inner/status")" \
    "mnt $([ "$(readlink "/proc/$inner/ns/mnt")" = "$(readlink /proc/self/ns/mnt)" ] && echo host || echo own)"
  husk_task_gone hg1
  echo "host ro files: $(ls -A "$WORK/rodir/sub" | wc -l)"
  umount "$WORK/rodir/sub"
  # A cgroup with a process we did not start.
  mkdir -p /sys/fs/cgroup/husk-victim
  sleep 600 & local victim=$!
  echo $victim > /sys/fs/cgroup/husk-victim/cgroup.procs
  run --rm --cgroup /husk-victim $IMAGE hg2 true </dev/null 2>&1 | tail -n 1 | sed 's/^/cgroup: /'
  echo "victim alive: $(kill -0 $victim 2>/dev/null && echo yes || echo no)"
  kill $victim; wait $victim 2>/dev/null
  $CTR container delete hg2 2>/dev/null
  rmdir /sys/fs/cgroup/husk-victim
  leftovers
}

s_cleanup() {
  sleep 1
  leftovers
  echo "leftovers checked"
}

s_boot_retries() {
  # Not a test: for the log (target/testhost-logs), guests that needed a second boot.
  echo "boot retries: $(grep -c 'the guest did not boot' "$CTRD_DIR/containerd.log")"
}

s_bad_config() {
  printf '[hypervisor.husk]\ndefault_memory = "lots"\n' > "$WORK/bad.toml"
  run --rm --runtime-config-path "$WORK/bad.toml" $IMAGE b1 true </dev/null
  echo "status $?"
  $CTR container delete b1 2>/dev/null
}

s_guest_seccomp() {
  # The spec's seccomp profile holds in the guest, on top of the agent's own vsock filter; a
  # profile that needs a seccomp agent is refused at create.
  printf '%s' '{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}' \
    > "$WORK/deny-mkdir.json"
  printf '%s' '{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_NOTIFY"}]}' \
    > "$WORK/notify.json"
  local check='grep Seccomp_filters /proc/self/status; mkdir /tmp/x 2>&1 && echo mkdir ok'
  echo "plain: $(run --rm $IMAGE sc1 sh -c "$check" </dev/null 2>&1 | tr -s '\t\n' '  ')"
  echo "profile: $(run --rm --seccomp --seccomp-profile "$WORK/deny-mkdir.json" $IMAGE sc2 \
    sh -c "$check" </dev/null 2>&1 | tr -s '\t\n' '  ')"
  echo "default profile: $(run --rm --seccomp $IMAGE sc3 sh -c "$check" </dev/null 2>&1 | tr -s '\t\n' '  ')"
  echo "notify: $(run --rm --seccomp --seccomp-profile "$WORK/notify.json" $IMAGE sc4 true </dev/null 2>&1 | tr -s '\t\n' '  ')"
  $CTR container delete sc4 2>/dev/null
  return 0
}

s_network() {
  # A pod namespace prepared the way CRI does it: the container gets the pod's IP, a peer on the
  # same bridge reaches its server and the other way round, and delete leaves the veth as CNI
  # made it.
  # The network is dual-stack: the pod's IPv6 address and route reach the guest as well.
  ip netns add husk-pod1 && ip netns add husk-peer && ip netns add husk-busy || return 1
  local pod_ip peer_ip pod_ip6 before after sleeper
  pod_ip=$(CNI_IPV6=1 cni husk-pod1 ADD) peer_ip=$(CNI_IPV6=1 cni husk-peer ADD)
  pod_ip6=$(cni_ipv6 husk-pod1)
  echo "cni: pod $pod_ip $pod_ip6 peer $peer_ip"
  before=$(netns_state husk-pod1)
  mkdir -p "$WORK/www" && echo hello-from-peer > "$WORK/www/index.html"
  ip netns exec husk-peer python3 -m http.server 8081 --bind "$peer_ip" --directory "$WORK/www" \
    >/dev/null 2>&1 &
  local peer_server=$!
  tmo $CTR run --runtime $KATA -d --with-ns network:/var/run/netns/husk-pod1 $IMAGE net1 \
    sh -c 'mkdir -p /tmp/www && echo hello-from-pod > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www' \
    </dev/null || return 1
  echo "guest addresses: $(tmo $CTR task exec --exec-id a net1 ip -o -4 addr show eth0 </dev/null | awk '{print $4}')"
  echo "guest route: $(tmo $CTR task exec --exec-id r net1 ip route show default </dev/null)"
  echo "guest ipv6: $(tmo $CTR task exec --exec-id a6 net1 ip -o -f inet6 addr show eth0 </dev/null |
    awk '$6 == "global" {print $4}') route: $(tmo $CTR task exec --exec-id r6 net1 ip -f inet6 route show default </dev/null |
    awk '{print $1, $2, $3}')"
  echo "guest mtu: $(tmo $CTR task exec --exec-id m net1 cat /sys/class/net/eth0/mtu </dev/null)"
  # GET URL from the peer namespace: the body, or the error.
  peer_get() {
    ip netns exec husk-peer python3 -c '
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().strip())
except OSError as e:
    print("error:", e)' "$1"
  }
  for _ in $(seq 30); do
    [ "$(peer_get "http://$pod_ip:8080/")" = hello-from-pod ] && break
    sleep 1
  done
  echo "peer to pod: $(peer_get "http://$pod_ip:8080/")"
  echo "peer to pod over ipv6: $(peer_get "http://[$pod_ip6]:8080/")"
  # Wait for the peer's server to listen (a GET of it from its own namespace timed out in the
  # test host every time, for 30 x 10 s, though the pod's request below is answered).
  netns_wait_listen husk-peer 8081
  # Debian's static busybox wget crashes (its static glibc resolver); nc speaks HTTP well enough.
  echo "pod to peer: $(tmo $CTR task exec --exec-id w net1 sh -c \
    "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 $peer_ip 8081 | tail -n 1" </dev/null 2>&1)"
  echo "pod to gateway: $(tmo $CTR task exec --exec-id p net1 ping -c 1 -W 5 10.77.0.1 </dev/null | grep -c 'bytes from')"
  echo "requests ok: $(ip netns exec husk-peer python3 -c '
import http.client, sys
ok = 0
for i in range(1000):
    try:
        c = http.client.HTTPConnection(sys.argv[1], 8080, timeout=10)
        c.request("GET", "/")
        ok += c.getresponse().read() == b"hello-from-pod\n"
        c.close()
    except OSError as e:
        print("request", i, e, file=sys.stderr)
print(ok)' "$pod_ip")"
  echo "taps while running: $(ip -n husk-pod1 -o link show | grep -c _husk)"
  husk_task_gone net1
  after=$(netns_state husk-pod1)
  [ "$before" = "$after" ] && echo "pod namespace after delete: as CNI left it" ||
    { echo "pod namespace after delete: changed"; echo "$before" > "$WORK/ns-before"
      echo "$after" > "$WORK/ns-after"; diff "$WORK/ns-before" "$WORK/ns-after"; }
  # Refusals: the host's network, and a namespace a process already lives in.
  echo "host network: $(run --rm --net-host $IMAGE net2 true </dev/null 2>&1 | tail -n1)"
  $CTR container delete net2 2>/dev/null
  ip netns exec husk-busy sleep 600 & sleeper=$!
  echo "busy namespace: $(run --rm --with-ns network:/var/run/netns/husk-busy $IMAGE net3 true </dev/null 2>&1 | tail -n1)"
  $CTR container delete net3 2>/dev/null
  kill "$sleeper"
  kill "$peer_server"
  CNI_IPV6=1 cni husk-pod1 DEL >/dev/null; CNI_IPV6=1 cni husk-peer DEL >/dev/null
  ip netns del husk-pod1; ip netns del husk-peer; ip netns del husk-busy
  ip link del husk-br0 2>/dev/null
  return 0
}

s_missing_kernel() {
  printf '[hypervisor.husk]\nkernel = "/nonexistent/husk/vmlinux"\ninitrd = "%s"\n' \
    "$REPO/target/guest/initramfs.img" > "$WORK/nokernel.toml"
  run --rm --runtime-config-path "$WORK/nokernel.toml" $IMAGE b2 true </dev/null
  echo "status $?"
  $CTR container delete b2 2>/dev/null
}

scenarios=${*:-echo exit_status stdin tty oci update pause oom big_output exec events attach sigterm two pod hostile_share hostile_guest guest_seccomp network restart bad_config missing_kernel vmm_killed vmm_hung shim_crash cleanup boot_retries}
for s in $scenarios; do
  echo "=== begin $s"
  "s_$s" 2>&1
  echo "=== end $s $?"
done
