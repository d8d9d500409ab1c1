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
#   inner-initramfs.gz    busybox /init: prints UIPD-INNER-INIT-OK, then poweroff -f
#   outer-initramfs.gz    busybox, kvm modules, uipd (+ its libraries), vmlinuz,
#                         inner-initramfs.gz; /init runs uipd --kernel and prints
#                         "UIPD-EXIT=<status>", then powers off
#
# Outer guest, run by the test (QEMU TCG with an emulated AMD SVM):
#   qemu-system-x86_64 -accel tcg,thread=multi -cpu EPYC,+svm -smp 2 -m 2048 \
#     -kernel vmlinuz -initrd outer-initramfs.gz -append 'console=ttyS0 quiet panic=-1' \
#     -display none -serial file:LOG -no-reboot
# The outer /init reads uipd's extra options from the kernel command line
# (uipd.args=..., commas for spaces) so that a test can vary them.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${UIPD_VMM_ASSETS:-$root/target/vmm-assets}
mkdir -p "$out"
uipd_bin=${1:-}

log() { echo "vmm-assets: $*" >&2; }

# Installs the Debian packages that are missing (root only).
ensure_packages() {
	local missing=() p
	for p in qemu-system-x86 cpio busybox-static; do
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

# A busybox root: the binary and its applet links.
busybox_root() {
	local dir=$1 bb
	bb=$(command -v busybox)
	mkdir -p "$dir"/{bin,sbin,dev,proc,sys,tmp,lib,lib64}
	cp "$bb" "$dir/bin/busybox"
	for a in sh mount insmod poweroff echo cat ls sleep mkdir uname; do
		ln -sf busybox "$dir/bin/$a"
	done
}

ensure_packages
fetch_cloud_kernel "$out/kernel"
kver=$(basename "$(ls -d "$out"/kernel/lib/modules/*)")
cp -f "$out/kernel/boot/vmlinuz-$kver" "$out/vmlinuz"
mods="$out/kernel/lib/modules/$kver/kernel"
for m in virt/lib/irqbypass.ko arch/x86/kvm/kvm.ko arch/x86/kvm/kvm-amd.ko; do
	[ -e "$mods/$m" ] || { log "$kver has no module $m (KVM must be modular)"; exit 1; }
done

if [ ! -s "$out/inner-initramfs.gz" ]; then
	d=$(mktemp -d)
	busybox_root "$d"
	cat >"$d/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
echo "UIPD-INNER-INIT-OK kernel $(uname -r) cpus $(grep -c ^processor /proc/cpuinfo)"
# poweroff without ACPI halts every CPU with interrupts off; uipd sees that
# and exits 0. reboot (with reboot=k) resets through the i8042.
case "$(cat /proc/cmdline)" in
*inner.reboot*) reboot -f ;;
*) poweroff -f ;;
esac
sleep 5
echo "UIPD-INNER-STILL-RUNNING"
EOF
	chmod +x "$d/init"
	ln -sf busybox "$d/bin/grep"
	ln -sf busybox "$d/bin/reboot"
	pack "$d" "$out/inner-initramfs.gz"
	rm -rf "$d"
fi

[ -n "$uipd_bin" ] || exit 0

d=$(mktemp -d)
busybox_root "$d"
ln -sf busybox "$d/bin/tr"
ln -sf busybox "$d/bin/sed"
mkdir -p "$d/modules" "$d/guest"
for m in virt/lib/irqbypass.ko arch/x86/kvm/kvm.ko arch/x86/kvm/kvm-amd.ko; do
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
cp "$out/inner-initramfs.gz" "$d/guest/initramfs.gz"
cat >"$d/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in irqbypass kvm kvm-amd; do
	insmod /modules/$m.ko || echo "UIPD-OUTER: insmod $m failed"
done
args=""
for w in $(cat /proc/cmdline); do
	case "$w" in
	uipd.args=*) args=$(echo "${w#uipd.args=}" | tr , ' ') ;;
	uipd.cmdline=*) icmd=$(echo "${w#uipd.cmdline=}" | tr , ' ') ;;
	esac
done
echo "UIPD-OUTER: running uipd $args"
/bin/uipd --kernel /guest/vmlinuz --initrd /guest/initramfs.gz \
	--cmdline "${icmd:-console=ttyS0 quiet panic=-1}" --mem 256 -net none $args
echo "UIPD-EXIT=$?"
poweroff -f
EOF
chmod +x "$d/init"
pack "$d" "$out/outer-initramfs.gz"
rm -rf "$d"
log "ready in $out"
