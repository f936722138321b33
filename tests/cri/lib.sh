# Shared by the CRI scenarios and `make bench`'s CRI rows (source it from the repository's root,
# inside the test host, as root): a private containerd with its CRI plugin, CNI's bridge
# husk-cri0, the handlers `kata` (husk, with the configuration lines given to cri_setup) and
# `runc`, and helpers over tests/cri/cri.py.
REPO=$PWD
IMAGE=docker.io/library/busybox:latest
T=${HUSK_CRI_TIMEOUT:-120}

WORK=$(mktemp -d /tmp/husk-cri.XXXXXX)
export CTRD_NAMESPACE=k8s.io CTRD_CRI=1 HUSK_CRI_STATE=$WORK/cri-state
. tests/containerd/env.sh
trap 'cleanup_pods; ctrd_stop; ip link del husk-cri0 2>/dev/null; rm -rf "$WORK"' EXIT

# cri_setup [CONFIGURATION LINE...]: starts containerd with husk configured by the lines (below
# [hypervisor.husk]) and imports the pause image.
cri_setup() {
  husk_ctrd_setup "$WORK" "$@" || return 1
  ctrd_import_pause
}

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

# wait_state CID STATE: waits (20 s at most) until container CID is in STATE; prints its state.
wait_state() {
  local st=""
  for _ in $(seq 100); do
    st=$(cri inspect "$1" | json status.state)
    [ "$st" = "$2" ] && break
    sleep 0.2
  done
  echo "$st"
}
