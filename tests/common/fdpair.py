#!/usr/bin/env python3
"""Run a backend and QEMU joined by a socketpair, as QEMU >= 10.1 joins
itself to passt (`passt --fd N`, `-netdev stream,addr.type=fd`).

  fdpair.py DIR BACKEND... --- QEMU...

The backend gets one end as fd 10 (its stderr goes to DIR/uipd.err), QEMU
the other as fd 11; both are children of this script. When QEMU exits, the
backend must end by itself once its end of the pair reads EOF: its status
goes to DIR/daemon.rc ("killed" if it had to be killed after 10 s). Exits
with QEMU's status.
"""

import os
import socket
import subprocess
import sys
import time


def main():
    d, rest = sys.argv[1], sys.argv[2:]
    i = rest.index("---")
    backend, qemu = rest[:i], rest[i + 1 :]
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    os.dup2(a.fileno(), 10, inheritable=True)
    os.dup2(b.fileno(), 11, inheritable=True)
    a.close()
    b.close()
    with open(os.path.join(d, "uipd.err"), "wb") as err:
        be = subprocess.Popen(backend, pass_fds=(10,), stdin=subprocess.DEVNULL, stderr=err)
    os.close(10)
    q = subprocess.Popen(qemu, pass_fds=(11,))
    os.close(11)
    qrc = q.wait()
    end = time.monotonic() + 10
    rc = None
    while time.monotonic() < end:
        rc = be.poll()
        if rc is not None:
            break
        time.sleep(0.05)
    if rc is None:
        be.kill()
        be.wait()
        rc = "killed"
    with open(os.path.join(d, "daemon.rc"), "w") as f:
        f.write(f"{rc}\n")
    sys.exit(qrc)


if __name__ == "__main__":
    main()
