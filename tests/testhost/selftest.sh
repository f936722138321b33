#!/usr/bin/env bash
# Checks run.sh end to end by running real commands through it (in the L1 VM on PVM machines).
# Takes about a minute; prints one line per check and "N passed, N failed" at the end.
#   tests/testhost/selftest.sh            all checks
#   tests/testhost/selftest.sh NAME...    only the named checks (see the check_* functions)

# The commands given to `sh -c` are meant to expand inside the test host, not here.
# shellcheck disable=SC2016
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
run="$here/run.sh"
export HUSK_TESTHOST_TIMEOUT=${HUSK_TESTHOST_TIMEOUT:-180}

# Scratch space outside /tmp: the test host mounts a fresh tmpfs on /tmp, so a file the command
# should see (or must not see) has to live elsewhere. run.sh's own temp dirs go to $work/tmp, so a
# QEMU left behind is recognisable by that path on its command line.
cache=${HUSK_CACHE:-$HOME/.cache/husk}
mkdir -p "$cache"
work=$(mktemp -d "$cache/testhost-selftest.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/tmp"
export TMPDIR="$work/tmp"

passed=0
failed=0
ok() { echo "ok   $1"; passed=$((passed + 1)); }
bad() {
  echo "FAIL $1: $2"
  failed=$((failed + 1))
}

# Runs run.sh with the given arguments; leaves stdout, stderr and status in $out, $err, $rc.
th() {
  rc=0
  "$run" "$@" >"$work/out" 2>"$work/err" </dev/null || rc=$?
  out=$(cat "$work/out")
  err=$(cat "$work/err")
}

no_vm_left() {
  ! pgrep -f "qemu-system.*$work/tmp" >/dev/null
}

check_streams() {
  th sh -c 'echo out; echo err >&2; ls -l /dev/kvm; exit 7'
  if [ "$rc" = 7 ] && [ "$(head -n1 <<<"$out")" = out ] && grep -q ' /dev/kvm$' <<<"$out" &&
    [ "$err" = err ]; then
    ok "stdout and stderr apart, exit status 7, /dev/kvm listed"
  else
    bad streams "rc=$rc out=[$out] err=[$err]"
  fi
}

check_stdin() {
  local got rc=0
  got=$(echo hello | "$run" cat 2>"$work/err") || rc=$?
  if [ "$rc" = 0 ] && [ "$got" = hello ]; then ok "stdin is passed in"; else bad stdin "rc=$rc got=[$got] $(cat "$work/err")"; fi
}

check_signal() {
  th sh -c 'kill -9 $$'
  if [ "$rc" = 137 ]; then ok "death by SIGKILL gives 137"; else bad signal "rc=$rc err=[$err]"; fi
}

check_not_found() {
  th no-such-command-husk
  if [ "$rc" = 127 ]; then ok "unknown command gives 127"; else bad not_found "rc=$rc err=[$err]"; fi
}

check_large_output() {
  # 10 MB of random bytes, base64 (13.5 MB); the hash made inside goes to stderr.
  th sh -c 'head -c 10000000 /dev/urandom | base64 >/tmp/big; sha256sum </tmp/big | cut -d" " -f1 >&2; cat /tmp/big'
  local mine
  mine=$(sha256sum <"$work/out" | cut -d' ' -f1)
  if [ "$rc" = 0 ] && [ "$mine" = "$err" ] && [ "$(wc -c <"$work/out")" -gt 13000000 ]; then
    ok "13.5 MB of output arrives intact"
  else
    bad large_output "rc=$rc inside=[$err] outside=[$mine] bytes=$(wc -c <"$work/out")"
  fi
}

check_cwd_env_args() {
  local dir="$work/some dir"
  mkdir -p "$dir"
  rc=0
  (cd "$dir" && FOO=bar MULTI=$'a b\nc' "$run" sh -c 'pwd; echo "$FOO"; printf "%s|" "$MULTI" "$@"; echo; echo "$HUSK_TESTHOST_INSIDE"' \
    sh 'x y' '' z) >"$work/out" 2>"$work/err" </dev/null || rc=$?
  local want
  want=$(printf '%s\n%s\n%s\n%s' "$dir" bar $'a b\nc|x y||z|' 1)
  if [ "$rc" = 0 ] && [ "$(cat "$work/out")" = "$want" ]; then
    ok "working directory, environment and arguments are preserved"
  else
    bad cwd_env_args "rc=$rc out=[$(cat "$work/out")] want=[$want] err=[$(cat "$work/err")]"
  fi
}

check_kvm_inside() {
  th sh -c 'grep -c svm /proc/cpuinfo; test -c /dev/kvm && echo kvm; grep -q "^kvm_amd " /proc/modules && echo kvm_amd; "$0" --check' "$run"
  if [ "$rc" = 0 ] && [ "$(sed -n 1p <<<"$out")" -ge 1 ] && grep -qx kvm <<<"$out" && grep -qx kvm_amd <<<"$out" &&
    grep -q '^husk-testhost: direct' <<<"$out"; then
    ok "inside: svm in cpuinfo, /dev/kvm, kvm_amd, and run.sh --check says direct"
  else
    bad kvm_inside "rc=$rc out=[$out] err=[$err]"
  fi
}

check_kvm_runs() {
  th python3 "$here/kvm_smoke.py"
  if [ "$rc" = 0 ] && grep -q '^kvm ok' <<<"$out"; then ok "inside: a KVM guest runs code ($out)"; else bad kvm_runs "rc=$rc out=[$out] err=[$err]"; fi
}

check_writes() {
  mkdir "$work/share"
  rc=0
  HUSK_TESTHOST_SHARE="$work/share" "$run" sh -c 'echo ghost >"$1/ghost"; echo kept >"$1/share/kept"' sh "$work" \
    >"$work/out" 2>"$work/err" </dev/null || rc=$?
  if [ "$rc" = 0 ] && [ ! -e "$work/ghost" ] && [ "$(cat "$work/share/kept" 2>/dev/null)" = kept ]; then
    ok "writes stay in the VM, except to HUSK_TESTHOST_SHARE"
  else
    bad writes "rc=$rc ghost=$([ -e "$work/ghost" ] && echo yes || echo no) err=[$(cat "$work/err")]"
  fi
}

check_concurrent() {
  local i pids=() rcs=""
  for i in 1 2; do
    "$run" sh -c 'sleep 1; echo "run $0"' "$i" >"$work/c$i" 2>"$work/ce$i" </dev/null &
    pids+=($!)
  done
  for i in 0 1; do
    wait "${pids[$i]}" && rcs="$rcs 0" || rcs="$rcs $?"
  done
  if [ "$rcs" = " 0 0" ] && [ "$(cat "$work/c1")" = "run 1" ] && [ "$(cat "$work/c2")" = "run 2" ]; then
    ok "two concurrent runs"
  else
    bad concurrent "rcs=$rcs c1=[$(cat "$work/c1")] c2=[$(cat "$work/c2")] $(cat "$work/ce1" "$work/ce2")"
  fi
}

check_timeout() {
  local t0=$SECONDS
  rc=0
  HUSK_TESTHOST_TIMEOUT=20 "$run" sh -c 'sleep 100' >"$work/out" 2>"$work/err" </dev/null || rc=$?
  local took=$((SECONDS - t0))
  sleep 1
  if [ "$rc" = 124 ] && [ "$took" -lt 35 ] && grep -q HUSK_TESTHOST_TIMEOUT "$work/err" && no_vm_left &&
    [ -z "$(ls -A "$work/tmp")" ]; then
    ok "timeout: exit 124 after ${took}s, no QEMU and no temp dir left"
  else
    bad timeout "rc=$rc took=${took}s vm_left=$(no_vm_left && echo no || echo yes) tmp=[$(ls -A "$work/tmp")] err=[$(cat "$work/err")]"
  fi
}

check_interrupt() {
  # A TERM to run.sh (as from a test runner giving up) must take the VM down with it.
  "$run" sh -c 'echo started; sleep 100' >"$work/out" 2>"$work/err" </dev/null &
  local pid=$! i rc=0
  for i in $(seq 1 60); do
    [ -s "$work/out" ] && break
    sleep 0.5
  done
  kill -TERM "$pid"
  wait "$pid" || rc=$?
  sleep 1
  if [ "$rc" = 143 ] && no_vm_left && [ -z "$(ls -A "$work/tmp")" ]; then
    ok "SIGTERM to run.sh: exit 143, no QEMU and no temp dir left"
  else
    bad interrupt "rc=$rc vm_left=$(no_vm_left && echo no || echo yes) tmp=[$(ls -A "$work/tmp")] err=[$(cat "$work/err")]"
  fi
}

all=(streams stdin signal not_found large_output cwd_env_args kvm_inside kvm_runs writes concurrent timeout interrupt)
echo "selftest: $("$run" --check | head -n1)"
# Build the image first, so that its progress notes do not land in the stderr of the first check.
"$run" --prepare >/dev/null
[ $# = 0 ] || all=("$@")
for name in "${all[@]}"; do
  "check_$name"
done
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
