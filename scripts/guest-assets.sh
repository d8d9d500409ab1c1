#!/usr/bin/env bash
# Prepares what the QEMU guest tests need (tests/common/guest.rs): idempotent.
#
#   scripts/guest-assets.sh [--check]
#
# 1. As root, installs the missing Debian packages: qemu-system-x86 (TCG runs
#    the guest), cpio (without it the initramfs is silently empty),
#    busybox-static and iperf3 (the guest's userland).
# 2. Downloads Debian's cloud kernel, the exact package that
#    linux-image-cloud-amd64 depends on, with `apt-get download` and unpacks it
#    with `dpkg -x` (nothing is installed), then keeps in the cache directory:
#
#      $UIPD_GUEST_ASSETS/            (default: target/guest-assets)
#        vmlinuz                      the kernel
#        modules/NAME.ko              uncompressed, for busybox insmod
#        kernel-package               "PACKAGE VERSION" of what is there
#
#    Modules kept: the virtio-pci + virtio-net chain (in this kernel they are
#    modules, and virtio-mmio from the command line is off), in load order:
#    failover virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev
#    virtio_pci net_failover virtio_net.
#
# --check only reports (exit 0 when everything is there, 1 when not), and so
# does a run that is not root: it cannot install packages. Nothing here is
# committed; the cache lives under target/ by default.
set -euo pipefail
cd "$(dirname "$0")/.."

modules=(failover virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev
	virtio_pci net_failover virtio_net)
packages=(qemu-system-x86 cpio busybox-static iperf3)
assets=${UIPD_GUEST_ASSETS:-$PWD/target/guest-assets}
check=0
[ "${1:-}" = --check ] && check=1

say() { echo "guest-assets: $*" >&2; }

assets_ok() {
	[ -s "$assets/vmlinuz" ] && [ -s "$assets/kernel-package" ] || return 1
	local m
	for m in "${modules[@]}"; do
		[ -s "$assets/modules/$m.ko" ] || return 1
	done
}

tools_ok() {
	command -v qemu-system-x86_64 >/dev/null && command -v cpio >/dev/null &&
		command -v busybox >/dev/null && command -v iperf3 >/dev/null
}

if [ $check = 1 ] || [ "$(id -u)" != 0 ]; then
	ok=0
	tools_ok || { say "missing tools (qemu-system-x86_64, cpio, busybox or iperf3)"; ok=1; }
	assets_ok || { say "missing kernel assets in $assets"; ok=1; }
	[ $ok = 0 ] && say "ready: $assets"
	[ $ok = 0 ] || [ "$(id -u)" = 0 ] || say "not root: run scripts/guest-assets.sh as root"
	exit $ok
fi

export DEBIAN_FRONTEND=noninteractive
apt_get() { timeout 1200 apt-get -o DPkg::Lock::Timeout=600 -q "$@"; }

# 1. Packages. A busybox that is already there will do (busybox and
# busybox-static conflict); the harness copies a dynamic one with its libraries.
missing=()
for p in "${packages[@]}"; do
	if [ "$p" = busybox-static ] && command -v busybox >/dev/null; then
		continue
	fi
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	say "installing: ${missing[*]}"
	if ! apt_get install -y --no-install-recommends "${missing[@]}"; then
		apt_get update
		apt_get install -y --no-install-recommends "${missing[@]}"
	fi
fi

# 2. The kernel: the version linux-image-cloud-amd64 depends on now.
pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
	awk '$1 == "Depends:" && $2 ~ /^linux-image-/ {print $2; exit}')
if [ -z "$pkg" ]; then
	apt_get update
	pkg=$(apt-cache depends linux-image-cloud-amd64 |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-/ {print $2; exit}')
fi
[ -n "$pkg" ] || { say "cannot resolve linux-image-cloud-amd64"; exit 1; }
ver=$(apt-cache policy "$pkg" | awk '$1 == "Candidate:" {print $2}')
want="$pkg $ver"
if assets_ok && [ "$(cat "$assets/kernel-package")" = "$want" ]; then
	say "ready: $assets ($want)"
	exit 0
fi

say "fetching $want"
mkdir -p "$assets"
work=$(mktemp -d "$assets/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt_get -o APT::Sandbox::User=root download "$pkg=$ver")
deb=$(ls "$work"/*.deb)
dpkg -x "$deb" "$work/root"
vmlinuz=$(ls "$work"/root/boot/vmlinuz-* | head -n1)
moddir=$(ls -d "$work"/root/lib/modules/*/kernel | head -n1)
mkdir -p "$work/out/modules"
cp "$vmlinuz" "$work/out/vmlinuz"
for m in "${modules[@]}"; do
	f=$(find "$moddir" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" \) | head -n1)
	[ -n "$f" ] || { say "module $m not found in $pkg"; exit 1; }
	case "$f" in
	*.xz) xz -dc "$f" >"$work/out/modules/$m.ko" ;;
	*.zst) zstd -qdc "$f" >"$work/out/modules/$m.ko" ;;
	*.gz) gzip -dc "$f" >"$work/out/modules/$m.ko" ;;
	*) cp "$f" "$work/out/modules/$m.ko" ;;
	esac
done
echo "$want" >"$work/out/kernel-package"
# Replace the old set (if any) only once the new one is complete.
rm -rf "$assets/modules" "$assets/vmlinuz" "$assets/kernel-package"
mv "$work/out/modules" "$assets/modules"
mv "$work/out/vmlinuz" "$assets/vmlinuz"
mv "$work/out/kernel-package" "$assets/kernel-package"
say "ready: $assets ($want)"
