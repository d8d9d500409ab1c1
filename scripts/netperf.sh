#!/usr/bin/env bash
# Fetches HP netperf 2.7.0 (netperf + netserver) from Debian bookworm's
# non-free component, for perf/bench.sh's NETPERF option: idempotent.
#
#   scripts/netperf.sh [DIR]       prints the path of the netperf binary
#
# The machine's apt sources are not changed: a private sources list, lists
# directory and download directory under DIR (default: target/netperf, or
# $CARGO_TARGET_DIR/netperf) are used for one `apt-get download`, and the
# package is unpacked there with `dpkg -x` (nothing is installed). Nothing
# here is committed. Needs the Debian mirror (a package registry).
#
#   NETPERF=$(scripts/netperf.sh) perf/bench.sh -b "uipd veth" -t "TCP_RR"
#
# netserver note: in a network namespace whose only interface is `lo`,
# netserver's getaddrinfo (AI_ADDRCONFIG) finds no address and it exits;
# perf/bench.sh gives its outer namespace a veth address for that.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${1:-${CARGO_TARGET_DIR:-$PWD/target}/netperf}
bin=$dir/root/usr/bin
if [[ -x $bin/netperf && -x $bin/netserver ]]; then
	echo "$bin/netperf"
	exit 0
fi
command -v apt-get >/dev/null && command -v dpkg >/dev/null ||
	{ echo "netperf.sh: needs apt-get and dpkg (Debian)" >&2; exit 1; }
mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
echo "deb [signed-by=$keyring] http://deb.debian.org/debian bookworm non-free" >"$dir/sources.list"
opts=(-o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
	-o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" -o APT::Sandbox::User=root)
echo "netperf.sh: fetching netperf from Debian bookworm non-free into $dir" >&2
apt-get "${opts[@]}" -q update >/dev/null
(cd "$dir" && rm -f netperf_*.deb && apt-get "${opts[@]}" -q download netperf >/dev/null)
dpkg -x "$dir"/netperf_*.deb "$dir/root"
[[ -x $bin/netperf && -x $bin/netserver ]] || { echo "netperf.sh: no netperf in the package" >&2; exit 1; }
echo "$bin/netperf"
