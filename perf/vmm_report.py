#!/usr/bin/env python3
"""Results of perf/vmm-bench.sh: one record per boot, then a summary.

    vmm_report.py record RAW CONFIG RUN TRY QEMU_RC SERIAL_LOG T0 T1
        parse one outer guest's serial log, append a JSON line to RAW;
        exit 0 when the boot measured something, 1 when it should be retried
    vmm_report.py summary RAW OUT.json --rev R --len L --runs N --configs C --kernel K
        medians per configuration, ratios between configurations, a table

CPU figures come from the outer /init's BENCH-CPU lines: utime+stime ticks
(USER_HZ = 100) of each of uipd's threads at the inner guest's BENCH-SNAP
start and end (around both iperf3 directions). "vcpu" is uipd's vCPU
threads (uipd-vcpuN: the inner guest itself), "backend" every other thread
(stack workers uipd-wN, the VMM's main and device threads).
"""

import json
import os
import platform
import re
import statistics
import sys
from datetime import datetime, timezone

USER_HZ = 100


def parse_log(text):
    lines = [line.rstrip("\r") for line in text.splitlines()]
    rec = {"up_mbps": None, "down_mbps": None, "uipd_exit": None, "failure": None}
    cpu = {}
    for line in lines:
        m = re.match(r"BENCH-RESULT up ([0-9.]+) down ([0-9.]+)", line)
        if m:
            rec["up_mbps"] = float(m.group(1))
            rec["down_mbps"] = float(m.group(2))
        m = re.match(r"BENCH-CPU (\S+) (\S+) (\d+)", line)
        if m:
            cpu.setdefault(m.group(1), {})[m.group(2)] = int(m.group(3))
        m = re.match(r"UIPD-EXIT=(\d+)", line)
        if m:
            rec["uipd_exit"] = int(m.group(1))
        m = re.match(r"BENCH-(INNER|OUTER)-FAIL (.*)", line)
        if m and rec["failure"] is None:
            rec["failure"] = f"{m.group(1).lower()}: {m.group(2)}"
        # /proc/interrupts' virtio lines after the affinity was set and at
        # the end (the per-CPU counts show where the interrupts went).
        # And iperf3's own output, per second.
        for tag, key in (("BENCH-IRQ ", "irqs"), ("BENCH-IRQ-END ", "irqs_end"),
                         ("BENCH-IPERF ", "iperf3")):
            if line.startswith(tag):
                rec.setdefault(key, []).append(" ".join(line.split()[1:]))
    if "triple fault" in text and rec["failure"] is None:
        rec["failure"] = "inner guest triple fault (nested TCG)"
    if rec["uipd_exit"] is None and rec["failure"] is None:
        crashed = "Kernel panic" in text or "BUG:" in text
        rec["failure"] = "outer kernel crashed (nested TCG)" if crashed else "no UIPD-EXIT line"
    if "start" in cpu and "end" in cpu:
        vcpu = backend = 0
        for comm, end in cpu["end"].items():
            d = end - cpu["start"].get(comm, 0)
            if comm.startswith("uipd-vcpu"):
                vcpu += d
            else:
                backend += d
        rec["vcpu_cpu_s"] = vcpu / USER_HZ
        rec["backend_cpu_s"] = backend / USER_HZ
    return rec


def record(args):
    raw, config, run, attempt, rc, log, t0, t1 = args
    try:
        with open(log, errors="replace") as f:
            text = f.read()
    except OSError:
        text = ""
    rec = parse_log(text)
    rec.update(config=config, run=int(run), attempt=int(attempt), qemu_rc=int(rc),
               wall_s=round(float(t1) - float(t0), 1))
    ok = rec["up_mbps"] is not None and rec["uipd_exit"] == 0 and rec["failure"] is None
    rec["ok"] = ok
    with open(raw, "a") as f:
        f.write(json.dumps(rec) + "\n")
    what = (f"up {rec['up_mbps']} down {rec['down_mbps']} Mbit/s, backend CPU "
            f"{rec.get('backend_cpu_s')} s" if ok else f"FAILED: {rec['failure'] or 'uipd exit ' + str(rec['uipd_exit'])}")
    print(f"  {config} run {run} try {attempt}: {what} ({rec['wall_s']} s)", file=sys.stderr)
    return 0 if ok else 1


def med(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 2) if xs else None


def ratio(a, b):
    return round(a / b, 2) if a is not None and b else None


# (numerator, denominator, what it shows)
RATIOS = [
    ("user-split", "user-same", "worker on its own CPU vs sharing the vCPU's CPU"),
    ("user-split", "user-unpinned", "pinned vs unpinned"),
    ("user-split", "tap-split", "-net user vs -net tap (kernel bridge-free TAP, same pinning)"),
    ("mq-spread", "mq-one", "per-queue interrupts spread over vCPUs vs all on vCPU 0"),
]


def summary(argv):
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("raw")
    p.add_argument("out")
    for o in ("rev", "len", "runs", "configs", "kernel"):
        p.add_argument("--" + o, required=True)
    a = p.parse_args(argv)
    recs = [json.loads(line) for line in open(a.raw) if line.strip()]
    configs = a.configs.split()
    res = {}
    for c in configs:
        mine = [r for r in recs if r["config"] == c]
        good = [r for r in mine if r["ok"]]
        res[c] = {
            "up_mbps": med(r["up_mbps"] for r in good),
            "down_mbps": med(r["down_mbps"] for r in good),
            "backend_cpu_s": med(r.get("backend_cpu_s") for r in good),
            "vcpu_cpu_s": med(r.get("vcpu_cpu_s") for r in good),
            "runs_ok": len(good),
            "boots_failed": len(mine) - len(good),
            "failures": sorted({r["failure"] or "" for r in mine if not r["ok"]}),
            "samples_up": [r["up_mbps"] for r in good],
            "samples_down": [r["down_mbps"] for r in good],
        }
    ratios = []
    for num, den, what in RATIOS:
        if num in res and den in res:
            ratios.append({
                "ratio": f"{num}/{den}", "what": what,
                "up": ratio(res[num]["up_mbps"], res[den]["up_mbps"]),
                "down": ratio(res[num]["down_mbps"], res[den]["down_mbps"]),
            })
    out = {
        "bench": "vmm-nested",
        "git_rev": a.rev,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": {"nproc": os.cpu_count(), "kernel": platform.release()},
        "setup": ("outer: qemu-system-x86_64 -accel tcg,thread=multi -cpu EPYC,+svm -smp 2 -m 2048; "
                  f"inner: uipd --kernel ({a.kernel}) --mem 256, iperf3 -t {a.len} each way "
                  "against iperf3 -s on the outer guest"),
        "len_s": int(a.len),
        "runs": int(a.runs),
        "results": res,
        "ratios": ratios,
        "records": recs,
    }
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"\nuipd --kernel in nested KVM under QEMU TCG ({a.rev}), medians of {a.runs} runs, iperf3 -t {a.len}")
    print(f"{'config':15} {'up Mbit/s':>10} {'down Mbit/s':>12} {'backend CPU s':>14} {'vCPU CPU s':>11} {'ok':>3} {'failed boots':>13}")
    for c in configs:
        r = res[c]
        print(f"{c:15} {str(r['up_mbps']):>10} {str(r['down_mbps']):>12} {str(r['backend_cpu_s']):>14} "
              f"{str(r['vcpu_cpu_s']):>11} {r['runs_ok']:>3} {r['boots_failed']:>13}")
    for q in ratios:
        print(f"{q['ratio']:28} up {q['up']}  down {q['down']}   ({q['what']})")
    print(f"wrote {a.out}")
    return 0


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "record" and len(sys.argv) == 10:
        return record(sys.argv[2:])
    if len(sys.argv) >= 2 and sys.argv[1] == "summary":
        return summary(sys.argv[2:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
