#!/usr/bin/env bash
# Builds husk's fuzz targets with stable rustc and libFuzzer's coverage instrumentation
# (SanitizerCoverage: 8-bit counters, PC table, comparison tracing), then runs each one for
# FUZZ_SECONDS (default 60).
#
#   fuzz/run.sh [TARGET...]        all targets in fuzz/fuzz_targets/ when none is named
#   FUZZ_SECONDS=5 fuzz/run.sh     a smoke run
#   FUZZ_BUILD_ONLY=1 fuzz/run.sh  build, run nothing
#
# Each target's corpus is target/fuzz-corpus/<target> (kept between runs, seeded from
# fuzz/seeds/<target> if that exists); what a run finds (crash-*, timeout-*, oom-*) goes to
# target/fuzz-artifacts/<target>/, its log to target/fuzz-logs/<target>.log. Any finding fails
# the run, after every target has had its turn. Reproduce one with
#   <target binary> <artifact>
# (the binary path is printed at the end of the build).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/fuzz-build}
HOST=$(rustc -vV | sed -n 's/^host: //p')

# --target keeps these flags off build scripts and proc macros, which must not be instrumented.
export RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing -Cdebug-assertions -Coverflow-checks"

if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in "$ROOT"/fuzz/fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi

bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
nice -n 10 cargo build --release --manifest-path "$ROOT/fuzz/Cargo.toml" --target "$HOST" "${bins[@]}"
BIN_DIR=$CARGO_TARGET_DIR/$HOST/release
echo "fuzz: targets built in $BIN_DIR"
[ -n "${FUZZ_BUILD_ONLY:-}" ] && exit 0

failed=()
summary=()
for t in "${targets[@]}"; do
    corpus=$ROOT/target/fuzz-corpus/$t
    artifacts=$ROOT/target/fuzz-artifacts/$t
    log=$ROOT/target/fuzz-logs/$t.log
    mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
    dirs=("$corpus")
    [ -d "$ROOT/fuzz/seeds/$t" ] && dirs+=("$ROOT/fuzz/seeds/$t")
    # Sockets and the shared directory live here; the virtio-fs targets may write nowhere else
    # but HUSK_FUZZ_RW (see fuzz/src/host.rs).
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/husk-fuzz.XXXXXX")
    echo "== fuzz: $t for ${SECONDS_PER_TARGET}s"
    rc=0
    TMPDIR=$tmp HUSK_FUZZ_RW="$corpus:$artifacts:$tmp" nice -n 10 "$BIN_DIR/$t" \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=1024 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 "${dirs[@]}" >"$log" 2>&1 || rc=$?
    rm -rf "$tmp"
    cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1 || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    summary+=("$(printf '%-18s %-24s execs %-10s exec/s %s' "$t" "${cov:-cov: ?}" "${execs:-?}" "${speed:-?}")")
    if [ "$rc" -ne 0 ]; then
        tail -n 40 "$log"
        saved=$(grep -Eo '(Test unit|artifact) written to [^ ]+' "$log" | sed 's/.* written to //' || true)
        echo "fuzz: $t FAILED (exit $rc); input saved to: ${saved:-see $log}"
        failed+=("$t")
    fi
done

echo "== fuzz summary (${SECONDS_PER_TARGET}s per target; logs in target/fuzz-logs/)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: findings in: ${failed[*]} (inputs in target/fuzz-artifacts/)"
    exit 1
fi
