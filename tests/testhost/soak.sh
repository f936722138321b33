#!/usr/bin/env bash
# Runs one command many times in a row and counts how each run ended: the loop we use to find
# rare failures (a guest reset, a lost agent, a stalled test host). Run it inside the test host:
#
#   tests/testhost/run.sh tests/testhost/soak.sh [-t SECONDS] N -- CMD [ARGS...]
#
# Every run prints `soak: run I status S in T s`; a run that fails also prints its last output
# lines. The summary line is `soak: N runs: P passed, F failed` followed by the statuses seen.
# Exit status: 0 when every run passed, 1 otherwise. A run is bounded by -t (default 120 s).
# Each run sees its number in $SOAK_RUN (for unique names).
set -uo pipefail

per_run=120
if [ "${1:-}" = -t ]; then
  per_run=$2
  shift 2
fi
n=${1:?usage: soak.sh [-t SECONDS] N -- CMD [ARGS...]}
shift
[ "${1:-}" = -- ] && shift
[ $# -gt 0 ] || { echo "usage: soak.sh [-t SECONDS] N -- CMD [ARGS...]" >&2; exit 2; }

out=$(mktemp)
trap 'rm -f "$out"' EXIT
passed=0
failed=0
declare -A statuses=()
for i in $(seq 1 "$n"); do
  start=$EPOCHREALTIME
  SOAK_RUN=$i timeout -k 5 "$per_run" "$@" </dev/null >"$out" 2>&1
  rc=$?
  took=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
  # The load and the processes left behind: a slow leak shows here long before a stall.
  read -r load1 _ _ procs _ </proc/loadavg
  echo "soak: run $i status $rc in $took s (load $load1, tasks $procs, free $(awk '/^MemAvailable/ { print int($2 / 1024) }' /proc/meminfo) MiB)"
  statuses[$rc]=$((${statuses[$rc]:-0} + 1))
  if [ "$rc" = 0 ]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    tail -n 30 "$out" | sed "s/^/soak: run $i: /"
  fi
done
summary=""
for s in "${!statuses[@]}"; do summary="$summary status $s: ${statuses[$s]};"; done
echo "soak: $n runs: $passed passed, $failed failed ($summary )"
[ "$failed" = 0 ]
