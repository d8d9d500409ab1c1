#!/usr/bin/env python3
"""Relay frames between a TAP device and a uipd --socket.

Creates TAP device --ifname in the current network namespace, connects to
the UNIX socket --socket, and relays Ethernet frames both ways in QEMU's
stream framing (a 4-byte big-endian length before each frame). The kernel
stack of the namespace thus becomes a real peer of uipd's stream frontend,
as a VM behind QEMU's `-netdev stream` would be.

Exits when uipd closes the connection, when --timeout passes, or on
SIGTERM. With --hold-secs it keeps the connection for that long after
--ready and then closes it (a VMM that goes away).
"""

import argparse
import fcntl
import os
import select
import signal
import socket
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--ifname", default="eth0")
    p.add_argument("--ready")
    p.add_argument("--timeout", type=float, default=120)
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    deadline = time.monotonic() + args.timeout

    tap = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tap, TUNSETIFF, struct.pack("16sH", args.ifname.encode(), IFF_TAP | IFF_NO_PI))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    for _ in range(100):
        try:
            sock.connect(args.socket)
            break
        except OSError:
            time.sleep(0.1)
    else:
        print("relay: cannot connect to", args.socket, file=sys.stderr)
        return 2
    if args.ready:
        open(args.ready, "w").close()

    pending = bytearray()
    frames_in = frames_out = 0
    while time.monotonic() < deadline:
        r, _, _ = select.select([tap, sock], [], [], 0.5)
        if tap in r:
            frame = os.read(tap, 70000)
            sock.sendall(struct.pack(">I", len(frame)) + frame)
            frames_out += 1
        if sock in r:
            data = sock.recv(1 << 20)
            if not data:
                print(f"relay: uipd closed the connection (to tap {frames_in}, from tap {frames_out})", file=sys.stderr)
                return 0
            pending += data
            while len(pending) >= 4:
                (n,) = struct.unpack(">I", pending[:4])
                if len(pending) < 4 + n:
                    break
                os.write(tap, bytes(pending[4 : 4 + n]))
                del pending[: 4 + n]
                frames_in += 1
    print("relay: timeout", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
