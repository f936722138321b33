#!/bin/bash
# `make bench`, CRI part: pods through containerd's CRI plugin, husk (handler kata) against runc
# on one private containerd (tests/bench/cri_bench.py says what is measured). Run inside the
# test host on PVM machines:
#   tests/testhost/run.sh tests/bench/cri_bench.sh [RUNS] [PODS]
set -u
cd "$(dirname "$0")/../.."
. tests/cri/lib.sh
# Ten guests booting at once on the test host's one emulated CPU take minutes, not seconds: the
# agent's dial timeout must not be what the pods-at-once row measures.
cri_setup "default_vcpus = 1" "default_memory = 256" "[agent.kata]" "dial_timeout = 600" || exit 1
/usr/bin/python3 tests/bench/cri_bench.py "$CTRD_SOCK" "${1:-10}" "${2:-10}"
