#!/bin/bash
# `ctr run --rm` of a husk container N times in a row against one private containerd, counting
# how each run ended (tests/testhost/soak.sh), then the shim's boot retries. Inside the test host:
#   tests/testhost/run.sh tests/containerd/soak.sh [N]
set -eu
cd "$(dirname "$0")/../.."
N=${1:-100}
WORK=$(mktemp -d /tmp/husk-soak.XXXXXX)
. tests/containerd/env.sh
trap 'ctrd_stop; rm -rf "$WORK"' EXIT
husk_ctrd_setup "$WORK"
export CTR
rc=0
tests/testhost/soak.sh -t 90 "$N" -- sh -c \
  '$CTR run --rm --runtime io.containerd.kata.v2 docker.io/library/busybox:latest "soak$SOAK_RUN" echo ok' || rc=$?
echo "boot retries: $(grep -c 'the guest did not boot' "$CTRD_DIR/containerd.log" || true)"
# Each retry's reason (the shim logs the failed boot with its console).
grep 'the guest did not boot' "$CTRD_DIR/containerd.log" | sed 's/^/soak: boot retry: /' || true
exit "$rc"
