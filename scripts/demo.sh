#!/usr/bin/env bash
# uipd's main job, in one command: a command in a new network namespace
# reaches the host through uipd. Builds uipd, starts a uipd-perf server on
# the host's 127.0.0.1, then runs, inside the namespace uipd creates, a look
# at the interface uipd configured and TCP in both directions through the
# gateway address 192.168.33.1 (which uipd maps to the host's loopback).
# Traffic goes only to the host's loopback.
#
#   scripts/demo.sh [uipd options]      e.g. scripts/demo.sh --mtu 1500 --stats
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bins
bin=${CARGO_TARGET_DIR:-target}/release
port=12865
"$bin/uipd-perf" -s -B 127.0.0.1 -p "$port" 2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do
	(exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
	sleep 0.1
done
"$bin/uipd" "$@" -- sh -c "
	echo '== inside the namespace: eth0, route, resolver'
	ip -br addr show eth0; ip route; grep nameserver /etc/resolv.conf
	echo '== TCP namespace -> host (192.168.33.1 is the host loopback)'
	timeout 20 '$bin/uipd-perf' -H 192.168.33.1 -p $port -t TCP_STREAM -l 2
	echo '== TCP host -> namespace'
	timeout 20 '$bin/uipd-perf' -H 192.168.33.1 -p $port -t TCP_MAERTS -l 2
"
