#!/usr/bin/env bash
# Builds every fuzz target and runs each for a bounded time, then prints one line per target:
# executions, exec/s, crashes. Exits 1 if any target crashed (its input is in artifacts/<t>/).
#
#   SECONDS_PER_TARGET  time limit per target (default 120)
#   MAX_RUNS            stop a target after this many executions (default -1: no cap)
#   JOBS                targets run at once (default 1)
#   TARGETS             which targets (default: all)
#   SANITIZER           cargo fuzz --sanitizer (default none: the crate forbids unsafe code)
#
# Only stable Rust is needed: RUSTC_BOOTSTRAP=1 lets it accept the -Z flags cargo fuzz passes.
set -euo pipefail
cd "$(dirname "$0")"

SECONDS_PER_TARGET=${SECONDS_PER_TARGET:-120}
MAX_RUNS=${MAX_RUNS:--1}
JOBS=${JOBS:-1}
SANITIZER=${SANITIZER:-none}
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
TARGETS=${TARGETS:-$(cargo fuzz list)}

# Release, with debug assertions on (the crate's debug_assert!s are invariants too).
cargo fuzz build --sanitizer "$SANITIZER" --release --debug-assertions
triple=$(rustc -vV | sed -n 's/^host: //p')
export BIN=$CARGO_TARGET_DIR/$triple/release SECONDS_PER_TARGET MAX_RUNS
LOGS=$(mktemp -d)
export LOGS

run_one() {
  local t=$1
  mkdir -p "corpus/$t" "artifacts/$t"
  local rc=0
  # The seed corpus (seeds/<t>, if any) is read; new inputs go to corpus/<t> (ignored by git).
  local seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  "$BIN/$t" "corpus/$t" "${seeds[@]}" -artifact_prefix="artifacts/$t/" \
    -max_total_time="$SECONDS_PER_TARGET" -runs="$MAX_RUNS" -timeout=10 \
    -print_final_stats=1 >"$LOGS/$t.log" 2>&1 || rc=$?
  echo "$rc" >"$LOGS/$t.rc"
}
export -f run_one

start=$(date +%s)
printf '%s\n' $TARGETS | xargs -P "$JOBS" -I{} bash -c 'run_one {}'

printf '\n%-12s %14s %10s %8s %8s\n' target executions exec/s crashes seconds
failed=0
for t in $TARGETS; do
  log=$LOGS/$t.log
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
  secs=$(sed -n "s/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p" "$log" | tail -n1)
  crashes=$(grep -c 'Test unit written to' "$log" || true)
  [ "$(cat "$LOGS/$t.rc")" = 0 ] || { failed=1; [ "$crashes" -gt 0 ] || crashes="rc=$(cat "$LOGS/$t.rc")"; }
  printf '%-12s %14s %10s %8s %8s\n' "$t" "${execs:-?}" "${rate:-?}" "$crashes" "${secs:-?}"
done
printf 'total wall time: %ss (logs: %s)\n' "$(( $(date +%s) - start ))" "$LOGS"
if [ $failed = 1 ]; then
  echo "a target failed: see its log and artifacts/<target>/"
  exit 1
fi
