#!/usr/bin/env bash
# One QEMU TCG guest, several network backends, side by side in one run:
# uipd as a vhost-user backend (offloads on, and --no-offload), uipd behind
# QEMU's stream netdev, and QEMU's built-in `-netdev user` (libslirp).
# The guest runs iperf3 guest -> host and host -> guest (-R) against
# `iperf3 -s` on the host's 127.0.0.1. TCG limits the guest, so what counts
# is the ratio between backends and the CPU each one costs, not absolute
# speed.
#
#   perf/guest-bench.sh [-l SECONDS] [-r RUNS] [-b BACKENDS] [-o OUT.json] [-N]
#
#   -l  seconds per iperf3 direction (default 10)
#   -r  runs, interleaved across backends; medians reported (default 3)
#   -b  backends (default "vhost vhost-nooffload stream slirp"):
#         vhost            uipd --vhost-user SOCK --workers 1
#         vhost-nooffload  the same with --no-offload (no CSUM/TSO features)
#         stream           uipd --socket SOCK (QEMU -netdev stream; bare
#                          frames, so no offloads; uipd's default workers)
#         slirp            QEMU -netdev user (libslirp inside QEMU)
#   -o  output JSON (default perf/results/guest-<UTC date>-<git rev>.json;
#       the chart goes next to it, .png, when matplotlib can be had)
#   -N  do not run `cargo build --release --bins` first
#
# Every backend boots the same guest: same kernel (scripts/guest-assets.sh),
# same busybox + iperf3 initramfs (built once per run, perf/lib.sh
# guest_initramfs), same QEMU machine: -accel tcg,thread=multi -smp 2
# -m 512M in a shared memfd (vhost-user needs it; the others get it too),
# virtio-net-pci with vectors=0 (INTx: QEMU 7.2 crashes with MSI-X + vhost
# under TCG, so every backend gets INTx). Each run is a fresh boot, a fresh
# backend and a fresh iperf3 server.
#
# Everything runs inside an outer network namespace that has only `lo`
# (unshare --net --mount): uipd, QEMU and iperf3 -s live there, and nothing
# can leave the machine. QEMU runs under `timeout`; uipd gets SIGINT when
# QEMU is gone and SIGKILL a few seconds later. Needs root.
#
# CPU: (QEMU runs with -name ...,debug-threads=on so that its vCPU threads
# are named) the guest prints markers on its serial console before and after
# each iperf3 direction; the script polls the console file (every 50 ms)
# and snapshots, at each marker, utime+stime of: QEMU's vCPU threads
# ("CPU n/TCG": the guest's own kernel and iperf3, emulated), QEMU's other
# threads (main loop: device emulation, and for slirp libslirp itself; for
# stream the socket I/O; for vhost-user the kick/interrupt relay), uipd
# (all threads) and the host's iperf3 server. See perf/README.md.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

LEN=10 RUNS=3 BACKENDS="vhost vhost-nooffload stream slirp" OUT="" BUILD=1
while getopts "l:r:b:o:Nh" o; do
  case $o in
    l) LEN=$OPTARG ;; r) RUNS=$OPTARG ;; b) BACKENDS=$OPTARG ;; o) OUT=$OPTARG ;;
    N) BUILD=0 ;; *) usage ;;
  esac
done
[[ $LEN =~ ^[1-9][0-9]*$ && $LEN -le 300 ]] || { echo "-l: 1..300 seconds" >&2; exit 2; }
[[ $RUNS =~ ^[1-9][0-9]*$ && $RUNS -le 20 ]] || { echo "-r: 1..20 runs" >&2; exit 2; }
for b in $BACKENDS; do
  case $b in vhost | vhost-nooffload | stream | slirp) ;; *) echo "-b: unknown backend $b" >&2; exit 2 ;; esac
done

cd "$(dirname "$0")/.."
ROOT=$PWD
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git status --porcelain --untracked-files=no 2>/dev/null) ]] || REV=$REV-dirty
[[ -n $OUT ]] || OUT=perf/results/guest-$(date -u +%Y%m%d-%H%M%S)-$REV.json
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
export UIPD=${UIPD:-$TARGET/release/uipd}
export UIPD_GUEST_ASSETS=${UIPD_GUEST_ASSETS:-$ROOT/target/guest-assets}
SMP=2 MEM=512

if [[ ${UIPD_BENCH_INNER:-} != 1 ]]; then
  [[ $(id -u) == 0 ]] || { echo "needs root (network namespaces, packages)" >&2; exit 1; }
  [[ $BUILD == 0 ]] || cargo build --release --quiet --bins
  # QEMU, busybox, cpio, iperf3 and the kernel, while the network is reachable.
  scripts/guest-assets.sh
  source perf/lib.sh
  PLOT_PY=$(find_plot_python)
  export PLOT_PY UIPD_BENCH_INNER=1
  mkdir -p "$(dirname "$OUT")"
  exec unshare --net --mount -- "$0" -l "$LEN" -r "$RUNS" -b "$BACKENDS" -o "$OUT" -N
fi

# ── inside the outer namespace ──
source perf/lib.sh
ip link set lo up
TMP=$(mktemp -d /tmp/uipd-guest-bench.XXXXXX)
RAW=$TMP/raw.jsonl
: >"$RAW"
cleanup() {
  kill_tracked
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The guest: load virtio-net, DHCP, then iperf3 both ways against the
# router it was given (uipd: 192.168.33.1, slirp: 10.0.2.2; both map to the
# host's 127.0.0.1). MARK lines time the CPU snapshots; each iperf3 JSON is
# printed after its window closes, between BEGIN/END lines.
cat >"$TMP/init" <<EOF
#!/bin/sh
mount -t devtmpfs dev /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
mkdir -p /tmp /run /etc
echo 1 >/proc/sys/kernel/printk
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/tmp
bye() { echo "MARK done \$1"; sleep 1; poweroff -f; sleep 5; echo o >/proc/sysrq-trigger; }
for m in $GUEST_MODULES; do insmod /lib/modules/\$m.ko || bye "insmod-\$m"; done
i=0
while [ ! -e /sys/class/net/eth0 ] && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i + 1)); done
ip link set lo up
udhcpc -i eth0 -f -q -n -t 10 -T 1 -s /etc/udhcpc.script >/dev/null || bye dhcp
gw=\$(cat /tmp/gw)
echo "MARK ready gw=\$gw"
for dir in up down; do
	flag=; [ \$dir = down ] && flag=-R
	echo "MARK \${dir}_start"
	timeout $((LEN + 30)) iperf3 -c "\$gw" -p 5201 -t $LEN -J \$flag >/tmp/\$dir.json 2>&1
	echo "MARK \${dir}_end rc=\$?"
	echo "BEGIN \$dir"; cat /tmp/\$dir.json; echo "END \$dir"
	sleep 1
done
bye ok
EOF
INITRD=$TMP/initramfs.gz
guest_initramfs "$INITRD" "$TMP/init" "$UIPD_GUEST_ASSETS" iperf3
echo "initramfs: $(stat -c %s "$INITRD") bytes" >&2

# QEMU's bound: boot (~10 s, more on a loaded machine) + two directions.
QEMU_SECS=$((2 * LEN + 150))
MARKS="ready up_start up_end down_start down_end done"

# snap NAME: CPU of QEMU (total, vCPU threads), uipd and the iperf3 server.
snap() {
  local q u s
  q=$(cpu_split "$QPID")
  u=$([[ -n $UPID ]] && cpu_of "$UPID" || echo null)
  s=$(cpu_of "$SRV")
  echo "$q $u $s $(date +%s.%N)" >"$D/cpu.$1"
}

# watch: until QEMU exits, snapshot at each MARK the guest prints, in order.
watch_marks() {
  local left=($MARKS)
  while ((${#left[@]})) && kill -0 "$QT" 2>/dev/null; do
    if grep -q "^MARK ${left[0]}" "$D/guest.out" 2>/dev/null; then
      snap "${left[0]}"
      left=("${left[@]:1}")
      continue
    fi
    sleep 0.05
  done
}

run_backend() { # BACKEND
  local b=$1 sock qargs=() uargs=() rc=0 i
  UPID="" QPID=""
  # The host's iperf3 server; started again (up to 3 tries) if it is not
  # listening after 5 s or has died (seen once: the guest got "refused").
  for ((i = 1; i <= 3; i++)); do
    iperf3 -s -B 127.0.0.1 -p 5201 >>"$D/iperf-server.log" 2>&1 &
    SRV=$!
    track $SRV
    wait_for 5 grep -qi listening "$D/iperf-server.log" && kill -0 $SRV 2>/dev/null && break
    echo "iperf3 -s try $i did not come up" >>"$D/iperf-server.log"
    stop $SRV
    sleep 1
  done
  qargs=(-accel tcg,thread=multi -nodefaults -smp "$SMP" -m "${MEM}M"
    -object "memory-backend-memfd,id=mem,size=${MEM}M,share=on" -machine memory-backend=mem
    -kernel "$UIPD_GUEST_ASSETS/vmlinuz" -initrd "$INITRD"
    -append "console=ttyS0 quiet panic=-1" -display none
    -serial "file:$D/guest.out" -no-reboot -pidfile "$D/qemu.pid"
    -name guest-bench,debug-threads=on)
  case $b in
    vhost | vhost-nooffload)
      sock=$D/vu.sock
      uargs=(--vhost-user "$sock" --workers 1 --stats)
      [[ $b == vhost ]] || uargs+=(--no-offload)
      qargs+=(-chardev "socket,id=c0,path=$sock" -netdev vhost-user,id=n0,chardev=c0
        -device virtio-net-pci,netdev=n0,romfile=,vectors=0) ;;
    stream)
      sock=$D/stream.sock
      uargs=(--socket "$sock" --stats)
      qargs+=(-netdev "stream,id=n0,server=off,addr.type=unix,addr.path=$sock"
        -device virtio-net-pci,netdev=n0,romfile=,vectors=0) ;;
    slirp)
      qargs+=(-netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile=,vectors=0) ;;
  esac
  echo "uipd ${uargs[*]}" >"$D/cmdline"
  echo "qemu-system-x86_64 ${qargs[*]}" >>"$D/cmdline"
  if ((${#uargs[@]})); then
    RUST_LOG=uipd=info "$UIPD" "${uargs[@]}" </dev/null >"$D/uipd.out" 2>"$D/uipd.err" &
    UPID=$!
    track $UPID
    wait_for 10 test -S "$sock" || echo "uipd did not create $sock" >>"$D/uipd.err"
  fi
  timeout -k 5 "$QEMU_SECS" qemu-system-x86_64 "${qargs[@]}" </dev/null >"$D/qemu.log" 2>&1 &
  QT=$!
  track $QT
  wait_for 10 test -s "$D/qemu.pid" && QPID=$(cat "$D/qemu.pid")
  if [[ -n $QPID ]]; then
    watch_marks
  else
    echo "no QEMU pid file" >>"$D/qemu.log"
  fi
  wait $QT 2>/dev/null || rc=$?
  untrack $QT
  echo "$rc" >"$D/qemu.rc"
  if [[ -n $UPID ]]; then
    echo "$(cpu_of "$UPID")" >"$D/uipd.cpu"
    kill -INT "$UPID" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$UPID" 2>/dev/null || break; sleep 0.1; done
    stop "$UPID"
  fi
  stop $SRV
}

n=0
for RUN in $(seq 1 "$RUNS"); do
  for B in $BACKENDS; do
    n=$((n + 1))
    D=$TMP/r$n
    mkdir -p "$D"
    echo "run $RUN/$RUNS  $B" >&2
    run_backend "$B"
    python3 perf/report.py guest-record "$RAW" "$B" "$RUN" "$D"
  done
done

python3 perf/report.py guest "$RAW" "$OUT" --rev "$REV" --len "$LEN" --runs "$RUNS" \
  --backends "$BACKENDS" --note "smp=$SMP mem=${MEM}M kernel=$(cat "$UIPD_GUEST_ASSETS/kernel-package")"
if [[ -n ${PLOT_PY:-} ]]; then
  "$PLOT_PY" perf/report.py chart "$OUT" "${OUT%.json}.png" || echo "warning: chart failed" >&2
fi
