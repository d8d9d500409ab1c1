#!/usr/bin/env bash
# Installs what uipd's tests need on a Debian 12 machine (run as root).
#
#   scripts/setup.sh            install missing packages and Rust components
#
# Packages: the end-to-end tests drive uipd with busybox applets, python3,
# iperf3 and iproute2 inside network namespaces (util-linux: unshare, nsenter;
# ethtool: the IPv6 test that turns the namespace's TSO off);
# slirp4netns is the stand-in/peer backend; tcpdump is for diagnosis;
# podman (with crun and conmon) runs containers on uipd as its slirp4netns
# (tests/integrators_podman.rs, perf/integrators-bench.sh); rootlesskit and
# uidmap for tests/integrators.rs; libvirt runs uipd as its passt
# (tests/integrators_libvirt.rs, with scripts/libvirt-passt.sh where the
# system's libvirt has passt disabled; the passt package gives the binary
# path libvirt runs, which the test bind-mounts uipd over, and the peer
# perf/bench.sh measures as pasta).
# No cargo build here: `cargo test` builds what it tests (scripts/test.sh).
set -euo pipefail

packages=(
	busybox-static iperf3 slirp4netns tcpdump python3 iproute2 util-linux
	procps coreutils ca-certificates ethtool rootlesskit uidmap
	podman crun conmon libvirt-daemon-system libvirt-clients passt
)

if [ "$(id -u)" != 0 ]; then
	echo "setup.sh: not root: skipping package installation" >&2
else
	missing=()
	# A busybox that is already there (busybox or busybox-static) will do;
	# the two packages conflict.
	if command -v busybox >/dev/null 2>&1; then
		packages=("${packages[@]/busybox-static/}")
	fi
	for p in "${packages[@]}"; do
		[ -n "$p" ] || continue
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		echo "setup.sh: installing: ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v '^lock$\|^partial$' || true)" ]; then
			timeout 600 apt-get update -q
		fi
		if ! timeout 1200 apt-get install -y -q --no-install-recommends "${missing[@]}"; then
			# Stale lists: refresh once and retry.
			timeout 600 apt-get update -q
			timeout 1200 apt-get install -y -q --no-install-recommends "${missing[@]}"
		fi
	else
		echo "setup.sh: packages present"
	fi
fi

# Rust components used by scripts/test.sh.
if command -v rustup >/dev/null 2>&1; then
	for c in rustfmt clippy; do
		if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
			timeout 600 rustup component add "$c"
		fi
	done
fi

# QEMU, cpio and the Debian guest kernel for the QEMU guest tests
# (tests/common/guest.rs); a cache under target/ (or $UIPD_GUEST_ASSETS).
if [ "$(id -u)" = 0 ]; then
	bash "$(dirname "$0")/guest-assets.sh" || echo "setup.sh: warning: guest assets not ready (QEMU tests will fail)" >&2
fi

# A libvirt with the passt backend (Debian 12's has it disabled), unpacked
# under target/ (or $UIPD_LIBVIRT_ROOT), never installed.
if [ "$(id -u)" = 0 ]; then
	bash "$(dirname "$0")/libvirt-passt.sh" || echo "setup.sh: warning: no libvirt with passt (the libvirt test will fail)" >&2
fi

# Sanity checks the tests rely on.
[ -e /dev/net/tun ] || echo "setup.sh: warning: /dev/net/tun is missing (namespace tests need TAP)" >&2
/bin/busybox --list | grep -qx udhcpc || echo "setup.sh: warning: busybox has no udhcpc applet" >&2
echo "setup.sh: done"
