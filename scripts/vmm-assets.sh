#!/usr/bin/env bash
# Builds the assets of the nested-KVM test (tests/vmm_nested.rs, TESTING.md §4).
#
#   scripts/vmm-assets.sh                 packages + Debian cloud kernel + inner initramfs
#   scripts/vmm-assets.sh UIPD_BINARY     ... and the outer initramfs around that binary
#
# Idempotent: what is already there is kept (the outer initramfs is rebuilt
# every time a binary is given, since the binary changes). Output directory:
# $UIPD_VMM_ASSETS, default target/vmm-assets/:
#
#   kernel/               the unpacked linux-image-*-cloud-amd64 package
#   vmlinuz               its bzImage (outer and inner guest kernel)
#   vmlinux, vmlinux.gz   the same kernel as an uncompressed ELF vmlinux, taken out of the
#                         bzImage by scripts/extract-vmlinux.sh (it has the PVH note)
#   inner-initramfs.gz    busybox /init: prints UIPD-INNER-INIT-OK and the size of each
#                         PCI function's config space; with inner.net on its command
#                         line it loads virtio_pci/virtio_net, runs DHCP (inner.tap too:
#                         192.168.34.2/24 set statically, the peer is 192.168.34.1),
#                         ping, 16 MiB down and up, iperf3 both ways; then poweroff -f
#   outer-initramfs.gz    busybox, kvm modules, uipd (+ its libraries), vmlinuz,
#                         vmlinux.gz, inner-initramfs.gz; /init runs uipd --kernel and
#                         prints "UIPD-EXIT=<status>", then powers off
#
# Outer guest, run by the test (QEMU TCG with an emulated AMD SVM):
#   qemu-system-x86_64 -accel tcg,thread=multi -cpu EPYC,+svm -smp 2 -m 2048 \
#     -kernel vmlinuz -initrd outer-initramfs.gz -append 'console=ttyS0 quiet panic=-1' \
#     -display none -serial file:LOG -no-reboot
# The outer /init reads uipd's extra options from the kernel command line
# (uipd.args=..., commas for spaces) so that a test can vary them;
# uipd.net=user gives the inner guest a NIC and starts servers on the outer
# guest's loopback (busybox httpd :8080, nc :9000, iperf3 :5201);
# uipd.net=tap makes TAP uipdtap0 (multi_queue, 192.168.34.1/24) for
# `-net tap --tap uipdtap0` and starts the same servers on 192.168.34.1;
# uipd.kernel=vmlinux boots the inner guest from the ELF vmlinux (gunzipped
# at that moment: most runs do not need its 50 MB) instead of vmlinuz.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${UIPD_VMM_ASSETS:-$root/target/vmm-assets}
mkdir -p "$out"
uipd_bin=${1:-}

log() { echo "vmm-assets: $*" >&2; }

# Installs the Debian packages that are missing (root only).
ensure_packages() {
	local missing=() p
	# lz4: Debian 12's kernels are lz4-compressed (for the vmlinux);
	# binutils: readelf, to check the vmlinux's PVH note.
	for p in qemu-system-x86 cpio busybox-static iperf3 iproute2 lz4 binutils; do
		if [ "$p" = busybox-static ] && command -v busybox >/dev/null 2>&1; then
			continue
		fi
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ "$(id -u)" != 0 ]; then
		log "missing packages ${missing[*]} and not root"
		return 1
	fi
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	timeout 1200 apt-get install -y -q --no-install-recommends "${missing[@]}" || {
		timeout 600 apt-get update -q
		timeout 1200 apt-get install -y -q --no-install-recommends "${missing[@]}"
	}
}

# Downloads and unpacks the Debian cloud kernel that linux-image-cloud-amd64
# depends on into DIR (no installation). Shared shape with the QEMU harness
# (scripts/guest-assets.sh): one function, so the two can be merged.
fetch_cloud_kernel() {
	local dir=$1 pkg tmp
	if compgen -G "$dir/boot/vmlinuz-*" >/dev/null; then
		return 0
	fi
	pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
		awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
	if [ -z "$pkg" ]; then
		timeout 600 apt-get update -q >&2 || true
		pkg=$(apt-cache depends linux-image-cloud-amd64 |
			awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
	fi
	[ -n "$pkg" ] || { log "cannot resolve linux-image-cloud-amd64"; return 1; }
	log "downloading $pkg"
	tmp=$(mktemp -d)
	(cd "$tmp" && timeout 900 apt-get download -q "$pkg" >&2)
	rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
	dpkg -x "$tmp"/*.deb "$dir.tmp"
	rm -rf "$tmp" "$dir"
	mv "$dir.tmp" "$dir"
}

# Writes a gzipped newc cpio of directory $1 to $2.
pack() {
	local tmp="$2.tmp"
	(cd "$1" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$tmp"
	mv "$tmp" "$2"
}

# A busybox root: the binary and a link for every applet.
busybox_root() {
	local dir=$1 bb a
	bb=$(command -v busybox)
	mkdir -p "$dir"/{bin,sbin,dev,proc,sys,tmp,lib,lib64}
	cp "$bb" "$dir/bin/busybox"
	for a in $("$bb" --list); do
		[ -e "$dir/bin/$a" ] || ln -s busybox "$dir/bin/$a"
	done
}

# Copies binary $1 to $2/bin/ with its shared libraries and the loader, at
# the paths ldd names.
copy_with_libs() {
	local bin=$1 dir=$2 lib
	cp -L "$bin" "$dir/bin/$(basename "$bin")"
	ldd "$bin" | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }' | while read -r lib; do
		mkdir -p "$dir$(dirname "$lib")"
		cp -L "$lib" "$dir$lib"
	done
}

ensure_packages
fetch_cloud_kernel "$out/kernel"
kver=$(basename "$(ls -d "$out"/kernel/lib/modules/*)")
cp -f "$out/kernel/boot/vmlinuz-$kver" "$out/vmlinuz"
# The ELF vmlinux inside it, for the PVH boot test; redone when the kernel
# package is newer.
if [ ! -s "$out/vmlinux.gz" ] || [ "$out/kernel/boot/vmlinuz-$kver" -nt "$out/vmlinux.gz" ]; then
	"$root/scripts/extract-vmlinux.sh" "$out/kernel/boot/vmlinuz-$kver" "$out/vmlinux"
	gzip -1 -c "$out/vmlinux" >"$out/vmlinux.gz.tmp"
	mv "$out/vmlinux.gz.tmp" "$out/vmlinux.gz"
fi
mods="$out/kernel/lib/modules/$kver/kernel"
for m in virt/lib/irqbypass.ko arch/x86/kvm/kvm.ko arch/x86/kvm/kvm-amd.ko; do
	[ -e "$mods/$m" ] || { log "$kver has no module $m (KVM must be modular)"; exit 1; }
done

# The inner initramfs; rebuilt when its layout version changes.
inner_version=14
if [ ! -s "$out/inner-initramfs.gz" ] || [ "$(cat "$out/inner.version" 2>/dev/null)" != $inner_version ]; then
	d=$(mktemp -d)
	busybox_root "$d"
	mkdir -p "$d/modules"
	# virtio-pci and virtio-net are modules in the Debian cloud kernel;
	# this is their load order (virtio_ring before virtio).
	for m in net/core/failover drivers/virtio/virtio_ring drivers/virtio/virtio \
		drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci_legacy_dev \
		drivers/virtio/virtio_pci drivers/net/net_failover drivers/net/virtio_net; do
		cp "$mods/$m.ko" "$d/modules/"
	done
	copy_with_libs "$(command -v iperf3)" "$d"
	cat >"$d/udhcpc.sh" <<'EOF'
#!/bin/sh
case "$1" in
bound|renew)
	ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
	[ -n "$router" ] && route add default gw "${router%% *}" dev "$interface"
	;;
esac
exit 0
EOF
	chmod +x "$d/udhcpc.sh"
	cat >"$d/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "UIPD-INNER-INIT-OK kernel $(uname -r) cpus $(grep -c ^processor /proc/cpuinfo)"
# Config space: 4096 bytes per function only with MMCONFIG (ECAM) in use.
for f in /sys/bus/pci/devices/*/config; do
	[ -e "$f" ] && echo "UIPD-INNER-PCI-CFG $(basename "$(dirname "$f")") $(wc -c <"$f")"
done
dmesg | grep -i -E "mmconfig|mcfg|ecam" | sed 's/^/UIPD-INNER-DMESG /'
peer=192.168.33.1
case "$(cat /proc/cmdline)" in
*inner.tap*) peer=192.168.34.1 ;;
esac
case "$(cat /proc/cmdline)" in
*inner.net*)
	for m in failover virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev \
		virtio_pci net_failover virtio_net; do
		echo "UIPD-INNER-STEP insmod $m"
		insmod /modules/$m.ko || echo "UIPD-INNER: insmod $m failed"
	done
	echo "UIPD-INNER-STEP modules loaded"
	i=0
	while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
	echo "UIPD-INNER-STEP eth0 $(ls /sys/class/net)"
	ip link set lo up
	# udhcpc does not bring the link up itself.
	ip link set eth0 up
	PUBSRV=
	if [ $peer = 192.168.34.1 ]; then
		# -net tap: no DHCP server on the host's TAP; a static address.
		ip addr add 192.168.34.2/24 dev eth0
	else
		udhcpc -i eth0 -n -q -t 5 -T 2 -s /udhcpc.sh >/dev/null 2>&1
		# A server behind uipd's published port 8022 (see the outer
		# init): it stores one upload and answers PUB-OK.
		printf '#!/bin/sh\ncat >/tmp/pub\necho PUB-OK\n' >/pubsrv.sh
		chmod +x /pubsrv.sh
		timeout 120 nc -l -p 8000 -e /pubsrv.sh &
		PUBSRV=$!
	fi
	echo "UIPD-INNER-ADDR $(ip -4 -o addr show eth0 | awk '{ print $4 }')"
	ping -c 3 -W 5 $peer >/dev/null && echo "UIPD-INNER-PING-OK"
	case "$(cat /proc/cmdline)" in
	*inner.mq*)
		# --vcpus 2 --queues 2: each pair's interrupts on its own CPU
		# (pair q on CPU q), then eight parallel 1 MiB downloads, which
		# uipd's flow hash spreads over both pairs (all on one: 1 in 128).
		for q in 0 1; do
			for dir in input output; do
				n=virtio0-$dir.$q
				irq=$(grep -E " $n[[:space:]]*\$" /proc/interrupts | cut -d: -f1 | tr -d ' ')
				[ -n "$irq" ] || continue
				# x86 refuses a new affinity (EBUSY) while the vector's
				# last move waits for its first interrupt on the new CPU:
				# a ping makes one; bounded retries.
				for try in 1 2 3 4 5 6 7 8; do
					echo $((1 << q)) 2>/tmp/aff.err >/proc/irq/$irq/smp_affinity && break
					echo "UIPD-INNER-AFFINITY-RETRY $n $(cat /tmp/aff.err)"
					ping -c 1 -W 1 $peer >/dev/null 2>&1
				done
			done
		done
		grep virtio /proc/interrupts | sed 's/^/UIPD-INNER-IRQ0 /'
		pids=
		for i in 1 2 3 4 5 6 7 8; do
			(wget -q -O - http://$peer:8080/blob | head -c 1048576 | wc -c >/tmp/mq$i) &
			pids="$pids $!"
		done
		wait $pids
		# Read after the downloads: without interrupt remapping x86 moves
		# an MSI vector at its next interrupt, so right after the write
		# effective_affinity may still name the old CPU.
		for q in 0 1; do
			for dir in input output; do
				n=virtio0-$dir.$q
				irq=$(grep -E " $n[[:space:]]*\$" /proc/interrupts | cut -d: -f1 | tr -d ' ')
				[ -n "$irq" ] && echo "UIPD-INNER-AFFINITY $n $(cat /proc/irq/$irq/effective_affinity)"
			done
		done
		# One short line (uipd's own output shares the console).
		echo "UIPD-INNER-MQ-GOT $(cat /tmp/mq? | grep -c '^1048576$')"
		# No published port in this run: stop its server.
		[ -n "$PUBSRV" ] && kill $PUBSRV
		PUBSRV=
		;;
	*)
		wget -q -O /tmp/blob http://$peer:8080/blob &&
			echo "UIPD-INNER-DOWN-SHA $(sha256sum /tmp/blob | cut -d' ' -f1)"
		rm -f /tmp/blob
		dd if=/dev/urandom of=/tmp/up bs=1M count=16 2>/dev/null
		echo "UIPD-INNER-UP-SHA $(sha256sum /tmp/up | cut -d' ' -f1)"
		# The status goes to the log either way: a failed upload says how.
		# No bound of its own: the outer QEMU's timeout bounds the run (a
		# 120 s bound here cut off uploads that were slow, not stuck: about
		# 1 Mbit/s under load in this nested TCG set-up).
		nc $peer 9000 </tmp/up
		rc=$?
		echo "UIPD-INNER-UP-RC $rc"
		[ $rc = 0 ] && echo "UIPD-INNER-UP-SENT"
		rm -f /tmp/up
		# iperf3's server refuses a test while it is still ending the
		# previous one ("server is busy"): retry, bounded.
		for try in 1 2 3; do
			iperf3 -c $peer -t 3 -f m >/tmp/i1 2>&1 && { echo "UIPD-INNER-IPERF-TX-OK"; break; }
			sleep 1
		done
		grep -E "sender|receiver|error" /tmp/i1
		for try in 1 2 3; do
			iperf3 -c $peer -t 3 -f m -R >/tmp/i2 2>&1 && { echo "UIPD-INNER-IPERF-RX-OK"; break; }
			sleep 1
		done
		grep -E "sender|receiver|error" /tmp/i2
		;;
	esac
	grep virtio /proc/interrupts | sed 's/^/UIPD-INNER-IRQ /'
	echo "UIPD-INNER-FEATURES $(cat /sys/class/net/eth0/device/features)"
	[ -n "$PUBSRV" ] && wait $PUBSRV
	[ -e /tmp/pub ] && echo "UIPD-INNER-PUB-GOT $(sha256sum /tmp/pub | cut -d' ' -f1)"
	;;
esac
# poweroff enters ACPI S5 (uipd's DSDT names it; without ACPI every CPU
# halts with interrupts off); uipd sees either and exits 0. reboot (with
# reboot=k) resets through the i8042.
case "$(cat /proc/cmdline)" in
*inner.reboot*) reboot -f ;;
*) poweroff -f ;;
esac
sleep 5
echo "UIPD-INNER-STILL-RUNNING"
EOF
	chmod +x "$d/init"
	pack "$d" "$out/inner-initramfs.gz"
	echo $inner_version >"$out/inner.version"
	rm -rf "$d"
fi

[ -n "$uipd_bin" ] || exit 0

d=$(mktemp -d)
busybox_root "$d"
mkdir -p "$d/modules" "$d/guest"
copy_with_libs "$(command -v iperf3)" "$d"
# iproute2's ip, as ip2, for `ip2 tuntap` (busybox's ip has no tuntap, and
# busybox's sh runs its own applet for a bare `ip` whatever /bin/ip is).
rm -f "$d/bin/ip"
copy_with_libs "$(command -v ip || echo /usr/sbin/ip)" "$d"
mv "$d/bin/ip" "$d/bin/ip2"
ln -s busybox "$d/bin/ip"
for m in virt/lib/irqbypass.ko arch/x86/kvm/kvm.ko arch/x86/kvm/kvm-amd.ko drivers/net/tun.ko; do
	cp "$mods/$m" "$d/modules/"
done
# Debug info is most of a debug build's size: leave it out of the initramfs.
if command -v strip >/dev/null 2>&1; then
	strip -o "$d/bin/uipd" "$uipd_bin"
else
	cp "$uipd_bin" "$d/bin/uipd"
fi
# The binary's shared libraries and the loader, at the paths ldd names.
ldd "$uipd_bin" | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }' | while read -r lib; do
	mkdir -p "$d$(dirname "$lib")"
	cp -L "$lib" "$d$lib"
done
cp "$out/vmlinuz" "$d/guest/vmlinuz"
cp "$out/vmlinux.gz" "$d/guest/vmlinux.gz"
cp "$out/inner-initramfs.gz" "$d/guest/initramfs.gz"
cat >"$d/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in irqbypass kvm kvm-amd tun; do
	insmod /modules/$m.ko || echo "UIPD-OUTER: insmod $m failed"
done
args=""
for w in $(cat /proc/cmdline); do
	case "$w" in
	uipd.args=*) args=$(echo "${w#uipd.args=}" | tr , ' ') ;;
	uipd.cmdline=*) icmd=$(echo "${w#uipd.cmdline=}" | tr , ' ') ;;
	uipd.net=*) net=${w#uipd.net=} ;;
	uipd.kernel=*) kname=${w#uipd.kernel=} ;;
	esac
done
kernel=/guest/${kname:-vmlinuz}
if [ ! -e "$kernel" ] && [ -e "$kernel.gz" ]; then
	gunzip -c "$kernel.gz" >"$kernel" || echo "UIPD-OUTER: gunzip $kernel.gz failed"
fi
srv=
case "${net:-none}" in
user)
	# Servers for the inner guest on this guest's own loopback: reached
	# through uipd's gateway mapping (192.168.33.1 -> 127.0.0.1).
	srv=127.0.0.1
	;;
tap)
	# -net tap --tap uipdtap0: the inner guest is on this TAP's link.
	ip2 tuntap add dev uipdtap0 mode tap vnet_hdr multi_queue || echo "UIPD-OUTER: no TAP"
	ip addr add 192.168.34.1/24 dev uipdtap0
	ip link set uipdtap0 up
	srv=192.168.34.1
	;;
esac
if [ -n "$srv" ]; then
	ip link set lo up
	mkdir -p /srv
	dd if=/dev/urandom of=/srv/blob bs=1M count=16 2>/dev/null
	echo "UIPD-OUTER-BLOB-SHA $(sha256sum /srv/blob | cut -d' ' -f1)"
	httpd -p $srv:8080 -h /srv
	# The listener's stdin never ends, so it only stops at the client's EOF.
	(sleep 100000 | nc -l -p 9000 >/srv/up) &
	iperf3 -s -B $srv -D
fi
if [ "${net:-none}" = user ]; then
	# A client of the inner guest's published port (uipd -p
	# 127.0.0.1:8022:8000): 1 MiB, retried until the guest listens.
	dd if=/dev/urandom of=/srv/pub bs=1M count=1 2>/dev/null
	echo "UIPD-OUTER-PUB-SHA $(sha256sum /srv/pub | cut -d' ' -f1)"
	(for i in $(seq 120); do
		if nc -w 3 127.0.0.1 8022 </srv/pub >/srv/pub.reply 2>/dev/null &&
			grep -q PUB-OK /srv/pub.reply; then
			echo "UIPD-OUTER-PUB-SENT try $i"
			break
		fi
		sleep 1
	done) &
fi
echo "UIPD-OUTER: running uipd $args (kernel $kernel)"
/bin/uipd --kernel "$kernel" --initrd /guest/initramfs.gz \
	--cmdline "${icmd:-console=ttyS0 quiet panic=-1}" --mem 256 -net "${net:-none}" $args &
upid=$!
# A heartbeat every 30 s, and with a NIC uipd's counters (SIGUSR1; without
# one uipd has no handler for it): when a run stalls, the log tells a dead
# outer guest (silence) from a data path that stopped moving (counters).
(while sleep 30; do
	kill -0 $upid 2>/dev/null || break
	echo "UIPD-OUTER-ALIVE $(cut -d' ' -f1 /proc/uptime)"
	[ "${net:-none}" = none ] || kill -USR1 $upid
done) &
hb=$!
wait $upid
echo "UIPD-EXIT=$?"
kill $hb 2>/dev/null
[ -e /srv/up ] && echo "UIPD-OUTER-UP-SHA $(sha256sum /srv/up | cut -d' ' -f1)"
poweroff -f
EOF
chmod +x "$d/init"
pack "$d" "$out/outer-initramfs.gz"
rm -rf "$d"
log "ready in $out"
