#!/usr/bin/env bash
# uipd's embedded VMM (`uipd --kernel ... -net user`) measured inside the
# nested harness of tests/vmm_nested.rs: an outer QEMU TCG guest
# (-cpu EPYC,+svm, 2 CPUs) runs a real KVM, and uipd boots the inner guest
# there. The inner guest runs iperf3 both ways against a server on the
# outer guest; the configurations differ only in uipd's options (vCPU and
# worker pinning, -net user vs -net tap, queues and the inner guest's
# per-queue interrupt affinity). Nested TCG limits absolute speed: compare
# configurations within one run (ratios), not with other machines.
#
#   perf/vmm-bench.sh [-l SECONDS] [-r RUNS] [-c CONFIGS] [-o OUT.json] [-N]
#
#   -l  seconds per iperf3 direction (default 5)
#   -r  runs, interleaved across configurations; medians reported (default 3)
#   -c  configurations (default: all of them that this uipd supports):
#         user-split     -net user, vCPU pinned to CPU 0, worker to CPU 1
#         user-same      -net user, vCPU and worker both on CPU 0
#         user-unpinned  -net user, one worker, nothing pinned
#         tap-split      -net tap (a TAP on the outer guest, 192.168.34.1/24)
#                        with the vCPU on CPU 0; needs -net tap for --kernel
#         mq-spread      2 vCPUs, 2 queue pairs, workers on CPUs 0-1, vCPU i
#                        on CPU i; in the guest, queue i's interrupts go to
#                        vCPU i; iperf3 -P 2
#         mq-one         the same, but every queue's interrupts go to vCPU 0
#   -o  output JSON (default perf/results/vmm-<UTC date>-<git rev>.json)
#   -N  do not run `cargo build --release --bins` first
#
# Each configuration of each run is one fresh boot of the outer guest (its
# /init and the inner guest's /init are replaced by the bench ones: an
# initramfs overlay appended to the harness's archives). QEMU TCG 7.2's
# nested SVM sometimes kills a guest under load (the inner guest
# triple-faults, or the outer kernel crashes right after a VMRUN; see
# tests/vmm_nested.rs): such a boot is retried, up to 3 tries, and the JSON
# counts the failed tries per configuration.
#
# CPU: the outer /init reads /proc/<uipd>/task/*/stat when the inner guest
# starts and ends its iperf3 runs, and reports uipd's vCPU threads (the
# guest's own work, including its kernel and iperf3) apart from the rest
# (stack workers, I/O): the rest is the backend's cost.
#
# Runs entirely inside QEMU: the outer guest has no network device, so
# nothing leaves the machine. Needs root only for scripts/vmm-assets.sh's
# packages (qemu-system-x86, busybox, cpio, iperf3, the Debian kernel).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

ALL="user-split user-same user-unpinned tap-split mq-spread mq-one"
LEN=5 RUNS=3 CONFIGS="" OUT="" BUILD=1
while getopts "l:r:c:o:Nh" o; do
  case $o in
    l) LEN=$OPTARG ;; r) RUNS=$OPTARG ;; c) CONFIGS=$OPTARG ;; o) OUT=$OPTARG ;;
    N) BUILD=0 ;; *) usage ;;
  esac
done
[[ $LEN =~ ^[1-9][0-9]*$ && $LEN -le 120 ]] || { echo "-l: 1..120 seconds" >&2; exit 2; }
[[ $RUNS =~ ^[1-9][0-9]*$ && $RUNS -le 20 ]] || { echo "-r: 1..20 runs" >&2; exit 2; }

cd "$(dirname "$0")/.."
ROOT=$PWD
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git status --porcelain --untracked-files=no 2>/dev/null) ]] || REV=$REV-dirty
[[ -n $OUT ]] || OUT=perf/results/vmm-$(date -u +%Y%m%d-%H%M%S)-$REV.json
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
UIPD=${UIPD:-$TARGET/release/uipd}
ASSETS=${UIPD_VMM_ASSETS:-$ROOT/target/vmm-assets}
[[ $BUILD == 0 ]] || cargo build --release --quiet --bins
UIPD_VMM_ASSETS=$ASSETS scripts/vmm-assets.sh "$UIPD" >&2

if "$UIPD" --help 2>/dev/null | grep -q -- '--tap'; then HAVE_TAP=1; else HAVE_TAP=0; fi
if [[ -z $CONFIGS ]]; then
  for c in $ALL; do [[ $c != tap-* || $HAVE_TAP == 1 ]] && CONFIGS+=" $c"; done
fi
for c in $CONFIGS; do
  [[ " $ALL " == *" $c "* ]] || { echo "-c: unknown configuration $c" >&2; exit 2; }
done

TMP=$(mktemp -d /tmp/uipd-vmm-bench.XXXXXX)
QPID=""
cleanup() {
  [[ -z $QPID ]] || kill "$QPID" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pack() { (cd "$1" && find . -print0 | cpio --null -o -H newc --quiet -R 0:0) | gzip -1 >"$2"; }

# The inner guest's /init: virtio-net up (DHCP, or a static address for
# -net tap), interrupt affinity per queue, iperf3 up then down.
mkdir -p "$TMP/inner"
cat >"$TMP/inner/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^bench\.$1=//p" | tail -1; }
bye() { echo "BENCH-INNER-FAIL $1"; poweroff -f; }
for m in failover virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev \
	virtio_pci net_failover virtio_net; do
	insmod /modules/$m.ko || bye "insmod $m"
done
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
ip link set lo up
ip link set eth0 up
if [ -n "$(arg ip)" ]; then
	ip addr add "$(arg ip)/24" dev eth0
else
	udhcpc -i eth0 -n -q -t 5 -T 2 -s /udhcpc.sh >/dev/null 2>&1 || bye dhcp
fi
# Queue i's interrupts (input.i and output.i) to vCPU (spread: i, one: 0).
case "$(arg irq)" in
spread | one)
	for q in 0 1; do
		mask=1
		[ "$(arg irq)" = spread ] && mask=$((1 << q))
		for d in input output; do
			n=$(grep "virtio0-$d.$q\$" /proc/interrupts | cut -d: -f1 | tr -d ' ')
			[ -n "$n" ] && echo $mask >/proc/irq/$n/smp_affinity
		done
	done
	grep virtio0 /proc/interrupts | sed 's/^/BENCH-IRQ /'
	;;
esac
srv=$(arg srv) len=$(arg len) par=$(arg par)
mbps() { grep receiver "$1" | tail -1 | awk '{ for (i = 2; i <= NF; i++) if ($i == "Mbits/sec") print $(i - 1) }'; }
ok=0
for try in 1 2 3 4 5; do iperf3 -c "$srv" -t 1 >/dev/null 2>&1 && { ok=1; break; }; sleep 1; done
[ $ok = 1 ] || bye "no iperf3 server at $srv"
sleep 1
echo "BENCH-SNAP start"
iperf3 -c "$srv" -t "$len" -P "${par:-1}" -f m >/tmp/up 2>&1 || { cat /tmp/up; bye "iperf3 up"; }
echo "BENCH-SNAP mid"
sleep 1
iperf3 -c "$srv" -t "$len" -P "${par:-1}" -f m -R >/tmp/down 2>&1 || { cat /tmp/down; bye "iperf3 down"; }
echo "BENCH-SNAP end"
grep virtio0 /proc/interrupts | sed 's/^/BENCH-IRQ-END /'
sed 's/^/BENCH-IPERF up /' /tmp/up
sed 's/^/BENCH-IPERF down /' /tmp/down
# uipd must outlive the outer /init's CPU snapshot of this line.
sleep 3
echo "BENCH-RESULT up $(mbps /tmp/up) down $(mbps /tmp/down)"
poweroff -f
EOF
cat >"$TMP/inner/udhcpc.sh" <<'EOF'
#!/bin/sh
case "$1" in
bound | renew)
	ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
	[ -n "$router" ] && route add default gw "${router%% *}" dev "$interface"
	;;
esac
exit 0
EOF
chmod 755 "$TMP/inner/init" "$TMP/inner/udhcpc.sh"
pack "$TMP/inner" "$TMP/inner-overlay.gz"

# The outer guest's /init: a server for the inner guest, then uipd, with its
# console piped through a loop that snapshots uipd's threads' CPU at the
# inner guest's BENCH-SNAP lines.
mkdir -p "$TMP/outer/guest"
cat "$ASSETS/inner-initramfs.gz" "$TMP/inner-overlay.gz" >"$TMP/outer/guest/bench.gz"
cat >"$TMP/outer/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in irqbypass kvm kvm-amd tun; do insmod /modules/$m.ko || echo "BENCH-OUTER-FAIL insmod $m"; done
arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^bench\.$1=//p" | tail -1 | tr , ' '; }
ip link set lo up
net=$(arg net)
if [ "$net" = tap ]; then
	# busybox's ip has no tuntap: iproute2's, as ip2 (scripts/vmm-assets.sh).
	ip2 tuntap add dev uipdtap0 mode tap vnet_hdr || echo "BENCH-OUTER-FAIL no TAP"
	ip addr add 192.168.34.1/24 dev uipdtap0
	ip link set uipdtap0 up
	srv=192.168.34.1 icmd="bench.ip=192.168.34.2"
	args="-net tap --tap uipdtap0"
else
	srv=127.0.0.1 icmd=""
	args="-net user"
fi
iperf3 -s -B $srv -D
[ "$net" = tap ] || srv=192.168.33.1
snap() {
	for t in /proc/$1/task/*; do
		echo "BENCH-CPU $2 $(cat $t/comm) $(sed 's/.*) //' $t/stat | awk '{ print $12 + $13 }')"
	done
}
mkfifo /tmp/con
/bin/uipd --kernel /guest/vmlinuz --initrd /guest/bench.gz --mem 256 $args $(arg args) \
	--cmdline "console=ttyS0 quiet panic=-1 bench.srv=$srv bench.len=$(arg len) $icmd $(arg icmd)" \
	>/tmp/con 2>&1 &
upid=$!
while IFS= read -r line; do
	echo "$line"
	case "$line" in
	BENCH-SNAP*) snap $upid "$(echo "$line" | awk '{ print $2 }' | tr -d '\r')" ;;
	esac
done </tmp/con
wait $upid
echo "UIPD-EXIT=$?"
poweroff -f
EOF
chmod 755 "$TMP/outer/init"
pack "$TMP/outer" "$TMP/outer-overlay.gz"
cat "$ASSETS/outer-initramfs.gz" "$TMP/outer-overlay.gz" >"$TMP/outer.gz"

params_of() { # CONFIG: the outer kernel's bench.* parameters
  case $1 in
    user-split) echo "bench.args=--vcpu-cpus,0,--cpus,1" ;;
    user-same) echo "bench.args=--vcpu-cpus,0,--cpus,0" ;;
    user-unpinned) echo "bench.args=--workers,1" ;;
    tap-split) echo "bench.net=tap bench.args=--vcpu-cpus,0" ;;
    mq-spread) echo "bench.args=--vcpus,2,--queues,2,--cpus,0-1,--vcpu-cpus,0-1 bench.icmd=bench.irq=spread,bench.par=2" ;;
    mq-one) echo "bench.args=--vcpus,2,--queues,2,--cpus,0-1,--vcpu-cpus,0-1 bench.icmd=bench.irq=one,bench.par=2" ;;
  esac
}

RAW=$TMP/raw.jsonl
: >"$RAW"
for RUN in $(seq 1 "$RUNS"); do
  for C in $CONFIGS; do
    for TRY in 1 2 3; do
      log=$TMP/$C.$RUN.$TRY.log
      echo "run $RUN/$RUNS  $C  try $TRY" >&2
      t0=$(date +%s.%N)
      timeout -k 5 $((4 * LEN + 180)) qemu-system-x86_64 -accel tcg,thread=multi -cpu EPYC,+svm \
        -smp 2 -m 2048 -kernel "$ASSETS/vmlinuz" -initrd "$TMP/outer.gz" \
        -append "console=ttyS0 quiet panic=-1 bench.len=$LEN $(params_of "$C")" \
        -display none -monitor none -no-reboot -nodefaults -serial "file:$log" </dev/null 2>>"$TMP/qemu.err" &
      QPID=$!
      rc=0
      wait $QPID || rc=$?
      QPID=""
      t1=$(date +%s.%N)
      if python3 perf/vmm_report.py record "$RAW" "$C" "$RUN" "$TRY" "$rc" "$log" "$t0" "$t1"; then
        break
      fi
    done
  done
done

mkdir -p "$(dirname "$OUT")"
python3 perf/vmm_report.py summary "$RAW" "$OUT" --rev "$REV" --len "$LEN" --runs "$RUNS" \
  --configs "$CONFIGS" --kernel "$(basename "$(ls "$ASSETS"/kernel/boot/vmlinuz-*)")"
