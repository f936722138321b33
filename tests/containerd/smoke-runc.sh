#!/usr/bin/env bash
# Smoke test of the containerd tooling with runc (no husk involved):
#   start a private containerd, import the busybox image, `ctr run --rm` a few commands, stop.
#
#   tests/testhost/run.sh tests/containerd/smoke-runc.sh     # inside the test host
#   tests/containerd/smoke-runc.sh                           # or directly, as root
#
# Prints the time of each step; exits non-zero on the first failed check.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/containerd/env.sh
. "$here/env.sh"

image=docker.io/library/busybox:latest
runtime=io.containerd.runc.v2
fails=0

work=$(mktemp -d "${TMPDIR:-/tmp}/husk-ctrd.XXXXXX")
cleanup() {
  ctrd_stop
  rm -rf -- "$work"
}
trap cleanup EXIT

now() { echo "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }

check() { # check WHAT EXPECTED ACTUAL
  if [ "$2" = "$3" ]; then
    echo "ok   $1"
  else
    echo "FAIL $1: expected '$2', got '$3'"
    fails=$((fails + 1))
  fi
}

t=$(now)
ctrd_start "$work"
echo "time containerd ready: $(since "$t") s (root $CTRD_ROOT;" \
  "containerd says: $(grep -o 'booted in [0-9.]*s' "$CTRD_DIR/containerd.log" | tail -n1))"

t=$(now)
tarball=$(ctrd_busybox_tar "$image")
echo "time busybox image (cached or built): $(since "$t") s"
t=$(now)
CTRD_BUSYBOX_TAR=$tarball ctrd_import_busybox "$image"
echo "time import: $(since "$t") s"
check "image listed" "$image" "$($CTR images ls -q | grep -x "$image" || true)"

# `ctr run --rm` with a time limit. stdin is /dev/null: ctr does not pass stdin's EOF on to a
# non-tty container, so a container reading stdin would wait forever.
run_rm() {
  timeout 120 ctr -a "$CTRD_SOCK" -n "$CTRD_NAMESPACE" run --rm --runtime "$runtime" "$image" "$@" </dev/null
}

t=$(now)
out=$(run_rm t1 echo hello 2>&1) || true
echo "time ctr run --rm echo: $(since "$t") s"
check "echo hello" hello "$out"

t=$(now)
rc=0
run_rm t2 sh -c 'exit 3' || rc=$?
echo "time ctr run --rm exit 3: $(since "$t") s"
check "exit status propagates" 3 "$rc"

t=$(now)
# shellcheck disable=SC2016 # expanded in the container
out=$(run_rm t3 sh -c 'echo $(id -un):$(id -u) $(id -gn nobody) $PWD $(stat -c %a /tmp) $(readlink /bin/ls)' 2>&1) || true
echo "time ctr run --rm id: $(since "$t") s"
check "user, group, cwd, /tmp, applet link" "root:0 nobody / 1777 busybox" "$out"

check "no containers left" "" "$($CTR containers ls -q)"

t=$(now)
ctrd_stop
echo "time containerd stop: $(since "$t") s"

if [ "$fails" != 0 ]; then
  echo "smoke-runc: $fails check(s) failed; containerd log:"
  tail -n 40 "$work/containerd.log" || true
  exit 1
fi
echo "smoke-runc: all checks passed"
