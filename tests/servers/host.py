#!/usr/bin/env python3
"""Host-side test servers for the uipd end-to-end tests.

Each server binds 127.0.0.1 (or `--bind ADDR`, IPv6 too, e.g. ::1) inside the test's
loopback-only outer network namespace, writes its `--ready` file once it listens, and exits by itself after
`--timeout` seconds (a bounded lifetime even if the harness dies).

Servers (first argument):
  http      static files from --dir (HTTP/1.0, threaded)
  sink      per connection: read to EOF, reply "<bytes> <sha256>\\n", close;
            also appends that line to --out. With --slow-secs S it first reads
            slowly for S seconds (4 KiB reads, --slow-sleep-ms between them)
  echo      per connection: for each line "X\\n" reply "echo X\\n" until EOF
  rawecho   per connection: send back every byte received; at EOF, close
  halfclose per connection: read to EOF, reply "GOT <bytes> <sha256>\\n" and
            then 262144 pattern bytes, close
  reset     per connection: read one line, send "LEN 4194304\\n" and 1 MiB,
            then close with SO_LINGER 0 (RST)
  udpecho   echo every UDP datagram back to its sender
  dns       UDP + TCP DNS on one port: A test.uipd. -> 10.1.2.3 (or
            --answer ADDR), other names NXDOMAIN, other types of test.uipd. an
            empty NOERROR
"""

import argparse
import hashlib
import http.server
import os
import socket
import socketserver
import struct
import sys
import threading
import time

HALFCLOSE_TAIL = 262144
RESET_ANNOUNCED = 4 * 1024 * 1024
RESET_SENT = 1024 * 1024
DNS_NAME = "test.uipd."
DNS_ADDR = bytes([10, 1, 2, 3])


def pattern(n):
    """Deterministic, non-repeating-looking payload of n bytes."""
    block = bytes((i * 7 + (i >> 8) * 13) & 0xFF for i in range(65536))
    out = bytearray()
    while len(out) < n:
        out += block
    return bytes(out[:n])


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def recv_all(conn, h=None, n=0):
    h = h or hashlib.sha256()
    while True:
        b = conn.recv(1 << 20)
        if not b:
            return n, h.hexdigest()
        h.update(b)
        n += len(b)


def recv_line(conn, limit=4096):
    buf = b""
    while not buf.endswith(b"\n") and len(buf) < limit:
        b = conn.recv(1)
        if not b:
            break
        buf += b
    return buf


class Threaded(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


def family(addr):
    """The socket family of a --bind address."""
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def tcp_server(args, handle):
    class H(socketserver.BaseRequestHandler):
        def handle(self):
            try:
                handle(self.request, args)
            except OSError as e:
                log("connection error:", repr(e))

    class S(Threaded):
        address_family = family(args.bind)

    return S((args.bind, args.port), H)


def h_sink(conn, args):
    h = hashlib.sha256()
    n = 0
    eof = False
    # Optionally a slow reader at first: the sender's socket buffer stays full.
    end = time.monotonic() + args.slow_secs
    while not eof and time.monotonic() < end:
        b = conn.recv(4096)
        eof = not b
        h.update(b)
        n += len(b)
        time.sleep(args.slow_sleep_ms / 1000.0)
    if args.slow_secs > 0:
        log("sink: slow phase over after", n, "bytes")
    if not eof:
        n, _ = recv_all(conn, h, n)
    digest = h.hexdigest()
    line = f"{n} {digest}\n"
    log("sink got", line.strip())
    if args.out:
        with open(args.out, "a") as f:
            f.write(line)
    conn.sendall(line.encode())


def h_echo(conn, args):
    f = conn.makefile("rb")
    for line in f:
        conn.sendall(b"echo " + line)


def h_rawecho(conn, args):
    n = 0
    while True:
        b = conn.recv(1 << 16)
        if not b:
            break
        conn.sendall(b)
        n += len(b)
    log("rawecho echoed", n, "bytes")
    conn.shutdown(socket.SHUT_WR)


def h_halfclose(conn, args):
    n, digest = recv_all(conn)
    log("halfclose got", n, digest)
    conn.sendall(f"GOT {n} {digest}\n".encode() + pattern(HALFCLOSE_TAIL))
    conn.shutdown(socket.SHUT_WR)
    # Wait for the peer's close so the tail is not lost to an RST.
    conn.settimeout(30)
    try:
        while conn.recv(65536):
            pass
    except OSError:
        pass


def h_reset(conn, args):
    req = recv_line(conn)
    log("reset request", req)
    conn.sendall(f"LEN {RESET_ANNOUNCED}\n".encode() + pattern(RESET_SENT))
    time.sleep(0.3)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    log("reset sent")


def dns_answer(query, addr=DNS_ADDR):
    """Build the response to one DNS query message (bytes) or None."""
    if len(query) < 12:
        return None
    qid, flags, qd = struct.unpack("!HHH", query[:6])
    if qd != 1:
        return None
    labels, i = [], 12
    while i < len(query) and query[i] != 0:
        ln = query[i]
        labels.append(query[i + 1 : i + 1 + ln].decode("ascii", "replace"))
        i += 1 + ln
    i += 1
    if i + 4 > len(query):
        return None
    qtype, qclass = struct.unpack("!HH", query[i : i + 4])
    question = query[12 : i + 4]
    name = ".".join(labels).lower() + "."
    rd = flags & 0x0100
    answers = b""
    ancount = 0
    rcode = 0
    if name != DNS_NAME:
        rcode = 3
    elif qtype == 1 and qclass == 1:
        answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + addr
        ancount = 1
    log("dns query", name, "type", qtype, "->", "rcode", rcode, "answers", ancount)
    hdr = struct.pack("!HHHHHH", qid, 0x8080 | rd | rcode, 1, ancount, 0, 0)
    return hdr + question + answers


def h_dns_tcp(conn, args):
    while True:
        hdr = b""
        while len(hdr) < 2:
            b = conn.recv(2 - len(hdr))
            if not b:
                return
            hdr += b
        (ln,) = struct.unpack("!H", hdr)
        q = b""
        while len(q) < ln:
            b = conn.recv(ln - len(q))
            if not b:
                return
            q += b
        resp = dns_answer(q, args.answer)
        if resp is None:
            return
        conn.sendall(struct.pack("!H", len(resp)) + resp)


def udp_loop(sock, respond):
    while True:
        data, peer = sock.recvfrom(65535)
        resp = respond(data)
        if resp is not None:
            sock.sendto(resp, peer)


class QuietHTTP(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt, *a):
        log("http", fmt % a)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("kind")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ready", help="file to create once listening")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--dir", default=".")
    p.add_argument("--out")
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--answer", default="10.1.2.3", help="dns: the A record of test.uipd.")
    p.add_argument("--slow-secs", type=float, default=0.0)
    p.add_argument("--slow-sleep-ms", type=float, default=2.0)
    args = p.parse_args()
    args.answer = socket.inet_aton(args.answer)

    # Bounded lifetime, whatever happens.
    t = threading.Timer(args.timeout, lambda: os._exit(3))
    t.daemon = True
    t.start()

    servers = []
    udp = None
    if args.kind == "http":
        d = os.path.abspath(args.dir)

        class H(QuietHTTP):
            def __init__(self, *a, **k):
                super().__init__(*a, directory=d, **k)

        class HS(http.server.ThreadingHTTPServer):
            address_family = family(args.bind)

        servers.append(HS((args.bind, args.port), H))
    elif args.kind in ("sink", "echo", "rawecho", "halfclose", "reset"):
        handle = {
            "sink": h_sink,
            "echo": h_echo,
            "rawecho": h_rawecho,
            "halfclose": h_halfclose,
            "reset": h_reset,
        }
        servers.append(tcp_server(args, handle[args.kind]))
    elif args.kind == "udpecho":
        udp = (socket.socket(family(args.bind), socket.SOCK_DGRAM), lambda d: d)
    elif args.kind == "dns":
        servers.append(tcp_server(args, h_dns_tcp))
        udp = (
            socket.socket(family(args.bind), socket.SOCK_DGRAM),
            lambda d: dns_answer(d, args.answer),
        )
    else:
        p.error(f"unknown server kind {args.kind}")

    if udp:
        s, respond = udp
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((args.bind, args.port))
        threading.Thread(target=udp_loop, args=(s, respond), daemon=True).start()
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()

    log(args.kind, "listening on %s:%d" % (args.bind, args.port))
    if args.ready:
        with open(args.ready, "w") as f:
            f.write("ready\n")
    t.join()


if __name__ == "__main__":
    main()
