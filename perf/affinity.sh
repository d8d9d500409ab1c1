#!/usr/bin/env bash
# CPU-affinity experiment for uipd: where its stack worker runs relative to
# the traffic source, and (once uipd runs more than one worker) 1 vs 2
# workers with 1 and 4 flows.
#
#   perf/affinity.sh [-l SECONDS] [-r RUNS] [-m MTU] [-o OUT.json] [-N]
#
#   -l  seconds per test (default 5)    -r  runs, medians reported (default 3)
#   -m  MTU (default 65520)             -o  output JSON (PNG next to it)
#   -N  do not run `cargo build --release --bins` first
#
# Configurations (uipd-perf TCP_STREAM, TCP_MAERTS and TCP_RR for each):
#   unpinned              no --cpus; client unpinned
#   w@0 client@0          --cpus 0; client `taskset -c 0` (same CPU)
#   w@0 client@1          --cpus 0; client `taskset -c 1` (separate CPUs)
#   cpus0 P1 / cpus0 P4   --cpus 0, 1 and 4 flows (uipd-perf -P 4)
#   cpus0-1 P1 / P4       --cpus 0-1, 1 and 4 flows: only if uipd accepts a
#                         list of two CPUs; the "wrk" column is the number of
#                         uipd-w* worker threads seen during the test, so a
#                         binary that takes the list but runs one worker
#                         shows 1.
# The uipd-perf server (outside, on 127.0.0.1) is not pinned.
# Same rules as perf/bench.sh: a loopback-only outer namespace, root,
# every process killed by PID at the end.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

LEN=5 RUNS=3 MTU=65520 OUT="" BUILD=1
while getopts "l:r:m:o:Nh" o; do
  case $o in
    l) LEN=$OPTARG ;; r) RUNS=$OPTARG ;; m) MTU=$OPTARG ;; o) OUT=$OPTARG ;; N) BUILD=0 ;; *) usage ;;
  esac
done
[[ $LEN =~ ^[1-9][0-9]*$ && $LEN -le 600 ]] || { echo "-l: 1..600 seconds" >&2; exit 2; }
[[ $RUNS =~ ^[1-9][0-9]*$ && $RUNS -le 50 ]] || { echo "-r: 1..50 runs" >&2; exit 2; }
[[ $MTU =~ ^[0-9]+$ && $MTU -ge 576 && $MTU -le 65520 ]] || { echo "-m: MTU 576..65520" >&2; exit 2; }

cd "$(dirname "$0")/.."
ROOT=$PWD
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git status --porcelain --untracked-files=no 2>/dev/null) ]] || REV=$REV-dirty
[[ -n $OUT ]] || OUT=perf/results/affinity-$(date -u +%Y%m%d-%H%M%S)-$REV.json
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
export UIPD=${UIPD:-$TARGET/release/uipd} PERF=${UIPD_PERF:-$TARGET/release/uipd-perf}

if [[ ${UIPD_BENCH_INNER:-} != 1 ]]; then
  [[ $(id -u) == 0 ]] || { echo "needs root (network namespaces)" >&2; exit 1; }
  [[ $BUILD == 0 ]] || cargo build --release --quiet --bins
  source perf/lib.sh
  PLOT_PY=$(find_plot_python)
  export PLOT_PY UIPD_BENCH_INNER=1
  mkdir -p "$(dirname "$OUT")"
  exec unshare --net -- "$0" -l "$LEN" -r "$RUNS" -m "$MTU" -o "$OUT" -N
fi

# ── inside the outer namespace ──
source perf/lib.sh
ip link set lo up
TMP=$(mktemp -d /tmp/uipd-affinity.XXXXXX)
RAW=$TMP/raw.jsonl
: >"$RAW"
cleanup() {
  kill_tracked
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$PERF" -s -B 127.0.0.1 -p 12865 >"$TMP/server.log" 2>&1 &
SERVER=$!
track $SERVER
sleep 0.3

NCPU=$(nproc)
# Does this uipd take more than one CPU? (Today: one worker, first CPU.)
MULTI=no
if ((NCPU >= 2)) && timeout 20 "$UIPD" --cpus 0-1 -- true >"$TMP/multi.log" 2>&1; then
  MULTI=yes
fi
NOTE=""
[[ $MULTI == yes ]] || NOTE="uipd did not accept --cpus 0-1 (or the machine has one CPU): 2-worker rows skipped. $(head -c 300 "$TMP/multi.log")"

# config NAME CPUS CLIENT_CPU STREAMS
CONFIGS=("unpinned|||1")
if ((NCPU >= 2)); then
  CONFIGS+=("w@0 client@0|0|0|1" "w@0 client@1|0|1|1")
fi
CONFIGS+=("cpus0 P1|0||1" "cpus0 P4|0||4")
[[ $MULTI != yes ]] || CONFIGS+=("cpus0-1 P1|0-1||1" "cpus0-1 P4|0-1||4")

uipd_done() { [[ -e $D/rc ]] || ! kill -0 "$1" 2>/dev/null; }

run_one() { # NAME CPUS CLIENT_CPU STREAMS TEST RUN
  local name=$1 cpus=$2 ccpu=$3 streams=$4 test=$5 run=$6 pid cpu workers cmd pre=""
  [[ -z $ccpu ]] || pre="taskset -c $ccpu "
  cmd="${pre}timeout $((LEN + 30)) $PERF -H 192.168.33.1 -p 12865 -t $test -l $LEN -P $streams --json"
  cmd+=" >$D/out 2>$D/err; echo \$? >$D/rc"
  cmd+="; i=0; while [ ! -e $D/go ] && [ \$i -lt 100 ]; do sleep 0.05; i=\$((i+1)); done"
  "$UIPD" --mtu "$MTU" ${cpus:+--cpus "$cpus"} -- sh -c "$cmd" >"$D/backend.log" 2>&1 &
  pid=$!
  track $pid
  wait_for $((LEN + 45)) uipd_done $pid || echo "uipd: client did not finish" >&2
  # uipd still runs (the command waits for $D/go): count its workers, read its CPU.
  workers=$(threads_named $pid uipd-w)
  cpu=$(cpu_of $pid)
  touch "$D/go"
  wait $pid 2>/dev/null || true
  untrack $pid
  python3 perf/report.py record "$RAW" uipd "$MTU" "$test" "$run" "$cpu" "$D" \
    "{\"config\":\"$name\",\"cpus\":\"$cpus\",\"client_cpu\":\"$ccpu\",\"streams\":$streams,\"workers\":$workers}"
}

n=0
for run in $(seq 1 "$RUNS"); do
  for c in "${CONFIGS[@]}"; do
    IFS='|' read -r name cpus ccpu streams <<<"$c"
    for test in TCP_STREAM TCP_MAERTS TCP_RR; do
      n=$((n + 1))
      D=$TMP/t$n
      mkdir -p "$D"
      echo "run $run/$RUNS  $name  $test" >&2
      run_one "$name" "$cpus" "$ccpu" "$streams" "$test" "$run"
    done
  done
done
stop $SERVER

python3 perf/report.py affinity "$RAW" "$OUT" --rev "$REV" --len "$LEN" --runs "$RUNS" \
  --mtu "$MTU" --multi "$MULTI" --note "$NOTE"
if [[ -n ${PLOT_PY:-} ]]; then
  "$PLOT_PY" perf/report.py chart "$OUT" "${OUT%.json}.png" || echo "warning: chart failed" >&2
fi
