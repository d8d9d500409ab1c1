#!/bin/bash
# A stand-in for `uipd [OPTIONS] -- COMMAND [ARGS...]` built on slirp4netns.
#
# Used by the end-to-end tests when UIPD_TEST_BACKEND=slirp4netns, to prove the
# harness, the test servers and the guest-side commands on a known-good backend.
# slirp4netns numbers: guest 10.0.2.100 (DHCP: 10.0.2.15), gateway/host loopback
# 10.0.2.2, DNS 10.0.2.3 (forwarded to the resolvers of the caller's
# /etc/resolv.conf). --resolver and --stats are accepted and ignored.
set -u
mtu=65520
ifname=eth0
netns=
configure=1
hostlo=1
while [ $# -gt 0 ]; do
	case "$1" in
	--mtu) mtu=$2; shift 2 ;;
	--ifname) ifname=$2; shift 2 ;;
	--no-config-net) configure=0; shift ;;
	--no-host-loopback) hostlo=0; shift ;;
	--resolver) shift 2 ;;
	--stats) shift ;;
	--netns) netns=$2; shift 2 ;;
	--) shift; break ;;
	*) echo "slirp-uipd: unsupported option: $1" >&2; exit 2 ;;
	esac
done
if [ -n "${netns:-}" ]; then
	# Attach mode: serve an existing namespace (a PID) until SIGINT/SIGTERM.
	opts=(--mtu="$mtu")
	[ "$configure" = 1 ] && opts+=(--configure)
	[ "$hostlo" = 0 ] && opts+=(--disable-host-loopback)
	exec slirp4netns "${opts[@]}" "$netns" "$ifname"
fi
[ $# -gt 0 ] || { echo "slirp-uipd: no command" >&2; exit 2; }

sync=$(mktemp -d /tmp/slirp-uipd.XXXXXX)
echo "nameserver 10.0.2.3" >"$sync/resolv.conf"

# The guest: a new net + mount namespace that waits for slirp4netns to be ready.
unshare --net --mount -- bash -c '
	s=$1 ifname=$2 configure=$3; shift 3
	for _ in $(seq 200); do [ -s "$s/ready" ] && break; sleep 0.05; done
	[ -s "$s/ready" ] || { echo "slirp-uipd: slirp4netns not ready" >&2; exit 125; }
	mount --bind "$s/resolv.conf" /etc/resolv.conf || exit 125
	ip link set lo up
	[ "$configure" = 1 ] || ip link set dev "$ifname" up || exit 125
	exec "$@"' slirp-guest "$sync" "$ifname" "$configure" "$@" &
child=$!

self_ns=$(readlink /proc/self/ns/net)
for _ in $(seq 100); do
	[ "$(readlink "/proc/$child/ns/net" 2>/dev/null)" != "$self_ns" ] && break
	sleep 0.05
done

opts=(--mtu="$mtu" --ready-fd=3)
[ "$configure" = 1 ] && opts+=(--configure)
[ "$hostlo" = 0 ] && opts+=(--disable-host-loopback)
slirp4netns "${opts[@]}" "$child" "$ifname" 3>"$sync/ready" >"$sync/slirp.log" 2>&1 &
slirp=$!

wait "$child"
rc=$?
kill "$slirp" 2>/dev/null
wait "$slirp" 2>/dev/null
sed 's/^/slirp4netns: /' "$sync/slirp.log" >&2
rm -rf "$sync"
exit "$rc"
