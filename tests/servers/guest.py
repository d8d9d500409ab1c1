#!/usr/bin/env python3
"""Guest-side test clients for the uipd end-to-end tests.

Runs inside the guest network namespace. Every client bounds its own time and
prints one "RESULT ..." line that the Rust harness checks; details go to stderr.

Clients (first argument):
  concurrent HOST PORT N     N connections open at once to the `echo` server;
                             prints "RESULT concurrent ok=<k> of=<N>"
  halfclose HOST PORT BYTES  send BYTES, shutdown(SHUT_WR), read the reply of the
                             `halfclose` server; prints "RESULT halfclose sent=..
                             sha=.. reply_bytes=.. reply_sha=.. tail_ok=0|1"
  reset HOST PORT            talk to the `reset` server; prints
                             "RESULT reset outcome=reset|truncated|complete|error bytes=.."
  tcpecho HOST PORT BYTES    send BYTES random bytes to the `rawecho` server while
                             reading its echo, half-close, read to EOF; prints
                             "RESULT tcpecho sent=.. got=.. ok=0|1 ms=.."
  connect HOST PORT          one connect; prints "RESULT connect outcome=ok|<errno name> ms=.."
  udp HOST PORT SIZE...      UDP round trips; prints "RESULT udp size=S ok=0|1" each
  dnstcp HOST PORT NAME      DNS A query over TCP; prints "RESULT dnstcp rcode=R addrs=a,b"
"""

import errno
import hashlib
import os
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import host  # noqa: E402  (shared constants and the payload pattern)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def result(*a):
    print("RESULT", *a, flush=True)


def recv_all(s):
    chunks = []
    while True:
        b = s.recv(1 << 20)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def concurrent(h, port, n):
    n = int(n)
    ok = [False] * n
    errors = []
    barrier = threading.Barrier(n, timeout=60)

    def one(i):
        try:
            with socket.create_connection((h, int(port)), timeout=60) as s:
                try:
                    barrier.wait()  # all n connections are open at this point
                except threading.BrokenBarrierError:
                    pass
                s.sendall(b"conn %d\n" % i)
                s.shutdown(socket.SHUT_WR)
                got = recv_all(s)
                ok[i] = got == b"echo conn %d\n" % i
                if not ok[i]:
                    errors.append(f"{i}: got {got!r}")
        except OSError as e:
            barrier.abort()
            errors.append(f"{i}: {e!r}")

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 90
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    for e in errors[:20]:
        log("error", e)
    result(f"concurrent ok={sum(ok)} of={n}")


def halfclose(h, port, nbytes):
    nbytes = int(nbytes)
    data = os.urandom(nbytes)
    with socket.create_connection((h, int(port)), timeout=60) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = recv_all(s)
    line, _, tail = reply.partition(b"\n")
    log("reply line", line[:200])
    parts = line.decode(errors="replace").split()
    got_n = parts[1] if len(parts) == 3 else "?"
    got_sha = parts[2] if len(parts) == 3 else "?"
    tail_ok = int(tail == host.pattern(host.HALFCLOSE_TAIL))
    result(
        f"halfclose sent={nbytes} sha={hashlib.sha256(data).hexdigest()} "
        f"reply_bytes={got_n} reply_sha={got_sha} tail_ok={tail_ok} tail_len={len(tail)}"
    )


def reset(h, port):
    got = 0
    outcome = "error"
    announced = None
    try:
        with socket.create_connection((h, int(port)), timeout=30) as s:
            s.sendall(b"GET\n")
            buf = b""
            while True:
                b = s.recv(1 << 20)
                if not b:
                    break
                if announced is None:
                    buf += b
                    if b"\n" in buf:
                        line, _, rest = buf.partition(b"\n")
                        announced = int(line.split()[1])
                        got += len(rest)
                else:
                    got += len(b)
        outcome = "complete" if announced is not None and got >= announced else "truncated"
    except ConnectionResetError as e:
        log("reset:", repr(e))
        outcome = "reset"
    except OSError as e:
        log("error:", repr(e))
        outcome = "error:" + errno.errorcode.get(e.errno or 0, str(e))
    result(f"reset outcome={outcome} bytes={got} announced={announced}")


def tcpecho(h, port, nbytes):
    nbytes = int(nbytes)
    data = os.urandom(nbytes)
    t0 = time.monotonic()
    errors = []
    with socket.create_connection((h, int(port)), timeout=60) as s:

        def send():
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
            except OSError as e:
                errors.append(f"send: {e!r}")

        t = threading.Thread(target=send, daemon=True)
        t.start()
        try:
            back = recv_all(s)
        except OSError as e:
            errors.append(f"recv: {e!r}")
            back = b""
        t.join(60)
    ms = int((time.monotonic() - t0) * 1000)
    for e in errors:
        log("tcpecho", e)
    result(f"tcpecho sent={nbytes} got={len(back)} ok={int(back == data)} ms={ms}")


def connect(h, port):
    t0 = time.monotonic()
    s = socket.socket()
    s.settimeout(10)
    try:
        s.connect((h, int(port)))
        outcome = "ok"
    except socket.timeout:
        outcome = "timeout"
    except OSError as e:
        outcome = errno.errorcode.get(e.errno or 0, repr(e))
    finally:
        s.close()
    ms = int((time.monotonic() - t0) * 1000)
    result(f"connect outcome={outcome} ms={ms}")


def udpclosed(h, port):
    """A connected UDP socket to a closed port: the ICMP port unreachable
    must reach us as ECONNREFUSED on a later send/recv."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.connect((h, int(port)))
    outcome = "timeout"
    for _ in range(3):
        try:
            s.send(b"x")
            s.recv(100)
            outcome = "reply"
            break
        except ConnectionRefusedError:
            outcome = "ECONNREFUSED"
            break
        except socket.timeout:
            pass
    result(f"udp outcome={outcome}")


def udp(h, port, *sizes):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.connect((h, int(port)))
    s.settimeout(2)
    for size in map(int, sizes):
        ok = 0
        for attempt in range(3):
            payload = os.urandom(size)
            try:
                s.send(payload)
                while True:
                    back = s.recv(65535)
                    if back == payload:
                        ok = 1
                        break
                    log(f"size {size}: unexpected reply of {len(back)} bytes")
            except socket.timeout:
                log(f"size {size}: attempt {attempt} timed out")
            except OSError as e:
                log(f"size {size}: attempt {attempt}: {e!r}")
                time.sleep(0.2)
            if ok:
                break
        result(f"udp size={size} ok={ok} attempts={attempt + 1}")


def udpburst(h, port, n, size, dead):
    """`dead` datagrams that lose every fragment but the first (sent raw,
    to 10.9.9.9 so their identifications cannot meet the kernel's), then
    `n` datagrams of `size` bytes to h:port (an echo server), a few ms
    apart; counts the echoes that come back whole."""
    n, size, dead = int(n), int(size), int(dead)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE (root)
    s.connect((h, int(port)))
    me = socket.inet_aton(s.getsockname()[0])
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    body = bytes(1480)
    for i in range(dead):
        # IPv4, MF set, offset 0; the kernel fills in the checksum.
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0x7000 + i,
                          0x2000, 64, 17, 0, me, socket.inet_aton("10.9.9.9"))
        raw.sendto(hdr + body, ("10.9.9.9", 0))
        if i % 16 == 15:
            time.sleep(0.002)  # do not overrun the TAP queue
    time.sleep(0.2)
    got = [0]
    payload = host.pattern(size)

    def reader():
        s.settimeout(3)
        try:
            while got[0] < n:
                if s.recv(65535) == payload:
                    got[0] += 1
        except (socket.timeout, OSError):
            pass

    t = threading.Thread(target=reader)
    t.start()
    for _ in range(n):
        s.send(payload)
        time.sleep(0.005)
    t.join()
    result(f"udpburst sent={n} echoed={got[0]}")


def dnstcp(h, port, name):
    q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack("!HH", 1, 1)
    with socket.create_connection((h, int(port)), timeout=10) as s:
        s.sendall(struct.pack("!H", len(q)) + q)
        buf = b""
        while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
            b = s.recv(65535)
            if not b:
                break
            buf += b
    resp = buf[2:]
    if len(resp) < 12:
        result(f"dnstcp rcode=short addrs= len={len(resp)}")
        return
    qid, flags, qd, an = struct.unpack("!HHHH", resp[:8])
    i = 12
    for _ in range(qd):  # skip questions
        while resp[i] != 0:
            if resp[i] & 0xC0 == 0xC0:
                i += 1
                break
            i += 1 + resp[i]
        i += 1 + 4
    addrs = []
    for _ in range(an):
        if resp[i] & 0xC0 == 0xC0:
            i += 2
        else:
            while resp[i] != 0:
                i += 1 + resp[i]
            i += 1
        rtype, rclass, ttl, rdlen = struct.unpack("!HHIH", resp[i : i + 10])
        i += 10
        if rtype == 1 and rdlen == 4:
            addrs.append(socket.inet_ntoa(resp[i : i + 4]))
        i += rdlen
    result(f"dnstcp id_ok={int(qid == 0x1234)} rcode={flags & 0xF} addrs={','.join(addrs)}")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    # Bounded lifetime, whatever happens.
    t = threading.Timer(120, lambda: os._exit(3))
    t.daemon = True
    t.start()
    {
        "concurrent": concurrent,
        "halfclose": halfclose,
        "reset": reset,
        "tcpecho": tcpecho,
        "connect": connect,
        "udp": udp,
        "udpclosed": udpclosed,
        "udpburst": udpburst,
        "dnstcp": dnstcp,
    }[cmd](*args)


if __name__ == "__main__":
    main()
