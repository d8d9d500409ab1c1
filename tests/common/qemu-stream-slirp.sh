#!/bin/bash
# A stand-in for `uipd --socket SOCK` built on QEMU's own slirp: a second,
# CPU-less QEMU listens on SOCK with `-netdev stream,server=on` and joins it
# to `-netdev user` through a hub. Used by tests/qemu_stream.rs when
# UIPD_TEST_BACKEND=slirp4netns (or slirp), to prove the stream harness on a
# known-good backend. Addresses: guest 10.0.2.15, gateway 10.0.2.2.
# Other uipd options (--stats, --resolver ...) are accepted and ignored.
set -u
sock=
while [ $# -gt 0 ]; do
	case "$1" in
	--socket) sock=$2; shift 2 ;;
	--resolver | --mtu | --cpus | --workers) shift 2 ;;
	*) shift ;;
	esac
done
[ -n "$sock" ] || { echo "qemu-stream-slirp: no --socket" >&2; exit 2; }
rm -f "$sock"
exec qemu-system-x86_64 -M none -nodefaults -display none \
	-netdev "stream,id=s,server=on,addr.type=unix,addr.path=$sock" \
	-netdev user,id=u \
	-netdev hubport,id=h1,hubid=0,netdev=s \
	-netdev hubport,id=h2,hubid=0,netdev=u
