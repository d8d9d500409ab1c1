#!/usr/bin/env python3
"""Clients (run in the outer namespace) and a guest-side server for the
published-port tests (tests/publish.rs). Every socket has a timeout; every
client prints one "RESULT <tag> k=v ..." line.

  peerserver --port P --ready F --timeout T [--delay S] [--bytes N]
        guest side: per TCP connection reply "PEER <ip> <port>\\n" (after S
        seconds, then N bytes of pattern(N)), close
  udpdelay --port P --ready F --timeout T --delay S
        guest side: echo each UDP datagram back after S seconds
  get HOST PORT PATH OUT          HTTP/1.0 GET, body to OUT: RESULT get bytes= sha=
  put HOST PORT FILE              send FILE, half-close, print the reply line
                                  (host.py sink answers "<bytes> <sha256>"): RESULT put reply=
  peer HOST PORT [BINDADDR]       RESULT peer ip= port=
  udp HOST PORT SIZE...           one datagram per size, each echoed: RESULT udp ok= sent= echoed=
  refused HOST PORT               RESULT refused refused=1 (or refused=0)
  peers HOST PORT COUNT BYTES PARALLEL [BINDADDR]
                                  COUNT connections, PARALLEL at a time, each
                                  must read a PEER line and BYTES of pattern:
                                  RESULT peers ok= bad= reset= error= ips=
  udpwait HOST PORT COUNT WAIT [BINDADDR]
                                  one datagram from each of COUNT sockets (COUNT
                                  flows) at once, each echoed within WAIT s:
                                  RESULT udpwait ok= echoed=
"""

import hashlib
import os
import socket
import sys
import threading
import time

TIMEOUT = 30


def result(tag, **kv):
    print("RESULT", tag, " ".join(f"{k}={v}" for k, v in kv.items()), flush=True)


def pattern(n, seed=0):
    """n bytes that differ from connection to connection only by seed."""
    block = hashlib.sha256(str(seed).encode()).digest() * 32  # 1 KiB
    return (block * (n // len(block) + 1))[:n]


def server_args(argv):
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ready", required=True)
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--delay", type=float, default=0)
    p.add_argument("--bytes", type=int, default=0)
    a = p.parse_args(argv)
    t = threading.Timer(a.timeout, lambda: os._exit(3))
    t.daemon = True
    t.start()
    return a


def peerserver(argv):
    a = server_args(argv)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", a.port))
    s.listen(256)
    with open(a.ready, "w") as f:
        f.write("ready\n")

    def serve(c, addr):
        try:
            time.sleep(a.delay)
            c.sendall(f"PEER {addr[0]} {addr[1]}\n".encode() + pattern(a.bytes, addr[1]))
        except OSError:
            pass
        c.close()

    while True:
        c, addr = s.accept()
        if a.delay:
            threading.Thread(target=serve, args=(c, addr), daemon=True).start()
        else:
            serve(c, addr)


def udpdelay(argv):
    a = server_args(argv)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", a.port))
    with open(a.ready, "w") as f:
        f.write("ready\n")
    while True:
        d, addr = s.recvfrom(65535)
        threading.Timer(a.delay, lambda d=d, addr=addr: s.sendto(d, addr)).start()


def connect(host, port, bind=None):
    s = socket.socket()
    s.settimeout(TIMEOUT)
    if bind:
        s.bind((bind, 0))
    s.connect((host, int(port)))
    return s


def get(host, port, path, out):
    s = connect(host, port)
    s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    data = bytearray()
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        data += b
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode(errors="replace").replace(" ", "_")
    with open(out, "wb") as f:
        f.write(body)
    result("get", status=status, bytes=len(body), sha=hashlib.sha256(body).hexdigest())


def put(host, port, path):
    s = connect(host, port)
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            s.sendall(b)
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while not reply.endswith(b"\n"):
        b = s.recv(4096)
        if not b:
            break
        reply += b
    n, _, sha = reply.decode().strip().partition(" ")
    result("put", bytes=n or "none", sha=sha or "none")


def peer(host, port, bind=None):
    s = connect(host, port, bind)
    line = b""
    while not line.endswith(b"\n"):
        b = s.recv(100)
        if not b:
            break
        line += b
    parts = line.decode().split()
    if len(parts) == 3 and parts[0] == "PEER":
        result("peer", ip=parts[1], port=parts[2])
    else:
        result("peer", ip="none", raw=line.decode().strip().replace(" ", "_") or "eof")


def udp(host, port, *sizes):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    echoed = 0
    for i, n in enumerate(int(x) for x in sizes):
        msg = bytes((i + j) & 0xFF for j in range(n))
        got = None
        for _ in range(3):  # UDP: a lost datagram is retried, bounded
            s.sendto(msg, (host, int(port)))
            try:
                got, _ = s.recvfrom(65535)
                break
            except socket.timeout:
                continue
        if got == msg:
            echoed += 1
    result("udp", ok=int(echoed == len(sizes)), sent=len(sizes), echoed=echoed)


def refused(host, port):
    try:
        s = connect(host, port)
        s.settimeout(3)
        try:
            b = s.recv(1)
            result("refused", refused=0, eof=int(not b))
        except (ConnectionResetError, socket.timeout) as e:
            result("refused", refused=0, error=type(e).__name__)
    except ConnectionRefusedError:
        result("refused", refused=1)


def peers(host, port, count, nbytes, parallel, bind=None):
    count, nbytes, parallel = int(count), int(nbytes), int(parallel)
    tally = {"ok": 0, "bad": 0, "reset": 0, "error": 0}
    ips = set()
    lock = threading.Lock()

    def one():
        try:
            s = connect(host, port, bind)
            data = bytearray()
            while True:
                b = s.recv(1 << 16)
                if not b:
                    break
                data += b
            line, _, body = bytes(data).partition(b"\n")
            parts = line.decode(errors="replace").split()
            # The server seeds the pattern with the port it saw us from.
            good = (
                len(parts) == 3
                and parts[0] == "PEER"
                and parts[2].isdigit()
                and body == pattern(nbytes, int(parts[2]))
            )
            kind = "ok" if good else "bad"
            if len(parts) == 3:
                with lock:
                    ips.add(parts[1])
        except ConnectionResetError:
            kind = "reset"
        except OSError as e:
            print("peers:", type(e).__name__, e, file=sys.stderr)
            kind = "error"
        with lock:
            tally[kind] += 1

    done = 0
    while done < count:
        batch = [threading.Thread(target=one) for _ in range(min(parallel, count - done))]
        for t in batch:
            t.start()
        for t in batch:
            t.join(TIMEOUT + 5)
        done += len(batch)
    result("peers", ips=",".join(sorted(ips)) or "none", **tally)


def udpwait(host, port, count, wait, bind=None):
    count, wait = int(count), float(wait)
    socks = []
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if bind:
            s.bind((bind, 0))
        s.connect((host, int(port)))
        s.setblocking(False)
        s.send(f"dgram {i}".encode())
        socks.append(s)
    echoed = set()
    end = time.monotonic() + wait
    import select

    while len(echoed) < count and time.monotonic() < end:
        ready, _, _ = select.select(socks, [], [], max(0.01, end - time.monotonic()))
        for s in ready:
            i = socks.index(s)
            try:
                if s.recv(65535) == f"dgram {i}".encode():
                    echoed.add(i)
            except OSError:
                pass
    result("udpwait", ok=int(len(echoed) == count), echoed=len(echoed))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "peerserver":
        return peerserver(args)
    if cmd == "udpdelay":
        return udpdelay(args)
    {
        "get": get,
        "put": put,
        "peer": peer,
        "udp": udp,
        "refused": refused,
        "peers": peers,
        "udpwait": udpwait,
    }[cmd](*args)


if __name__ == "__main__":
    main()
