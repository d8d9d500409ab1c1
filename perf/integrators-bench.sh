#!/usr/bin/env bash
# podman 4.3 with uipd as its slirp4netns vs podman with the real
# /usr/bin/slirp4netns, side by side in one run: iperf3 inside the
# container to a server on the outer namespace's 127.0.0.1 (through
# 10.0.2.2, allow_host_loopback=true), both ways.
#
#   perf/integrators-bench.sh [-l SECONDS] [-r RUNS] [-m "65520 1500"] [-o OUT.json] [-N]
#
#   -l  seconds per iperf3 run (default 5)    -r  runs; medians reported (3)
#   -m  MTUs, passed as slirp4netns:mtu=M (default "65520 1500"; 65520 is podman's default)
#   -o  output JSON (default perf/results/integrators-<UTC date>-<git rev>.json)
#   -N  do not run `cargo build --release --bin uipd` first
#
# Tests: IPERF3_STREAM (container -> host, iperf3 -c 10.0.2.2) and
# IPERF3_MAERTS (host -> container, -R); receiver-side Mbit/s.
#
# How it runs: like perf/bench.sh, the script re-executes itself under
# `unshare --net --mount` (an outer network namespace with only `lo`, and
# private mounts). podman runs as root with private vfs storage in a temp
# dir, from a busybox + iperf3 image made here with `podman import` (no
# registry), and with one containers.conf per backend whose
# network_cmd_path is a symlink named slirp4netns: to target/release/uipd
# (uipd's slirp4netns personality) or to /usr/bin/slirp4netns. Everything
# else is the same: the same podman command, `--network
# slirp4netns:allow_host_loopback=true,mtu=M`, the same image and server.
# The sandbox settings are those of tests/integrators_podman.rs (ulimits
# below the hard limits, cgroups off, tmpfs on /run and /dev/shm).
# Backend CPU: utime+stime of the backend process (found by its argv[0]),
# sampled every 0.2 s until the container exits; it covers one test and
# its setup. Needs root.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

LEN=5 RUNS=3 MTUS="65520 1500" OUT="" BUILD=1
while getopts "l:r:m:o:Nh" o; do
  case $o in
    l) LEN=$OPTARG ;; r) RUNS=$OPTARG ;; m) MTUS=$OPTARG ;; o) OUT=$OPTARG ;; N) BUILD=0 ;; *) usage ;;
  esac
done
[[ $LEN =~ ^[1-9][0-9]*$ && $LEN -le 600 ]] || { echo "-l: 1..600 seconds" >&2; exit 2; }
[[ $RUNS =~ ^[1-9][0-9]*$ && $RUNS -le 50 ]] || { echo "-r: 1..50 runs" >&2; exit 2; }
for m in $MTUS; do
  [[ $m =~ ^[0-9]+$ && $m -ge 576 && $m -le 65520 ]] || { echo "-m: MTU $m not in 576..65520" >&2; exit 2; }
done

cd "$(dirname "$0")/.."
ROOT=$PWD
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git status --porcelain --untracked-files=no 2>/dev/null) ]] || REV=$REV-dirty
[[ -n $OUT ]] || OUT=perf/results/integrators-$(date -u +%Y%m%d-%H%M%S)-$REV.json
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
export UIPD=${UIPD:-$TARGET/release/uipd}

if [[ ${UIPD_BENCH_INNER:-} != 1 ]]; then
  [[ $(id -u) == 0 ]] || { echo "needs root (rootful podman, namespaces)" >&2; exit 1; }
  [[ $BUILD == 0 ]] || cargo build --release --quiet --bin uipd
  need=()
  for t in podman crun conmon slirp4netns iperf3 busybox; do command -v $t >/dev/null || need+=("$t"); done
  if ((${#need[@]})); then
    echo "missing: ${need[*]} (scripts/setup.sh installs them)" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$OUT")"
  export UIPD_BENCH_INNER=1
  exec unshare --net --mount -- "$0" -l "$LEN" -r "$RUNS" -m "$MTUS" -o "$OUT" -N
fi

# ── inside the outer namespace ──
source perf/lib.sh
ip link set lo up
TMP=$(mktemp -d /tmp/uipd-ibench.XXXXXX)
RAW=$TMP/raw.jsonl
: >"$RAW"
P() { # podman with the private storage; CONF picks the backend
  CONTAINERS_CONF=$TMP/$CONF/containers.conf timeout -k 5 "$((LEN + 60))" podman \
    --root "$TMP/root" --runroot "$TMP/run" --storage-driver vfs --tmpdir /run/uipd-pm "$@"
}
cleanup() {
  kill_tracked
  CONF=uipd P rm -f -t 0 -a >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Private mounts: nothing of podman's lands on the machine.
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
if [[ -d /var/lib/containers ]]; then
  mkdir -p "$TMP/varlib"
  mount --bind "$TMP/varlib" /var/lib/containers
else
  mount -t tmpfs tmpfs /var/lib
fi
if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified; fi

# The image: busybox, iperf3 and its libraries (at their host paths).
R=$TMP/rootfs
mkdir -p "$R"/{bin,etc,proc,sys,dev,tmp}
cp /bin/busybox "$R/bin/"
for a in $(busybox --list); do [[ $a == busybox ]] || ln -s busybox "$R/bin/$a"; done
for f in /usr/bin/iperf3 $(ldd /usr/bin/iperf3 | awk '/=> \// {print $3} /^\t\// {print $1}'); do
  mkdir -p "$R$(dirname "$f")"
  cp -L "$f" "$R$f"
done

for b in uipd slirp4netns; do
  mkdir -p "$TMP/$b/cni"
  if [[ $b == uipd ]]; then ln -s "$UIPD" "$TMP/$b/slirp4netns"; else ln -s /usr/bin/slirp4netns "$TMP/$b/slirp4netns"; fi
  cat >"$TMP/$b/containers.conf" <<EOF
[containers]
cgroups = "disabled"
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
network_cmd_path = "$TMP/$b/slirp4netns"
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "crun"
[network]
network_backend = "cni"
network_config_dir = "$TMP/$b/cni"
EOF
done
cat >"$TMP/storage.conf" <<EOF
[storage]
driver = "vfs"
runroot = "$TMP/run"
graphroot = "$TMP/root"
EOF
echo 'unqualified-search-registries = []' >"$TMP/registries.conf"
export CONTAINERS_STORAGE_CONF=$TMP/storage.conf CONTAINERS_REGISTRIES_CONF=$TMP/registries.conf
tar -C "$R" -c . | CONF=uipd P import - localhost/bbox-iperf >"$TMP/import.log" 2>&1 ||
  { cat "$TMP/import.log" >&2; exit 1; }
CONF=uipd P run --rm --network none localhost/bbox-iperf iperf3 --version >/dev/null ||
  { echo "iperf3 does not run in the image" >&2; exit 1; }

# PID of the process whose argv[0] is $1 (read-only /proc scan).
backend_pid() {
  local f a0 p
  for f in /proc/[0-9]*/cmdline; do
    a0=$(tr '\0' '\n' 2>/dev/null <"$f" | head -n 1)
    if [[ $a0 == "$1" ]]; then p=${f#/proc/}; echo "${p%/cmdline}"; return; fi
  done
}

run_one() {
  local srv cp bp="" cpu=null c i rflag=()
  [[ $TEST == IPERF3_MAERTS ]] && rflag=(-R)
  iperf3 -s -1 -B 127.0.0.1 -p 5201 >"$D/iperf-server.log" 2>&1 &
  srv=$!
  track $srv
  wait_for 5 grep -qi listening "$D/iperf-server.log" || true
  CONF=$B P run --rm --network "slirp4netns:allow_host_loopback=true,mtu=$MTU" localhost/bbox-iperf \
    iperf3 -c 10.0.2.2 -p 5201 -t "$LEN" -J "${rflag[@]}" >"$D/out" 2>"$D/err" &
  cp=$!
  track $cp
  for ((i = 0; i < 200; i++)); do
    bp=$(backend_pid "$TMP/$B/slirp4netns")
    [[ -n $bp ]] || ! kill -0 $cp 2>/dev/null && break
    sleep 0.05
  done
  while kill -0 $cp 2>/dev/null; do
    if [[ -n $bp ]]; then
      c=$(cpu_of "$bp")
      [[ $c == null ]] || cpu=$c
    fi
    sleep 0.2
  done
  local rc=0
  wait $cp || rc=$?
  echo $rc >"$D/rc"
  untrack $cp
  stop $srv
  python3 perf/report.py record "$RAW" "$B" "$MTU" "$TEST" "$RUN" "$cpu" "$D" '{}'
}

n=0
for RUN in $(seq 1 "$RUNS"); do
  for MTU in $MTUS; do
    for TEST in IPERF3_STREAM IPERF3_MAERTS; do
      for B in uipd slirp4netns; do
        n=$((n + 1))
        D=$TMP/t$n
        mkdir -p "$D"
        echo "run $RUN/$RUNS  mtu $MTU  $TEST  $B" >&2
        run_one
      done
    done
  done
done

PODMAN_VERSION=$(podman --version) python3 perf/report.py integrators "$RAW" "$OUT" --rev "$REV" \
  --len "$LEN" --runs "$RUNS" --mtus "$MTUS" --backends "uipd slirp4netns" --tests iperf3
