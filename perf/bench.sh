#!/usr/bin/env bash
# Side-by-side benchmark: uipd vs slirp4netns (vs the veth upper limit),
# same machine, same tool (uipd-perf), same duration, one run.
#
#   perf/bench.sh [-l SECONDS] [-r RUNS] [-m "65520 1500"] [-o OUT.json]
#
# Everything runs inside an outer network namespace that has only `lo`
# (unshare --net): servers listen on its 127.0.0.1, and both backends'
# "host" sockets live there, so no packet can leave the machine.
# Needs root (namespaces) and slirp4netns (Debian package).
set -euo pipefail

LEN=5 RUNS=3 MTUS="65520 1500" OUT=""
while getopts "l:r:m:o:" o; do
  case $o in
    l) LEN=$OPTARG ;; r) RUNS=$OPTARG ;; m) MTUS=$OPTARG ;; o) OUT=$OPTARG ;;
    *) echo "usage: $0 [-l SECONDS] [-r RUNS] [-m MTUS] [-o OUT.json]" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
ROOT=$PWD
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n $OUT ]] || OUT=perf/results/$(date -u +%Y%m%d-%H%M%S)-$REV.json
if [[ ${UIPD_BENCH_INNER:-} != 1 ]]; then
  cargo build --release --quiet --bins
  command -v slirp4netns >/dev/null || { echo "slirp4netns missing (apt-get install slirp4netns)" >&2; exit 1; }
  export UIPD_BENCH_INNER=1
  exec unshare --net -- "$0" -l "$LEN" -r "$RUNS" -m "$MTUS" -o "$OUT"
fi

# ── inside the outer namespace ──
ip link set lo up
UIPD=$ROOT/target/release/uipd
PERF=$ROOT/target/release/uipd-perf
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

"$PERF" -s -B 127.0.0.1 -p 12865 >"$TMP/server.log" 2>&1 & PIDS+=($!)
sleep 0.5

cpu_of() { # utime+stime seconds of PID from /proc
  awk -v hz="$(getconf CLK_TCK)" '{print ($14+$15)/hz}' "/proc/$1/stat" 2>/dev/null || echo 0
}

results=()
record() { # backend mtu test json cpu
  results+=("{\"backend\":\"$1\",\"mtu\":$2,\"test\":\"$3\",\"run\":$4,\"backend_cpu_s\":$6,\"result\":$5}")
}

run_uipd() { # mtu test run
  local mtu=$1 test=$2 run=$3
  "$UIPD" --mtu "$mtu" -- sh -c "sleep 0.3; exec timeout $((LEN + 20)) $PERF -H 192.168.33.1 -p 12865 -t $test -l $LEN --json" \
    >"$TMP/out.json" 2>"$TMP/uipd.err" &
  local pid=$!
  local cpu=0
  while kill -0 $pid 2>/dev/null; do c=$(cpu_of $pid); [[ $c == 0 ]] || cpu=$c; sleep 0.2; done
  wait $pid || { echo "uipd $test mtu $mtu failed:" >&2; cat "$TMP/uipd.err" >&2; return 0; }
  record uipd "$mtu" "$test" "$run" "$(cat "$TMP/out.json")" "$cpu"
}

run_slirp() { # mtu test run
  local mtu=$1 test=$2 run=$3
  unshare --net --mount -- sh -c "echo nameserver 10.0.2.3 > $TMP/resolv; sleep 60" & local ns=$!
  sleep 0.2
  slirp4netns --configure --mtu="$mtu" "$ns" tap0 >"$TMP/slirp.log" 2>&1 & local sp=$!
  sleep 0.5
  nsenter -t "$ns" -n timeout $((LEN + 20)) "$PERF" -H 10.0.2.2 -p 12865 -t "$test" -l "$LEN" --json >"$TMP/out.json" 2>"$TMP/s.err" || true
  local cpu; cpu=$(cpu_of $sp)
  kill $sp $ns 2>/dev/null || true; wait $sp $ns 2>/dev/null || true
  [[ -s $TMP/out.json ]] && record slirp4netns "$mtu" "$test" "$run" "$(cat "$TMP/out.json")" "$cpu" || { echo "slirp4netns $test failed" >&2; cat "$TMP/s.err" >&2; }
}

run_veth() { # mtu test run: kernel to kernel, the upper limit
  local mtu=$1 test=$2 run=$3
  unshare --net -- sleep 60 & local ns=$!
  sleep 0.2
  ip link add vb0 type veth peer name vb1
  ip link set vb1 netns "$ns"
  ip addr add 10.77.0.1/24 dev vb0; ip link set vb0 mtu "$mtu" up
  nsenter -t "$ns" -n sh -c "ip link set lo up; ip addr add 10.77.0.2/24 dev vb1; ip link set vb1 mtu $mtu up"
  "$PERF" -s -B 10.77.0.1 -p 12866 --once >/dev/null 2>&1 & local srv=$!
  sleep 0.3
  nsenter -t "$ns" -n timeout $((LEN + 20)) "$PERF" -H 10.77.0.1 -p 12866 -t "$test" -l "$LEN" --json >"$TMP/out.json" 2>/dev/null || true
  kill $srv $ns 2>/dev/null || true; wait $srv $ns 2>/dev/null || true
  ip link del vb0 2>/dev/null || true
  [[ -s $TMP/out.json ]] && record veth "$mtu" "$test" "$run" "$(cat "$TMP/out.json")" 0
}

for mtu in $MTUS; do
  for test in TCP_STREAM TCP_MAERTS; do
    for run in $(seq 1 "$RUNS"); do
      echo "mtu $mtu $test run $run" >&2
      run_uipd "$mtu" "$test" "$run"
      run_slirp "$mtu" "$test" "$run"
      run_veth "$mtu" "$test" "$run"
    done
  done
done

mkdir -p "$(dirname "$OUT")"
python3 - "$OUT" "$REV" "$LEN" "$RUNS" "${results[@]}" <<'PY'
import json, sys, statistics, platform, os, datetime
out, rev, length, runs, *rows = sys.argv[1:]
rows = [json.loads(r) for r in rows]
cpu = next((l.split(":",1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
summary = {}
for r in rows:
    k = (r["backend"], r["mtu"], r["test"])
    summary.setdefault(k, {"mbps": [], "cpu": []})
    summary[k]["mbps"].append(r["result"].get("throughput_mbps", 0))
    summary[k]["cpu"].append(r["backend_cpu_s"])
table = []
for (b, m, t), v in sorted(summary.items()):
    table.append({"backend": b, "mtu": m, "test": t, "median_mbps": statistics.median(v["mbps"]),
                  "runs_mbps": v["mbps"], "median_backend_cpu_s": statistics.median(v["cpu"])})
def med(b, m, t):
    return next((x["median_mbps"] for x in table if (x["backend"], x["mtu"], x["test"]) == (b, m, t)), None)
ratios = []
for m in sorted({x["mtu"] for x in table}):
    for t in sorted({x["test"] for x in table}):
        u, s, v = med("uipd", m, t), med("slirp4netns", m, t), med("veth", m, t)
        ratios.append({"mtu": m, "test": t, "uipd_mbps": u, "slirp4netns_mbps": s, "veth_mbps": v,
                       "uipd_over_slirp4netns": round(u / s, 2) if u and s else None,
                       "uipd_over_veth": round(u / v, 3) if u and v else None})
doc = {"git_rev": rev, "date": datetime.datetime.utcnow().isoformat() + "Z", "cpu_model": cpu,
       "cpus": os.cpu_count(), "kernel": platform.release(), "duration_s": int(length), "runs": int(runs),
       "tool": "uipd-perf", "pinning": "none", "queues": 1, "summary": table, "ratios": ratios, "raw": rows}
json.dump(doc, open(out, "w"), indent=1)
print(f"{'MTU':>6} {'test':<11} {'uipd':>9} {'slirp4netns':>12} {'veth':>9} {'uipd/slirp':>10} {'uipd/veth':>9}")
for r in ratios:
    f = lambda x: f"{x:9.0f}" if x else "        -"
    print(f"{r['mtu']:>6} {r['test']:<11} {f(r['uipd_mbps'])} {f(r['slirp4netns_mbps']):>12} {f(r['veth_mbps'])} {str(r['uipd_over_slirp4netns']):>10} {str(r['uipd_over_veth']):>9}")
print(f"written: {out}")
PY
