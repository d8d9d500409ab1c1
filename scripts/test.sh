#!/usr/bin/env bash
# The one command that checks uipd: setup (as root), format, lints, all tests, fuzzing.
#
#   scripts/test.sh
#
# Steps run in order and all run even after a failure, so one run shows every
# problem; the summary at the end lists each step's result and time, and the
# exit status is non-zero if any step failed.
#
# Environment: CARGO_TARGET_DIR is honoured; UIPD_FUZZ_SECS (default 30) is
# passed to scripts/fuzz.sh; UIPD_TEST_BACKEND=slirp4netns runs the namespace
# tests against slirp4netns (harness check), see tests/common/mod.rs.
set -uo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

names=()
results=()
times=()
failed=0

step() {
	local name=$1
	shift
	echo
	echo "==================== $name: $*"
	local t0=$SECONDS rc
	"$@"
	rc=$?
	names+=("$name")
	times+=($((SECONDS - t0)))
	if [ $rc -eq 0 ]; then
		results+=("ok")
	else
		results+=("FAILED (exit $rc)")
		failed=1
	fi
	echo "==================== $name: ${results[-1]}"
}

skip() {
	names+=("$1")
	results+=("skipped: $2")
	times+=(0)
	echo
	echo "==================== $1: skipped: $2"
}

if [ "$(id -u)" = 0 ]; then
	step setup bash scripts/setup.sh
else
	skip setup "not root"
fi
step fmt cargo fmt --all --check
step clippy cargo clippy --all-targets -- -D warnings
test_log=$(mktemp)
trap 'rm -f "$test_log"' EXIT
run_tests() { cargo test --all-targets --no-fail-fast 2>&1 | tee "$test_log"; }
step test run_tests
step doctest cargo test --doc
if [ -f scripts/fuzz.sh ]; then
	step fuzz bash scripts/fuzz.sh "${UIPD_FUZZ_SECS:-30}"
else
	skip fuzz "scripts/fuzz.sh not present"
fi

echo
echo "==================== summary"
for i in "${!names[@]}"; do
	printf '  %-8s %-36s %5ss\n' "${names[$i]}" "${results[$i]}" "${times[$i]}"
done
passed=$(awk '/^test result:/ {s += $4} END {print s + 0}' "$test_log")
tfailed=$(awk '/^test result:/ {s += $6} END {print s + 0}' "$test_log")
if [ $failed -ne 0 ]; then
	echo "test.sh: FAILED"
	echo "tests: $passed passed, $tfailed failed"
	exit 1
fi
echo "test.sh: all steps passed"
echo "tests: $passed passed, $tfailed failed"
