#!/usr/bin/env bash
# Run every cargo-fuzz target in fuzz/fuzz_targets for SECONDS each.
#
#   scripts/fuzz.sh SECONDS [TARGET...]
#
# Exits non-zero if any target crashes (or fails to build); the crashing
# input is left in fuzz/artifacts/<target>/ and can be replayed with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/crash-...`.
#
# Works on a stable toolchain: cargo-fuzz passes nightly-only flags to rustc
# (-Zsanitizer=address, sancov passes), and RUSTC_BOOTSTRAP=1 makes a stable
# rustc accept them. The sanitizer runtimes ship with stable's rust-std.
# New corpus entries go to fuzz/corpus/<target>/ (git-ignored); the committed
# seeds in fuzz/seeds/<target>/ (byte fixtures from the unit tests) are read
# as a second corpus directory.
set -euo pipefail

usage() { echo "usage: $0 SECONDS [TARGET...]" >&2; exit 2; }
[[ $# -ge 1 && $1 =~ ^[0-9]+$ && $1 -gt 0 ]] || usage
secs=$1
shift

cd "$(dirname "$0")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked --version '^0.13'
fi

export RUSTC_BOOTSTRAP=1

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(find fuzz/fuzz_targets -maxdepth 1 -name '*.rs' -printf '%f\n' | sed 's/\.rs$//' | sort)
fi
[[ ${#targets[@]} -gt 0 ]] || { echo "fuzz.sh: no targets in fuzz/fuzz_targets" >&2; exit 1; }

# One build for all targets up front, so per-target time is fuzzing time.
cargo fuzz build

failed=()
for t in "${targets[@]}"; do
    echo "=== $t: ${secs}s ===" >&2
    corpus=(fuzz/corpus/"$t")
    mkdir -p "${corpus[0]}"
    [[ -d fuzz/seeds/$t ]] && corpus+=(fuzz/seeds/"$t")
    log=fuzz/artifacts/$t.log
    mkdir -p fuzz/artifacts
    if cargo fuzz run "$t" "${corpus[@]}" -- -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^Done|stat::number_of_executed_units' "$log" | head -2 >&2
    else
        failed+=("$t")
        echo "--- $t crashed; last lines of $log:" >&2
        tail -n 60 "$log" >&2
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets ran ${secs}s each with no crash" >&2
