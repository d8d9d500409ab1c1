#!/usr/bin/env bash
# Side-by-side benchmark of user-mode network backends on this machine, in
# one run: uipd, slirp4netns, pasta (passt) and the kernel's veth pair (the
# upper limit), with the same client, server, duration and MTU for each.
#
#   perf/bench.sh [-l SECONDS] [-r RUNS] [-m "1500 65520"] [-b BACKENDS]
#                 [-t TESTS] [-c CPULIST] [-u "UIPD ARGS"] [-o OUT.json] [-N]
#
#   -l  seconds per test (default 5)         -r  runs; medians reported (3)
#   -m  MTUs (default "1500 65520")          -o  output JSON (the PNG chart
#   -b  backends (default "uipd slirp4netns      goes next to it, .png)
#       pasta veth"; add uipd-epoll to        -c  uipd --cpus (default: none)
#       compare uipd's epoll engine)
#   -t  tests (default "TCP_STREAM TCP_MAERTS UDP_STREAM TCP_RR TCP_CRR iperf3")
#   -u  more uipd options, e.g. "--poll-us 0" (default: none)
#   -N  do not run `cargo build --release --bins` first
#
# Quick smoke run:  perf/bench.sh -l 2 -r 1 -m 1500 -t "TCP_STREAM TCP_RR"
#
# Everything runs inside an outer network namespace that has only `lo`
# (unshare --net; a private mount namespace too, for `ip netns`): servers
# listen on its 127.0.0.1 and every backend's "host" sockets live there, so
# no packet can leave the machine. Each test gets a fresh guest namespace
# and a fresh backend process, whose CPU time (utime+stime, all threads) is
# read from /proc/PID/stat just before it exits. Needs root.
#
# Tests (uipd-perf, the project's netperf-style tool, unless noted):
#   TCP_STREAM  guest -> host bulk TCP      TCP_MAERTS  host -> guest
#   UDP_STREAM  guest -> host, 1400-byte datagrams: received Mbit/s, loss
#   TCP_RR      1-byte request/response: transactions/s, p50/p99 latency
#   TCP_CRR     connect + 1-byte RR + close per transaction: rate
#   iperf3      iperf3 -c (and -R) as a third-party cross-check, MTU 1500 only
#   netperf     the real HP netperf, when NETPERF=/path/to/netperf is set
#               (netserver beside it; scripts/netperf.sh fetches Debian's
#               2.7.0): NETPERF_TCP_STREAM, NETPERF_TCP_MAERTS,
#               NETPERF_UDP_STREAM (its default 65507-byte messages, which
#               the guest fragments), NETPERF_UDP_STREAM_1400 (-m 1400) and
#               NETPERF_TCP_RR (-j: P50/P99 latency). With NETPERF set and
#               no -t, the default tests gain `netperf`. NETPERF_TESTS="..."
#               picks some of those five.
#
# Backends and the address that reaches the outer namespace's 127.0.0.1:
#   uipd         target/release/uipd --mtu M -- CMD; gateway 192.168.33.1
#   uipd-epoll   the same with --io epoll (opt-in: the engine uipd falls
#                back to where io_uring is refused); reported as uipd/epoll
#   uipd-nosandbox  the same with --no-sandbox (opt-in): the sandbox's cost,
#                reported as uipd/nosan (sandboxed over unsandboxed)
#   slirp4netns  --configure --mtu=M PID tap0; 10.0.2.2
#   pasta        --config-net --netns NS -m M -t/-u/-T/-U none; the gateway
#                192.0.2.2 of a veth (pa0, both ends in the outer namespace)
#                that pasta copies its addresses from, mapped to 127.0.0.1
#                by pasta's default --map-gw. Port forwarding is off, so no
#                splice path: every byte crosses pasta's tap.
#   veth         a veth pair between the outer namespace and the guest; the
#                server binds the outer end (10.77.0.1). No user-space hop.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

LEN=5 RUNS=3 MTUS="1500 65520" BACKENDS="uipd slirp4netns pasta veth"
TESTS="TCP_STREAM TCP_MAERTS UDP_STREAM TCP_RR TCP_CRR iperf3" CPUS="" UARGS="" OUT="" BUILD=1
[[ -z ${NETPERF:-} ]] || TESTS+=" netperf"
while getopts "l:r:m:b:t:c:u:o:Nh" o; do
  case $o in
    l) LEN=$OPTARG ;; r) RUNS=$OPTARG ;; m) MTUS=$OPTARG ;; b) BACKENDS=$OPTARG ;;
    t) TESTS=$OPTARG ;; c) CPUS=$OPTARG ;; u) UARGS=$OPTARG ;; o) OUT=$OPTARG ;; N) BUILD=0 ;; *) usage ;;
  esac
done
[[ $LEN =~ ^[1-9][0-9]*$ && $LEN -le 600 ]] || { echo "-l: 1..600 seconds" >&2; exit 2; }
[[ $RUNS =~ ^[1-9][0-9]*$ && $RUNS -le 50 ]] || { echo "-r: 1..50 runs" >&2; exit 2; }
for m in $MTUS; do
  [[ $m =~ ^[0-9]+$ && $m -ge 576 && $m -le 65520 ]] || { echo "-m: MTU $m not in 576..65520" >&2; exit 2; }
done
for b in $BACKENDS; do
  case $b in uipd | uipd-epoll | uipd-nosandbox | slirp4netns | pasta | veth) ;; *) echo "-b: unknown backend $b" >&2; exit 2 ;; esac
done
for t in $TESTS; do
  case $t in TCP_STREAM | TCP_MAERTS | UDP_STREAM | TCP_RR | TCP_CRR | iperf3 | netperf) ;;
    *) echo "-t: unknown test $t" >&2; exit 2 ;; esac
done

cd "$(dirname "$0")/.."
ROOT=$PWD
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git status --porcelain --untracked-files=no 2>/dev/null) ]] || REV=$REV-dirty
[[ -n $OUT ]] || OUT=perf/results/$(date -u +%Y%m%d-%H%M%S)-$REV.json
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
export UIPD=${UIPD:-$TARGET/release/uipd} PERF=${UIPD_PERF:-$TARGET/release/uipd-perf}
if [[ -n ${NETPERF:-} ]]; then
  NETPERF=$(realpath "$NETPERF")
  export NETPERF NETSERVER=${NETSERVER:-$(dirname "$NETPERF")/netserver}
fi

if [[ ${UIPD_BENCH_INNER:-} != 1 ]]; then
  [[ $(id -u) == 0 ]] || { echo "needs root (network namespaces)" >&2; exit 1; }
  [[ $BUILD == 0 ]] || cargo build --release --quiet --bins
  # Tools, installed while the network is still reachable.
  need=()
  [[ $BACKENDS != *slirp4netns* ]] || command -v slirp4netns >/dev/null || need+=(slirp4netns)
  [[ $BACKENDS != *pasta* ]] || command -v pasta >/dev/null || need+=(passt)
  [[ $TESTS != *iperf3* ]] || command -v iperf3 >/dev/null || need+=(iperf3)
  if ((${#need[@]})); then
    echo "installing ${need[*]} (apt-get)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null 2>&1 ||
      echo "warning: could not install ${need[*]}; those backends/tests will be skipped" >&2
  fi
  source perf/lib.sh
  PLOT_PY=$(find_plot_python)
  export PLOT_PY UIPD_BENCH_INNER=1
  mkdir -p "$(dirname "$OUT")"
  args=(-l "$LEN" -r "$RUNS" -m "$MTUS" -b "$BACKENDS" -t "$TESTS" -o "$OUT" -N)
  [[ -z $CPUS ]] || args+=(-c "$CPUS")
  [[ -z $UARGS ]] || args+=(-u "$UARGS")
  exec unshare --net --mount -- "$0" "${args[@]}"
fi

# ── inside the outer namespace ──
source perf/lib.sh
ip link set lo up
TMP=$(mktemp -d /tmp/uipd-bench.XXXXXX)
RAW=$TMP/raw.jsonl
: >"$RAW"
PASTA_NS=uipd-bench-pasta
cleanup() {
  kill_tracked
  ip netns del "$PASTA_NS" 2>/dev/null || true
  ip link del pa0 2>/dev/null || true
  ip link del vb0 2>/dev/null || true
  ip link del nf0 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for b in $BACKENDS; do
  case $b in
    slirp4netns) command -v slirp4netns >/dev/null || { echo "skip: no slirp4netns" >&2; BACKENDS=${BACKENDS//slirp4netns/}; } ;;
    pasta) command -v pasta >/dev/null || { echo "skip: no pasta" >&2; BACKENDS=${BACKENDS//pasta/}; } ;;
  esac
done
if [[ $TESTS == *iperf3* ]] && ! command -v iperf3 >/dev/null; then
  echo "skip: no iperf3" >&2
  TESTS=${TESTS//iperf3/}
fi
if [[ $TESTS == *netperf* ]] && ! [[ -x ${NETPERF:-} && -x ${NETSERVER:-} ]]; then
  echo "skip: netperf: set NETPERF=/path/to/netperf, netserver beside it (scripts/netperf.sh)" >&2
  TESTS=${TESTS//netperf/}
fi

# The real netserver, for every backend, on all of this namespace's IPv4
# addresses (127.0.0.1 for the user-mode backends, veth's 10.77.0.1).
# Its getaddrinfo (AI_ADDRCONFIG) finds nothing in a namespace with only
# `lo`, so a veth pair (both ends here, nothing behind it) gives it an
# address.
NETPERF_PORT=12867
if [[ $TESTS == *netperf* ]]; then
  ip link add nf0 type veth peer name nf1
  ip addr add 10.78.0.1/30 dev nf0
  ip link set nf0 up
  ip link set nf1 up
  "$NETSERVER" -D -4 -p $NETPERF_PORT >"$TMP/netserver.log" 2>&1 &
  NETSERVER_PID=$!
  track $NETSERVER_PID
  sleep 0.3
fi

# The uipd-perf server for everything but veth, on the outer 127.0.0.1.
"$PERF" -s -B 127.0.0.1 -p 12865 >"$TMP/server.log" 2>&1 &
SERVER=$!
track $SERVER
wait_for 5 grep -q . "$TMP/server.log" || sleep 0.3

# netperf -k output selectors: one KEY=VALUE per line (perf/report.py).
NP_SEL_STREAM=THROUGHPUT,THROUGHPUT_UNITS,ELAPSED_TIME
NP_SEL_UDP=$NP_SEL_STREAM,LOCAL_SEND_THROUGHPUT,LOCAL_SEND_CALLS,REMOTE_RECV_CALLS,LOCAL_SEND_SIZE
NP_SEL_RR=$NP_SEL_STREAM,P50_LATENCY,P99_LATENCY,MEAN_LATENCY
NP_TXDROP="python3 $ROOT/perf/report.py tx-dropped"

# Datagrams the host side's receiving sockets dropped for a full buffer
# (UdpRcvbufErrors in this namespace, where netserver runs) during a
# netperf UDP test: host_counters start, then host_counters end appends
# HOST_RCVBUF_ERRORS=N to the client's output.
host_counters() {
  [[ $TEST == NETPERF_UDP_* ]] || return 0
  if [[ $1 == start ]]; then
    NSTAT_HISTORY=$TMP/nstat.hist nstat -n >/dev/null 2>&1 || true
  else
    echo "HOST_RCVBUF_ERRORS=$(NSTAT_HISTORY=$TMP/nstat.hist nstat -z UdpRcvbufErrors 2>/dev/null |
      awk '$1 == "UdpRcvbufErrors" {print $2}')" >>"$D/out"
  fi
}

# client_cmd TEST HOST PERF_PORT: the client command line, as a string.
client_cmd() {
  local t=$1 host=$2 port=$3 w=$((LEN + 30))
  local np="timeout $w ${NETPERF:-netperf} -H $host -p $NETPERF_PORT -l $LEN -P 0"
  case $t in
    NETPERF_TCP_STREAM) echo "$np -t TCP_STREAM -- -k $NP_SEL_STREAM" ;;
    NETPERF_TCP_MAERTS) echo "$np -t TCP_MAERTS -- -k $NP_SEL_STREAM" ;;
    # UDP: then the frames the guest's interfaces dropped (a TAP whose
    # reader fell behind): GUEST_TX_DROPPED=N.
    NETPERF_UDP_STREAM) echo "$np -t UDP_STREAM -- -k $NP_SEL_UDP && $NP_TXDROP" ;;
    NETPERF_UDP_STREAM_1400) echo "$np -t UDP_STREAM -- -m 1400 -k $NP_SEL_UDP && $NP_TXDROP" ;;
    NETPERF_TCP_RR) echo "$np -t TCP_RR -j -- -k $NP_SEL_RR" ;;
    IPERF3_STREAM) echo "timeout $w iperf3 -c $host -p 5201 -t $LEN -J" ;;
    IPERF3_MAERTS) echo "timeout $w iperf3 -c $host -p 5201 -t $LEN -J -R" ;;
    UDP_STREAM) echo "timeout $w $PERF -H $host -p $port -t $t -l $LEN -m 1400 --json" ;;
    *) echo "timeout $w $PERF -H $host -p $port -t $t -l $LEN --json" ;;
  esac
}

# iperf3 needs a server per test (-1: exits after it); uipd-perf's is shared.
IPERF_SRV=""
iperf_server() { # BIND
  IPERF_SRV=""
  [[ $TEST == IPERF3_* ]] || return 0
  iperf3 -s -1 -B "$1" -p 5201 >"$D/iperf-server.log" 2>&1 &
  IPERF_SRV=$!
  track $IPERF_SRV
  wait_for 5 grep -qi listening "$D/iperf-server.log" || true
}

record() { # BACKEND CPU_SECONDS [EXTRA_JSON]
  local extra=${3:-}
  [[ -n $extra ]] || extra='{}'
  python3 perf/report.py record "$RAW" "$1" "$MTU" "$TEST" "$RUN" "$2" "$D" "$extra"
}

# client NSENTER_ARGS... -- HOST PORT: run the client in the guest namespace;
# its output, errors and exit status land in $D.
client() {
  local pre=() rc=0
  while [[ $1 != -- ]]; do pre+=("$1"); shift; done
  shift
  host_counters start
  "${pre[@]}" sh -c "$(client_cmd "$TEST" "$1" "$2")" >"$D/out" 2>"$D/err" || rc=$?
  host_counters end
  echo $rc >"$D/rc"
}

uipd_done() { [[ -e $D/rc ]] || ! kill -0 "$1" 2>/dev/null; }

run_uipd() { # [BACKEND_NAME [UIPD_OPTIONS...]]
  local name=${1:-uipd}
  (($# == 0)) || shift
  iperf_server 127.0.0.1
  local cmd pid cpu workers
  cmd="{ $(client_cmd "$TEST" 192.168.33.1 12865); } >$D/out 2>$D/err; echo \$? >$D/rc"
  # Then wait (bounded) for the go-ahead, so uipd's CPU time is read while
  # it still runs, after the traffic.
  cmd+="; i=0; while [ ! -e $D/go ] && [ \$i -lt 100 ]; do sleep 0.05; i=\$((i+1)); done"
  # shellcheck disable=SC2086 # UARGS: options, split on spaces
  host_counters start
  "$UIPD" --mtu "$MTU" ${CPUS:+--cpus "$CPUS"} --stats-json "$D/stats.json" $UARGS "$@" \
    -- sh -c "$cmd" >"$D/backend.log" 2>&1 &
  pid=$!
  track $pid
  wait_for $((LEN + 45)) uipd_done $pid || echo "uipd: client did not finish" >&2
  host_counters end
  cpu=$(cpu_of $pid)
  workers=$(threads_named $pid uipd-w)
  touch "$D/go"
  wait $pid 2>/dev/null || true
  untrack $pid
  stop $IPERF_SRV
  record "$name" "$cpu" "{\"workers\":$workers}"
}

# uipd on its epoll engine, in the same run: its ratio to io_uring.
run_uipd_epoll() { run_uipd uipd-epoll --io epoll; }

# uipd without its sandbox, in the same run: what the sandbox costs.
run_uipd_nosandbox() { run_uipd uipd-nosandbox --no-sandbox; }

run_slirp4netns() {
  iperf_server 127.0.0.1
  local ns sp cpu
  unshare --net -- sleep $((LEN + 90)) &
  ns=$!
  track $ns
  sleep 0.1
  slirp4netns --configure --mtu="$MTU" "$ns" tap0 >"$D/backend.log" 2>&1 &
  sp=$!
  track $sp
  if wait_for 5 nsenter -t "$ns" -n sh -c "ip -4 addr show tap0 | grep -q 10.0.2.100"; then
    client nsenter -t "$ns" -n -- 10.0.2.2 12865
  else
    echo "slirp4netns did not come up" >"$D/err"
  fi
  cpu=$(cpu_of $sp)
  stop $sp $ns $IPERF_SRV
  record slirp4netns "$cpu"
}

run_pasta() {
  iperf_server 127.0.0.1
  local pp cpu
  # pasta copies the addresses and routes of an interface with a default
  # route: a veth with both ends in this namespace gives it one; nothing
  # that enters pa0 can leave the namespace.
  ip link add pa0 type veth peer name pa1
  ip addr add 192.0.2.1/24 dev pa0
  ip link set pa0 up
  ip link set pa1 up
  ip route add default via 192.0.2.2 dev pa0
  ip netns add "$PASTA_NS"
  # --runas 0: as root, pasta would drop to nobody and then could not enter
  # a root-owned namespace.
  pasta --runas 0 -f -q -4 --config-net -m "$MTU" -t none -u none -T none -U none \
    --netns "$PASTA_NS" >"$D/backend.log" 2>&1 &
  pp=$!
  track $pp
  if wait_for 5 nsenter --net=/run/netns/$PASTA_NS sh -c "ip -4 addr show pa0 | grep -q 192.0.2.1"; then
    client nsenter --net=/run/netns/$PASTA_NS -- 192.0.2.2 12865
  else
    echo "pasta did not come up" >"$D/err"
  fi
  cpu=$(cpu_of $pp)
  stop $pp $IPERF_SRV
  ip netns del "$PASTA_NS" 2>/dev/null || true
  ip link del pa0 2>/dev/null || true
  record pasta "$cpu"
}

run_veth() {
  local ns srv
  unshare --net -- sleep $((LEN + 90)) &
  ns=$!
  track $ns
  sleep 0.1
  ip link add vb0 type veth peer name vb1
  ip link set vb1 netns "$ns"
  ip addr add 10.77.0.1/24 dev vb0
  ip link set vb0 mtu "$MTU" up
  nsenter -t "$ns" -n sh -c "ip link set lo up; ip addr add 10.77.0.2/24 dev vb1; ip link set vb1 mtu $MTU up"
  iperf_server 10.77.0.1
  "$PERF" -s -B 10.77.0.1 -p 12866 --once >/dev/null 2>&1 &
  srv=$!
  track $srv
  sleep 0.2
  client nsenter -t "$ns" -n -- 10.77.0.1 12866
  stop $srv $ns $IPERF_SRV
  ip link del vb0 2>/dev/null || true
  record veth null
}

# Interleave backends within each test so drift on this shared machine hits
# them all alike.
n=0
for RUN in $(seq 1 "$RUNS"); do
  for MTU in $MTUS; do
    for t in $TESTS; do
      if [[ $t == iperf3 ]]; then
        [[ $MTU == 1500 ]] || continue
        subtests="IPERF3_STREAM IPERF3_MAERTS"
      elif [[ $t == netperf ]]; then
        subtests=${NETPERF_TESTS:-"NETPERF_TCP_STREAM NETPERF_TCP_MAERTS NETPERF_UDP_STREAM NETPERF_UDP_STREAM_1400 NETPERF_TCP_RR"}
      else
        subtests=$t
      fi
      for TEST in $subtests; do
        for B in $BACKENDS; do
          n=$((n + 1))
          D=$TMP/t$n
          mkdir -p "$D"
          echo "run $RUN/$RUNS  mtu $MTU  $TEST  $B" >&2
          "run_${B//-/_}"
        done
      done
    done
  done
done
stop $SERVER ${NETSERVER_PID:-}

python3 perf/report.py bench "$RAW" "$OUT" --rev "$REV" --len "$LEN" --runs "$RUNS" \
  --mtus "$MTUS" --backends "$BACKENDS" --tests "$TESTS" --cpus "$CPUS" --uipd-args "$UARGS"
if [[ -n ${PLOT_PY:-} ]]; then
  "$PLOT_PY" perf/report.py chart "$OUT" "${OUT%.json}.png" || echo "warning: chart failed" >&2
fi
