#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ (docs/fuzzing.md) one after the other and prints, per target, the seconds,
# executions, executions per second and findings. Exits non-zero if any target found a crash (its input is in
# fuzz/artifacts/<target>/: fix the bug, then keep the input under fuzz/regressions/<target>/).
#
#   scripts/fuzz.sh          every target for its own time (below: enough for >= 1 million executions each)
#   scripts/fuzz.sh --ci     every target for 20 s (`make fuzz-ci`)
#   FUZZ_SECONDS=N           every target for N seconds instead
#   FUZZ_TARGETS="a b"       only these targets
#
# cargo-fuzz is installed into .tools/ on first use. It needs flags of a nightly compiler; RUSTC_BOOTSTRAP=1 lets
# the stable one accept them (no other toolchain needed). No sanitizer (the code is safe Rust: a finding is a
# panic, an overflow, a timeout or running out of memory), debug assertions on (an arithmetic overflow panics).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$PWD"

CARGO_FUZZ_VERSION=0.13.2
if ! [ -x .tools/bin/cargo-fuzz ] || ! .tools/bin/cargo-fuzz --version | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION into .tools/" >&2
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" --root .tools
fi
export PATH="$root/.tools/bin:$PATH" RUSTC_BOOTSTRAP=1

# Seconds per target for `make fuzz`: measured exec/s on a loaded 2-core machine (docs/security.md, Fuzzing), with
# room to spare, so that every target passes 1 million executions.
declare -A SECONDS_FOR=(
    [prep_register]=60
    [prep_heartbeat]=60
    [prep_report]=60
    [agent_command]=240
    [api_call]=240
    [txn_decode]=90
    [snapshot_decode]=480
    [stack_toml]=90
    [catchup_request]=60
    [enroll_request]=60
)
ci=false
[ "${1:-}" = --ci ] && ci=true

flags=(--sanitizer none --debug-assertions)
cargo fuzz build "${flags[@]}"

targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
mkdir -p fuzz/target/logs
summary=()
failed=0
for t in $targets; do
    if [ -n "${FUZZ_SECONDS:-}" ]; then secs=$FUZZ_SECONDS
    elif $ci; then secs=20
    else secs=${SECONDS_FOR[$t]:-300}; fi
    # New inputs go to fuzz/corpus/<t> (not kept); the kept seeds and every past finding are read first.
    dirs=("fuzz/corpus/$t")
    for d in "fuzz/seeds/$t" "fuzz/regressions/$t"; do [ -d "$d" ] && dirs+=("$d"); done
    mkdir -p "${dirs[0]}" "fuzz/artifacts/$t"
    before=$(find "fuzz/artifacts/$t" -type f | wc -l)
    log="fuzz/target/logs/$t.log"
    echo "fuzz: $t for ${secs}s (log: $log)" >&2
    start=$(date +%s)
    status=0
    cargo fuzz run "${flags[@]}" "$t" "${dirs[@]}" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 >"$log" 2>&1 || status=$?
    took=$(( $(date +%s) - start ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    execs=${execs:-0}
    # libFuzzer's own count of the fuzzing seconds (without the build check and the corpus loading), if it got there.
    ran=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    took=${ran:-$took}
    found=$(( $(find "fuzz/artifacts/$t" -type f | wc -l) - before ))
    if [ "$status" -ne 0 ] && [ "$found" -eq 0 ]; then found=1; fi
    [ "$found" -gt 0 ] && { failed=1; grep -E 'panicked|ERROR|Test unit written' "$log" | head -5 >&2 || true; }
    summary+=("$(printf '%-16s %6ss %12s execs %8s exec/s %3s findings' "$t" "$took" "$execs" \
        "$(( execs / (took > 0 ? took : 1) ))" "$found")")
done
echo
printf '%s\n' "${summary[@]}"
exit "$failed"
