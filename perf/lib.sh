# Shared helpers for perf/bench.sh, perf/affinity.sh and perf/guest-bench.sh
# (sourced, not run).
# shellcheck shell=bash

# utime+stime of PID, all threads, in seconds (from /proc/PID/stat; the
# comm field may contain spaces, so fields are counted after the last ')').
cpu_of() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo null; return; }
  stat=${stat##*) }
  # After "pid (comm) ", field 1 is the state: utime is field 12, stime 13.
  awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f\n", ($12 + $13) / hz}' <<<"$stat"
}

# Number of threads of PID whose name starts with PREFIX.
threads_named() {
  local n=0 t
  for t in /proc/"$1"/task/*/comm; do
    [[ -r $t ]] && [[ $(cat "$t" 2>/dev/null) == "$2"* ]] && n=$((n + 1))
  done
  echo "$n"
}

# wait_for SECONDS COMMAND...: poll COMMAND every 50 ms until it succeeds;
# fails after SECONDS.
wait_for() {
  local limit=$(($1 * 20)) i
  shift
  for ((i = 0; i < limit; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  return 1
}

# Background processes this script started, killed by PID on exit.
PIDS=()
track() { PIDS+=("$1"); }
untrack() { # PID: forget it (after it was reaped)
  local keep=() p
  for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
stop() { # PID...: SIGTERM, reap, forget
  local p
  for p in "$@"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    untrack "$p"
  done
}
kill_tracked() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}

# A Python that can import matplotlib, installing it if needed (needs the
# network: call this before entering the loopback-only namespace). Prints
# the interpreter, or nothing when none could be had (then no chart).
find_plot_python() {
  local py
  for py in python3 /usr/bin/python3; do
    command -v "$py" >/dev/null 2>&1 && "$py" -c 'import matplotlib' 2>/dev/null && { echo "$py"; return; }
  done
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing python3-matplotlib (apt-get)" >&2
    apt-get install -y -q python3-matplotlib >/dev/null 2>&1 || true
    /usr/bin/python3 -c 'import matplotlib' 2>/dev/null && { echo /usr/bin/python3; return; }
  fi
  echo "installing matplotlib (pip)" >&2
  python3 -m pip install -q matplotlib >/dev/null 2>&1 || true
  python3 -c 'import matplotlib' 2>/dev/null && { echo python3; return; }
  echo "warning: no matplotlib; the PNG chart will be skipped" >&2
}

# CPU seconds of PID split by thread: "TOTAL VCPU" where TOTAL is the whole
# process (utime+stime from /proc/PID/stat, exited threads included) and
# VCPU the sum over its threads named "CPU n/TCG" or "CPU n/KVM" (QEMU's
# vCPU threads). "null null" when PID is gone.
cpu_split() {
  local total vcpu=0 t c stat hz
  total=$(cpu_of "$1")
  [[ $total != null ]] || { echo "null null"; return; }
  hz=$(getconf CLK_TCK)
  for t in /proc/"$1"/task/*; do
    c=$(cat "$t/comm" 2>/dev/null) || continue
    [[ $c == "CPU "*/TCG || $c == "CPU "*/KVM ]] || continue
    stat=$(cat "$t/stat" 2>/dev/null) || continue
    stat=${stat##*) }
    vcpu=$(awk -v hz="$hz" -v acc="$vcpu" '{printf "%.2f\n", acc + ($12 + $13) / hz}' <<<"$stat")
  done
  echo "$total $vcpu"
}

# The virtio-pci + virtio-net modules of scripts/guest-assets.sh, in the
# order busybox insmod accepts (the same list as tests/common/guest.rs).
GUEST_MODULES="failover virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci net_failover virtio_net"

# guest_initramfs OUT.gz INIT ASSETS [PROGRAM...]: a busybox initramfs like
# the one tests/common/guest.rs builds: busybox and its applet links, each
# PROGRAM with the libraries ldd names (at their host paths), the virtio-net
# modules from ASSETS/modules (scripts/guest-assets.sh), INIT as /init and
# /etc/udhcpc.script (configures the lease and writes the router to
# /tmp/gw). Needs busybox, cpio, gzip.
guest_initramfs() {
  local out=$1 init=$2 assets=$3 root p f m
  shift 3
  root=$(mktemp -d /tmp/uipd-initramfs.XXXXXX)
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,lib/modules}
  for p in busybox "$@"; do
    p=$(command -v "$p") || { echo "guest_initramfs: no $p" >&2; rm -rf "$root"; return 1; }
    for f in "$p" $(ldd "$p" 2>/dev/null | awk '/=> \// {print $3} /^\t\// {print $1}'); do
      mkdir -p "$root$(dirname "$f")"
      cp -L "$f" "$root$f"
    done
  done
  for f in $(busybox --list-full); do
    [[ -e $root/$f ]] || { mkdir -p "$root/$(dirname "$f")"; ln -s "$(command -v busybox)" "$root/$f"; }
  done
  for m in $GUEST_MODULES; do cp "$assets/modules/$m.ko" "$root/lib/modules/"; done
  cat >"$root/etc/udhcpc.script" <<'SCRIPT'
#!/bin/sh
case "$1" in
deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
bound|renew)
	ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
	for r in $router; do ip route add default via "$r" dev "$interface"; echo "$r" >/tmp/gw; break; done ;;
esac
exit 0
SCRIPT
  cp "$init" "$root/init"
  chmod 755 "$root/init" "$root/etc/udhcpc.script"
  (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -1) >"$out"
  rm -rf "$root"
  [[ $(stat -c %s "$out") -gt 1048576 ]] || { echo "guest_initramfs: $out is too small (cpio?)" >&2; return 1; }
}
