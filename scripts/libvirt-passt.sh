#!/usr/bin/env bash
# Unpacks a libvirt that has the passt backend, for tests/integrators_libvirt.rs.
#
#   scripts/libvirt-passt.sh        (root; idempotent)
#
# Debian 12's libvirt 9.0 is built with passt switched off (Debian patch
# "Disable-passt-support": <backend type='passt'/> is an invalid value). This
# script downloads libvirt 11.3 from bookworm-backports with apt-get download,
# using a private source list and list directory (the machine's apt setup is
# not changed), and unpacks it with dpkg -x (nothing is installed) into
# $UIPD_LIBVIRT_ROOT (default: target/libvirt-root in the source tree). The
# test bind-mounts it over the system's libvirt inside its own mount
# namespace only. Nothing to do when the system's libvirt has passt.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
root=${UIPD_LIBVIRT_ROOT:-$here/target/libvirt-root}
version=11.3.0-2~bpo12+1
drv=/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so

if [ -x "$root/usr/sbin/libvirtd" ]; then
	echo "libvirt-passt.sh: $root is ready"
	exit 0
fi
if [ ! -e "$drv" ]; then
	echo "libvirt-passt.sh: no system libvirt (install libvirt-daemon-system first)" >&2
	exit 1
fi
if ! zcat /usr/share/doc/libvirt0/changelog.Debian.gz 2>/dev/null | grep -q 'Disable passt support'; then
	echo "libvirt-passt.sh: the system libvirt has passt: nothing to do"
	exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
# The machine's own Debian archive (the first non-security URI in its apt
# sources), for bookworm-backports.
uri=$( (grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources || true
	grep -hs '^deb ' /etc/apt/sources.list || true) | awk '{print $2}' | grep -v security | head -n 1 || true)
if [ -z "$uri" ]; then
	echo "libvirt-passt.sh: no Debian archive in the apt sources" >&2
	exit 1
fi
echo "deb $uri bookworm-backports main" >"$work/sources.list"
apt_opts=(
	-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/nonexistent
	-o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o APT::Sandbox::User=root
)
timeout 600 apt-get -q "${apt_opts[@]}" update
cd "$work/cache/archives"
timeout 600 apt-get -q "${apt_opts[@]}" download \
	"libvirt0=$version" "libvirt-common=$version" "libvirt-daemon=$version" \
	"libvirt-daemon-common=$version" "libvirt-daemon-driver-qemu=$version" \
	"libvirt-daemon-log=$version" "libvirt-clients=$version"
rm -rf "$root.tmp"
mkdir -p "$root.tmp"
for f in ./*.deb; do
	dpkg -x "$f" "$root.tmp"
done
rm -rf "$root"
mv "$root.tmp" "$root"
echo "libvirt-passt.sh: libvirt $version unpacked in $root"
