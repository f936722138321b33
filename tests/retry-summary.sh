#!/usr/bin/env bash
# The last line of `make test`: how often a safety net caught a failure during the integration
# tests, read from the batch logs the harness keeps in target/testhost-logs (see tests/src/lib.rs).
#   boot retries      the shim booted a sandbox VM a second time (its log says "the guest did not boot")
#   scenario retries  the harness ran a scenario again because its guest died or it timed out
#   test-host stalls  tests/testhost/run.sh killed a test host whose heartbeat stopped (status 123)
# Each one is a failure that a retry hid: more than one of any kind fails the run (exit 1), and
# every one is listed so that its cause can be looked up in the log named.
set -euo pipefail
logs=${1:-target/testhost-logs}
boot=0 scenario=0 stalls=0
# The lines that record a retry: a scenario run again, a sandbox booted again, a stalled test host.
retry_lines='^RETRIED |^boot retries: [1-9]|^--- exit Some\(123\)$'
if [ -d "$logs" ]; then
  for f in "$logs"/*.log; do
    [ -f "$f" ] || continue
    n=$(sed -n 's/^boot retries: \([0-9][0-9]*\)$/\1/p' "$f" | awk '{ s += $1 } END { print s + 0 }')
    boot=$((boot + n))
    n=$(grep -c '^RETRIED ' "$f" || true)
    scenario=$((scenario + n))
    n=$(grep -c '^--- exit Some(123)$' "$f" || true)
    stalls=$((stalls + n))
    if grep -qE "$retry_lines" "$f"; then
      echo "retry-summary: see $f:"
      grep -E "$retry_lines" "$f" | sed 's/^/  /'
    fi
  done
fi
echo "boot retries: $boot, scenario retries: $scenario, test-host stalls: $stalls"
if [ "$boot" -gt 1 ] || [ "$scenario" -gt 1 ] || [ "$stalls" -gt 1 ]; then
  echo "retry-summary: more than one retry of a kind: a retry hides a failure, find its cause" >&2
  exit 1
fi
