#!/usr/bin/env python3
"""Scale and memory-budget helpers for tests/scale.rs (asyncio, one process).

Host side (outer namespace, 127.0.0.1):
  echo-server PORT          TCP and UDP echo on PORT
  slow-server PORT RELEASE  accepts, reads nothing until the file RELEASE
                            exists, then reads each connection to EOF and
                            answers "<bytes> <sha256>\\n"
Guest side (inside uipd's namespace):
  echo-clients HOST PORT N UIPD_PID
                            N TCP connections open at once, each echoes a
                            unique message; then N UDP flows, each echoes one
                            datagram (retried); prints RESULT lines
  slow-clients HOST PORT N BYTES RELEASE UIPD_PID
                            N connections each write BYTES (content seeded by
                            the connection's index) to a slow-server; RSS of
                            uipd while the server does not read, then RELEASE,
                            then checks every connection's count and hash

Every wait is bounded; each command exits by itself (--timeout).
"""

import asyncio
import hashlib
import os
import resource
import socket
import sys
import time

LIMIT = 60


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss(pid):
    """(VmRSS, VmHWM) of pid in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    return out.get("VmRSS", 0), out.get("VmHWM", 0)


def block(i, n):
    """Deterministic content of connection i: n bytes."""
    seed = hashlib.sha256(b"uipd-scale-%d" % i).digest()
    reps = n // len(seed) + 1
    return (seed * reps)[:n]


# ───────────────────────────── host side ─────────────────────────────


async def echo_server(port, secs):
    async def handle(r, w):
        try:
            while True:
                d = await r.read(65536)
                if not d:
                    break
                w.write(d)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    class Udp(asyncio.DatagramProtocol):
        def connection_made(self, t):
            self.t = t

        def datagram_received(self, data, addr):
            self.t.sendto(data, addr)

    loop = asyncio.get_running_loop()
    srv = await asyncio.start_server(handle, "127.0.0.1", port, backlog=8192)
    usock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    usock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    usock.bind(("127.0.0.1", port))
    await loop.create_datagram_endpoint(Udp, sock=usock)
    async with srv:
        await asyncio.sleep(secs)


async def slow_server(port, release, secs):
    async def handle(r, w):
        try:
            # Bounded by the whole process's timeout.
            while not os.path.exists(release):
                await asyncio.sleep(0.1)
            h = hashlib.sha256()
            n = 0
            while True:
                d = await r.read(1 << 18)
                if not d:
                    break
                h.update(d)
                n += len(d)
            w.write(b"%d %s\n" % (n, h.hexdigest().encode()))
            await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", port, backlog=8192)
    async with srv:
        await asyncio.sleep(secs)


# ───────────────────────────── guest side ─────────────────────────────


async def bounded_gather(coros, limit):
    sem = asyncio.Semaphore(limit)

    async def one(c):
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)


async def echo_clients(host, port, n, pid):
    t0 = time.monotonic()
    base = rss(pid)
    print(f"RESULT idle rss_kb={base[0]} hwm_kb={base[1]}", flush=True)

    async def connect(i):
        for attempt in range(5):
            try:
                return await asyncio.wait_for(asyncio.open_connection(host, port), 15)
            except (OSError, asyncio.TimeoutError):
                if attempt == 4:
                    raise
                await asyncio.sleep(0.5)

    conns = await bounded_gather([connect(i) for i in range(n)], 1000)
    failed = [c for c in conns if isinstance(c, BaseException)]
    if failed:
        print(f"RESULT tcp_connect ok=0 failed={len(failed)} first={failed[0]!r}")
        return 1
    t_conn = time.monotonic() - t0

    async def echo(i, rw):
        r, w = rw
        msg = b"conn %06d %s\n" % (i, hashlib.sha256(b"%d" % i).hexdigest().encode())
        w.write(msg)
        await w.drain()
        got = await asyncio.wait_for(r.readexactly(len(msg)), 20)
        return got == msg

    oks = await bounded_gather([echo(i, c) for i, c in enumerate(conns)], n)
    tcp_ok = sum(1 for o in oks if o is True)
    live = rss(pid)
    print(
        f"RESULT tcp conns={n} ok={tcp_ok} connect_s={t_conn:.1f} "
        f"s={time.monotonic() - t0:.1f} rss_kb={live[0]} hwm_kb={live[1]}",
        flush=True,
    )

    # Close the TCP connections first (a process may be limited to 20,000
    # fds here) and wait, bounded, until uipd has closed its host sockets.
    for _, w in conns:
        w.close()
    for _ in range(200):
        if len(os.listdir(f"/proc/{pid}/fd")) < 1000:
            break
        await asyncio.sleep(0.1)
    print(f"RESULT tcp_closed uipd_fds={len(os.listdir(f'/proc/{pid}/fd'))}", flush=True)

    # UDP: N flows (one socket each), every one echoes a datagram.
    t1 = time.monotonic()
    loop = asyncio.get_running_loop()
    socks = []
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect((host, port))
        socks.append(s)
    pending = set(range(n))
    for attempt in range(6):
        if not pending:
            break
        for i in sorted(pending):
            try:
                socks[i].send(b"udp %06d" % i)
            except BlockingIOError:
                pass
            if i % 500 == 499:
                await asyncio.sleep(0.005)
        deadline = time.monotonic() + 3
        while pending and time.monotonic() < deadline:
            progress = False
            for i in list(pending):
                try:
                    d = socks[i].recv(64)
                except (BlockingIOError, ConnectionRefusedError):
                    continue
                if d == b"udp %06d" % i:
                    pending.discard(i)
                    progress = True
            if not progress:
                await asyncio.sleep(0.05)
    udp_ok = n - len(pending)
    both = rss(pid)
    print(
        f"RESULT udp flows={n} ok={udp_ok} s={time.monotonic() - t1:.1f} "
        f"rss_kb={both[0]} hwm_kb={both[1]}",
        flush=True,
    )
    for s in socks:
        s.close()
    print(f"RESULT done total_s={time.monotonic() - t0:.1f}", flush=True)
    return 0 if (tcp_ok == n and udp_ok == n) else 1


async def slow_clients(host, port, n, nbytes, release, pid):
    t0 = time.monotonic()
    base = rss(pid)
    print(f"RESULT idle rss_kb={base[0]} hwm_kb={base[1]}", flush=True)
    loop = asyncio.get_running_loop()
    socks = []
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        socks.append(s)

    async def connect(s):
        await asyncio.wait_for(loop.sock_connect(s, (host, port)), 20)

    res = await bounded_gather([connect(s) for s in socks], 500)
    bad = [r for r in res if isinstance(r, BaseException)]
    if bad:
        print(f"RESULT connect failed={len(bad)} first={bad[0]!r}")
        return 1
    data = [block(i, nbytes) for i in range(n)]
    sent = [0] * n

    def pump():
        """Write what the sockets take now; returns bytes written."""
        moved = 0
        for i, s in enumerate(socks):
            if sent[i] >= nbytes:
                continue
            try:
                k = s.send(memoryview(data[i])[sent[i] : sent[i] + (1 << 20)])
            except BlockingIOError:
                continue
            sent[i] += k
            moved += k
            if sent[i] >= nbytes:
                s.shutdown(socket.SHUT_WR)
        return moved

    # Stall phase: the server reads nothing. Write until nothing moves for
    # 3 s (every window closed), sampling uipd's RSS all along.
    peak = 0
    quiet_since = time.monotonic()
    stall_end = time.monotonic() + 40
    while time.monotonic() < stall_end:
        if pump() > 0:
            quiet_since = time.monotonic()
        peak = max(peak, rss(pid)[0])
        if time.monotonic() - quiet_since > 3:
            break
        await asyncio.sleep(0.05)
    stalled = sum(sent)
    r_stall, hwm_stall = rss(pid)
    print(
        f"RESULT stall conns={n} written={stalled} of={n * nbytes} "
        f"rss_kb={r_stall} peak_rss_kb={max(peak, r_stall)} hwm_kb={hwm_stall} "
        f"s={time.monotonic() - t0:.1f}",
        flush=True,
    )
    open(release, "w").close()

    # Drain: everything must arrive; the server answers each connection.
    answers = [b""] * n
    done = [False] * n
    deadline = time.monotonic() + 90
    while not all(done) and time.monotonic() < deadline:
        moved = pump()
        for i, s in enumerate(socks):
            if done[i]:
                continue
            try:
                d = s.recv(256)
            except BlockingIOError:
                continue
            except OSError as e:
                answers[i] = b"error %r" % e
                done[i] = True
                continue
            if d:
                answers[i] += d
            else:
                done[i] = True
        if moved == 0:
            await asyncio.sleep(0.01)
    ok = 0
    for i in range(n):
        want = b"%d %s\n" % (nbytes, hashlib.sha256(data[i]).hexdigest().encode())
        if answers[i] == want:
            ok += 1
        elif ok == i:
            print(f"conn {i}: sent {sent[i]} answer {answers[i][:100]!r}", flush=True)
    r_end, hwm_end = rss(pid)
    print(
        f"RESULT drain conns={n} ok={ok} rss_kb={r_end} hwm_kb={hwm_end} "
        f"s={time.monotonic() - t0:.1f}",
        flush=True,
    )
    for s in socks:
        s.close()
    return 0 if ok == n else 1


def main():
    raise_nofile()
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "echo-server":
        asyncio.run(echo_server(int(args[0]), float(args[1]) if len(args) > 1 else 120))
        return 0
    if cmd == "slow-server":
        asyncio.run(slow_server(int(args[0]), args[1], float(args[2]) if len(args) > 2 else 150))
        return 0
    if cmd == "echo-clients":
        return asyncio.run(
            asyncio.wait_for(echo_clients(args[0], int(args[1]), int(args[2]), int(args[3])), 110)
        )
    if cmd == "slow-clients":
        return asyncio.run(
            asyncio.wait_for(
                slow_clients(args[0], int(args[1]), int(args[2]), int(args[3]), args[4], int(args[5])),
                150,
            )
        )
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
