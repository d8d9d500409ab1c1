#!/usr/bin/env python3
"""Results of perf/bench.sh, perf/affinity.sh and perf/guest-bench.sh: raw
records, summary JSON, tables on stdout and PNG charts.

  report.py record RAW.jsonl BACKEND MTU TEST RUN CPU_S DIR EXTRA_JSON
      one test's result (DIR/out, DIR/err, DIR/rc) appended to RAW.jsonl
  report.py bench RAW.jsonl OUT.json [--rev R --len S --runs N ...]
      medians, ratios, machine description -> OUT.json; table on stdout
  report.py integrators RAW.jsonl OUT.json [--rev R ...]
      the same for perf/integrators-bench.sh (podman: uipd vs slirp4netns)
  report.py affinity RAW.jsonl OUT.json [--rev R ...]
      the same for perf/affinity.sh (one row per configuration)
  report.py guest-record RAW.jsonl BACKEND RUN DIR
      one guest boot of perf/guest-bench.sh (DIR/guest.out, DIR/cpu.*) appended
  report.py guest RAW.jsonl OUT.json [--rev R --len S --runs N ...]
      medians, ratios to slirp, CPU split -> OUT.json; table on stdout
  report.py tx-dropped
      GUEST_TX_DROPPED=N: frames the namespace's interfaces dropped on
      transmit (a TAP whose reader fell behind), from `ip -j -s link`
  report.py chart OUT.json OUT.png
      the chart of a bench, affinity or guest JSON (needs matplotlib)

All but `chart` use the standard library only.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

BACKENDS = ["uipd", "uipd-epoll", "uipd-nosandbox", "slirp4netns", "pasta", "veth"]
TEST_ORDER = ["TCP_STREAM", "TCP_MAERTS", "UDP_STREAM", "IPERF3_STREAM", "IPERF3_MAERTS",
              "TCP_RR", "TCP_CRR", "NETPERF_TCP_STREAM", "NETPERF_TCP_MAERTS",
              "NETPERF_UDP_STREAM", "NETPERF_UDP_STREAM_1400", "NETPERF_TCP_RR"]
# Tests with a latency distribution (p50/p99) and UDP tests with a loss.
RR_TESTS = ("TCP_RR", "TCP_CRR", "NETPERF_TCP_RR")
UDP_TESTS = ("UDP_STREAM", "NETPERF_UDP_STREAM", "NETPERF_UDP_STREAM_1400")
# The headline figure of each test, its unit, and whether more is better.
PRIMARY = {
    "TCP_STREAM": ("mbps", "Mbit/s"),
    "TCP_MAERTS": ("mbps", "Mbit/s"),
    "UDP_STREAM": ("mbps", "Mbit/s recv"),
    "IPERF3_STREAM": ("mbps", "Mbit/s"),
    "IPERF3_MAERTS": ("mbps", "Mbit/s"),
    "TCP_RR": ("tps", "trans/s"),
    "TCP_CRR": ("tps", "conn/s"),
    "NETPERF_TCP_STREAM": ("mbps", "Mbit/s"),
    "NETPERF_TCP_MAERTS": ("mbps", "Mbit/s"),
    "NETPERF_UDP_STREAM": ("mbps", "Mbit/s recv"),
    "NETPERF_UDP_STREAM_1400": ("mbps", "Mbit/s recv"),
    "NETPERF_TCP_RR": ("tps", "trans/s"),
}


def netperf_result(text):
    """netperf's `-- -k SELECTORS` output (KEY=VALUE lines) as a dict, numbers
    as floats; None without a THROUGHPUT (netperf failed)."""
    res = {}
    for line in text.splitlines():
        k, sep, v = line.strip().partition("=")
        if not sep or not k.isupper():
            continue
        try:
            res[k] = float(v)
        except ValueError:
            res[k] = v
    return res if isinstance(res.get("THROUGHPUT"), float) else None


def metrics_of(test, res):
    """The figures worth a median, from one client's JSON output."""
    if test.startswith("NETPERF_"):
        if test.startswith("NETPERF_UDP"):
            sent, recv = res.get("LOCAL_SEND_CALLS"), res.get("REMOTE_RECV_CALLS")
            return {"mbps": res.get("THROUGHPUT"), "sent_mbps": res.get("LOCAL_SEND_THROUGHPUT"),
                    "sent_datagrams": sent, "received_datagrams": recv,
                    "loss_pct": 100.0 * (1 - recv / sent) if sent and recv is not None else None,
                    "message_bytes": res.get("LOCAL_SEND_SIZE"),
                    # Where they were lost (perf/bench.sh): frames the guest's
                    # interface dropped, datagrams the host receiver's socket
                    # buffer dropped.
                    "guest_tx_dropped_frames": res.get("GUEST_TX_DROPPED"),
                    "host_rcvbuf_errors": res.get("HOST_RCVBUF_ERRORS")}
        if test == "NETPERF_TCP_RR":
            return {"tps": res.get("THROUGHPUT"), "p50_us": res.get("P50_LATENCY"),
                    "p99_us": res.get("P99_LATENCY"), "mean_us": res.get("MEAN_LATENCY")}
        return {"mbps": res.get("THROUGHPUT")}
    if test.startswith("IPERF3"):
        end = res.get("end", {})
        m = {"mbps": end.get("sum_received", {}).get("bits_per_second", 0) / 1e6}
        if "retransmits" in end.get("sum_sent", {}):
            m["retransmits"] = end["sum_sent"]["retransmits"]
        return m
    if test == "UDP_STREAM":
        return {"mbps": res.get("received_mbps", res.get("throughput_mbps", 0)),
                "sent_mbps": res.get("sent_mbps"), "loss_pct": res.get("loss_pct")}
    if test in ("TCP_RR", "TCP_CRR"):
        lat = res.get("latency_us", {})
        return {"tps": res.get("trans_per_s", 0), "p50_us": lat.get("p50"),
                "p99_us": lat.get("p99")}
    return {"mbps": res.get("throughput_mbps", 0)}


def read(path, limit=None):
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return ""
    return text[-limit:] if limit else text


def cmd_record(a):
    rc = read(os.path.join(a.dir, "rc")).strip()
    out = read(os.path.join(a.dir, "out"))
    err = read(os.path.join(a.dir, "err"), 2000).strip()
    rec = {"backend": a.backend, "mtu": int(a.mtu), "test": a.test, "run": int(a.run),
           "backend_cpu_s": None if a.cpu in ("", "null") else float(a.cpu),
           "tool": "iperf3" if a.test.startswith("IPERF3") else
           "netperf" if a.test.startswith("NETPERF_") else "uipd-perf"}
    rec.update(json.loads(a.extra or "{}"))
    result, error = None, None
    try:
        result = netperf_result(out) if a.test.startswith("NETPERF_") else json.loads(out)
        if result is None:
            raise ValueError("no THROUGHPUT in netperf's output")
    except ValueError:
        error = err or out.strip()[-300:] or f"no output (exit status {rc or '?'})"
    if isinstance(result, dict) and result.get("error"):
        error, result = str(result["error"]), None
    if result is not None:
        result.pop("intervals", None)  # iperf3's per-second samples: bulky
        rec["metrics"] = metrics_of(a.test, result)
        uipd_counters(rec, os.path.join(a.dir, "stats.json"))
    else:
        log = read(os.path.join(a.dir, "backend.log"), 1000).strip()
        rec["error"] = error + (f" | backend log: {log}" if log else "")
        print(f"  FAILED {a.backend} {a.test} mtu {a.mtu}: {rec['error'][:300]}", file=sys.stderr)
    rec["result"] = result
    with open(a.raw, "a") as f:
        f.write(json.dumps(rec) + "\n")


def cmd_tx_dropped(_a):
    try:
        out = subprocess.run(["ip", "-j", "-s", "link"], capture_output=True, text=True,
                             timeout=10).stdout
        links = json.loads(out)
    except (OSError, ValueError, subprocess.SubprocessError):
        return
    n = sum(link.get("stats64", {}).get("tx", {}).get("dropped", 0)
            for link in links if link.get("ifname") != "lo")
    print(f"GUEST_TX_DROPPED={n}")


def uipd_counters(rec, path):
    """uipd's --stats-json totals that say where datagrams went, into the
    record's metrics (UDP tests: reassembled, fragment drops by reason)."""
    try:
        stats = json.load(open(path))
        total = stats.get("total", {})
        workers = [w.get("worker", {}) for w in stats.get("workers", [])]
    except (OSError, ValueError, AttributeError):
        return
    if rec["test"] in UDP_TESTS:
        for k in ("rx_frames", "reassembled", "fragmented", "ufo_frames", "drops_frag_evicted",
                  "drops_frag_limit", "drops_frag_timeout", "drops_frag_overlap",
                  "drops_bad_csum", "drops_udp_queue_full", "drops_mem_budget"):
            rec["metrics"]["uipd_" + k] = total.get(k, 0)
        # The workers' own: UDP datagrams sent to the host in segmented sends.
        for k in ("udp_segmented_sends", "udp_segmented_datagrams", "udp_segment_fallbacks"):
            rec["metrics"]["uipd_" + k] = sum(w.get(k, 0) for w in workers)


def machine(a):
    def sh(*cmd):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (p.stdout or p.stderr).strip()
        except (OSError, subprocess.SubprocessError):
            return None

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), None)
    mhz = sorted(float(line.split(":", 1)[1]) for line in open("/proc/cpuinfo")
                 if line.startswith("cpu MHz"))
    cc = read("/proc/sys/net/ipv4/tcp_congestion_control").strip() or None
    slirp = sh("slirp4netns", "--version")
    return {
        "git_rev": a.rev,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu_model": cpu,
        "cpu_mhz": mhz[len(mhz) // 2] if mhz else None,
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "tcp_congestion_control": cc,
        "versions": {
            "uipd": sh(os.environ.get("UIPD", "uipd"), "--version"),
            "uipd-perf": sh(os.environ.get("PERF", "uipd-perf"), "--version"),
            "slirp4netns": " / ".join(slirp.splitlines()[:3]) if slirp else None,
            # pasta of this vintage says "unknown version": ask the package.
            "pasta": sh("dpkg-query", "-W", "-f", "passt ${Version}", "passt"),
            "iperf3": (sh("iperf3", "--version") or "").split("\n")[0] or None,
        },
    }


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarise(rows, key_fields):
    """Group ok rows by key_fields; median of every metric and of CPU."""
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in key_fields), []).append(r)
    out = []
    for key, rs in groups.items():
        ok = [r for r in rs if "metrics" in r]
        s = dict(zip(key_fields, key))
        s["runs_ok"], s["runs_failed"] = len(ok), len(rs) - len(ok)
        names = sorted({m for r in ok for m in r["metrics"]})
        s["median"] = {m: median([r["metrics"].get(m) for r in ok]) for m in names}
        s["runs"] = {m: [r["metrics"].get(m) for r in ok] for m in names}
        s["median_backend_cpu_s"] = median([r.get("backend_cpu_s") for r in ok])
        for extra in ("workers", "config", "cpus", "client_cpu", "streams"):
            if extra in rs[0]:
                s[extra] = rs[0][extra]
        out.append(s)
    return out


def fmt(v, digits=0):
    if v is None:
        return "-"
    if abs(v) >= 100000:
        return f"{v / 1000:.0f}k"
    return f"{v:.{digits}f}"


def cmd_bench(a):
    rows = [json.loads(line) for line in open(a.raw) if line.strip()]
    summary = summarise(rows, ["backend", "mtu", "test"])
    index = {(s["backend"], s["mtu"], s["test"]): s for s in summary}
    backends = [b for b in BACKENDS if any(s["backend"] == b for s in summary)]
    keys = sorted({(s["test"], s["mtu"]) for s in summary},
                  key=lambda k: (TEST_ORDER.index(k[0]) if k[0] in TEST_ORDER else 99, k[1]))

    def val(b, test, mtu, metric):
        s = index.get((b, mtu, test))
        return s["median"].get(metric) if s else None

    ratios = []
    for test, mtu in keys:
        metric, unit = PRIMARY.get(test, ("mbps", "Mbit/s"))
        r = {"test": test, "mtu": mtu, "metric": metric, "unit": unit}
        for b in backends:
            r[b] = val(b, test, mtu, metric)
        u = r.get("uipd")
        for other in ("uipd-epoll", "uipd-nosandbox", "slirp4netns", "pasta", "veth"):
            o = r.get(other)
            if other in backends:
                r[f"uipd_over_{other}"] = round(u / o, 3) if u and o else None
        if test in RR_TESTS:
            for b in backends:
                r[f"{b}_p50_us"] = val(b, test, mtu, "p50_us")
                r[f"{b}_p99_us"] = val(b, test, mtu, "p99_us")
        if test in UDP_TESTS:
            for b in backends:
                r[f"{b}_loss_pct"] = val(b, test, mtu, "loss_pct")
                r[f"{b}_sent_mbps"] = val(b, test, mtu, "sent_mbps")
                # Where they were lost (medians; netperf tests only).
                for m in ("sent_datagrams", "received_datagrams", "guest_tx_dropped_frames",
                          "host_rcvbuf_errors", "uipd_reassembled", "uipd_drops_frag_evicted",
                          "uipd_drops_frag_limit"):
                    v = val(b, test, mtu, m)
                    if v is not None:
                        r[f"{b}_{m}"] = v
            # Received over sent: the fraction of the datagrams that
            # arrived, and uipd's over veth's (veth: the kernel's own path).
            for b in backends:
                loss = r.get(f"{b}_loss_pct")
                r[f"{b}_delivered"] = round(1 - loss / 100, 4) if loss is not None else None
            if "uipd" in backends and "veth" in backends:
                u, v = r.get("uipd_delivered"), r.get("veth_delivered")
                r["uipd_over_veth_delivered"] = round(u / v, 3) if u is not None and v else None
        for b in backends:
            s = index.get((b, mtu, test))
            r[f"{b}_cpu_s"] = s["median_backend_cpu_s"] if s else None
        ratios.append(r)

    doc = machine(a)
    uipd_workers = sorted({r.get("workers") for r in rows
                           if r["backend"] in ("uipd", "uipd-epoll", "uipd-nosandbox")} - {None})
    doc.update({
        "kind": "bench",
        "duration_s": a.len, "runs": a.runs,
        "mtus": [int(m) for m in a.mtus.split()],
        "backends": backends, "tests": a.tests.split(),
        "queues": 1,
        "uipd_workers_seen": uipd_workers,
        "uipd_args": a.uipd_args or None,
        "pinning": {"uipd_cpus": a.cpus or None,
                    "clients_servers": "none (scheduler's choice)"},
        "paths": {
            "uipd": "uipd --mtu M -- CMD; guest -> 192.168.33.1 (host loopback) -> 127.0.0.1",
            "uipd-epoll": "the same with --io epoll (the engine where io_uring is refused)",
            "uipd-nosandbox": "the same with --no-sandbox (uipd/nosandbox: the sandbox's cost)",
            "slirp4netns": "slirp4netns --configure --mtu=M; guest -> 10.0.2.2 -> 127.0.0.1",
            "pasta": "pasta --config-net -m M -t none -u none -T none -U none --netns NS "
                     "(--runas 0); guest -> gateway 192.0.2.2 -> --map-gw -> 127.0.0.1; "
                     "tap path (no port forwarding, so no splice)",
            "veth": "kernel veth pair; guest -> 10.77.0.1 (outer end), no user-space hop",
        },
        "metrics": {"mbps": "receiver side Mbit/s", "tps": "transactions per second",
                    "p50_us/p99_us": "TCP_RR/CRR transaction latency, microseconds",
                    "backend_cpu_s": "utime+stime of the backend process, all threads, "
                                     "read just before it exits (covers setup + one test)",
                    "uipd_over_X": "uipd's median / X's median of the test's metric "
                                   "(>1: uipd better, for every metric listed)"},
        "ratios": ratios,
        "summary": summary,
        "raw": rows,
    })
    if a.cmd == "integrators":
        integrators_doc(doc)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)

    print(f"\n{doc['cpu_model']}, {doc['nproc']} CPUs, kernel {doc['kernel']}, "
          f"rev {a.rev}, {a.len} s x {a.runs} runs (medians)")
    head = f"{'test':<24}{'MTU':>6} {'unit':<12}" + "".join(f"{b:>12}" for b in backends)
    others = [o for o in ("uipd-epoll", "uipd-nosandbox", "slirp4netns", "pasta", "veth")
              if o in backends and "uipd" in backends]
    head += "".join(f"{'uipd/' + o.removeprefix('uipd-')[:5]:>12}" for o in others)
    print(head)
    for r in ratios:
        line = f"{r['test']:<24}{r['mtu']:>6} {r['unit']:<12}"
        line += "".join(f"{fmt(r.get(b)):>12}" for b in backends)
        line += "".join(f"{fmt(r.get('uipd_over_' + o), 2):>12}" for o in others)
        print(line)
    if any(r["test"] in RR_TESTS for r in ratios):
        print("\nTCP_RR / TCP_CRR latency p50 / p99 (us)")
    for r in ratios:
        if r["test"] in RR_TESTS:
            print(f"{r['test']:<24}{r['mtu']:>6} {'':<12}" + "".join(
                f"{fmt(r.get(b + '_p50_us')) + '/' + fmt(r.get(b + '_p99_us')):>12}"
                for b in backends))
    if any(r["test"] in UDP_TESTS for r in ratios):
        print("\nUDP_STREAM loss % (sent Mbit/s)")
    for r in ratios:
        if r["test"] in UDP_TESTS:
            print(f"{r['test']:<24}{r['mtu']:>6} {'':<12}" + "".join(
                f"{fmt(r.get(b + '_loss_pct'), 1) + ' (' + fmt(r.get(b + '_sent_mbps')) + ')':>12}"
                for b in backends))
    where = [r for r in ratios if r["test"].startswith("NETPERF_UDP")]
    if where:
        print("\nnetperf UDP: where datagrams went (medians): sent / guest interface TX drops "
              "(frames) / uipd reassembled, evicted / host socket buffer drops / received")
    for r in where:
        for b in backends:
            g = lambda m: fmt(r.get(f"{b}_{m}"))  # noqa: E731
            print(f"{r['test']:<24}{r['mtu']:>6} {b:<15}{g('sent_datagrams'):>9} "
                  f"{g('guest_tx_dropped_frames'):>9} {g('uipd_reassembled'):>8} "
                  f"{g('uipd_drops_frag_evicted'):>7} {g('host_rcvbuf_errors'):>8} "
                  f"{g('received_datagrams'):>8}")
    print("\nbackend CPU seconds per test (median; veth: kernel, not measured)")
    for r in ratios:
        print(f"{r['test']:<24}{r['mtu']:>6} {'':<12}" + "".join(
            f"{fmt(r.get(b + '_cpu_s'), 2):>12}" for b in backends))
    failed = [r for r in rows if "error" in r]
    if failed:
        print(f"\n{len(failed)} failed test(s); see 'raw' in the JSON")
    print(f"\nwritten: {a.out}")


def integrators_doc(doc):
    """perf/integrators-bench.sh: the same figures, podman in front."""
    doc["kind"] = "integrators-podman"
    for k in ("uipd-perf", "pasta"):
        doc["versions"].pop(k, None)
    doc["versions"]["podman"] = os.environ.get("PODMAN_VERSION")
    doc["queues"] = "uipd: one TAP queue per CPU (at most 4); slirp4netns: 1"
    doc["paths"] = {
        "uipd": "podman run --network slirp4netns:allow_host_loopback=true,mtu=M with "
                "network_cmd_path = a symlink named slirp4netns to target/release/uipd; "
                "container -> 10.0.2.2 -> 127.0.0.1",
        "slirp4netns": "the same, the symlink to /usr/bin/slirp4netns",
    }
    doc["metrics"]["backend_cpu_s"] = ("utime+stime of the backend process, all threads, "
                                       "sampled every 0.2 s until the container exits "
                                       "(covers setup + one test)")


def cmd_affinity(a):
    rows = [json.loads(line) for line in open(a.raw) if line.strip()]
    summary = summarise(rows, ["config", "test"])
    doc = machine(a)
    doc.update({"kind": "affinity", "duration_s": a.len, "runs": a.runs, "mtus": [a.mtu],
                "queues": 1, "multi_cpu_accepted": a.multi,
                "note": a.note, "summary": summary, "raw": rows})
    configs = []
    for r in rows:
        if r["config"] not in configs:
            configs.append(r["config"])
    table = []
    for c in configs:
        row = {"config": c}
        for s in summary:
            if s["config"] != c:
                continue
            row.update({k: s.get(k) for k in ("cpus", "client_cpu", "streams", "workers")})
            m = s["median"]
            if s["test"] in ("TCP_STREAM", "TCP_MAERTS"):
                row[s["test"] + "_mbps"] = m.get("mbps")
            elif s["test"] == "TCP_RR":
                row.update({"TCP_RR_tps": m.get("tps"), "TCP_RR_p50_us": m.get("p50_us"),
                            "TCP_RR_p99_us": m.get("p99_us")})
            row[s["test"] + "_uipd_cpu_s"] = s["median_backend_cpu_s"]
        table.append(row)
    doc["table"] = table
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"\n{doc['cpu_model']}, {doc['nproc']} CPUs, rev {a.rev}, MTU {a.mtu}, "
          f"{a.len} s x {a.runs} runs (medians)")
    print(f"{'config':<22}{'--cpus':>7}{'client':>7}{'-P':>3}{'wrk':>4}"
          f"{'STREAM':>9}{'MAERTS':>9}{'RR tps':>9}{'p50 us':>8}{'p99 us':>8}")
    for r in table:
        print(f"{r['config']:<22}{r.get('cpus') or '-':>7}{r.get('client_cpu') or '-':>7}"
              f"{r.get('streams') or 1:>3}{fmt(r.get('workers')):>4}"
              f"{fmt(r.get('TCP_STREAM_mbps')):>9}{fmt(r.get('TCP_MAERTS_mbps')):>9}"
              f"{fmt(r.get('TCP_RR_tps')):>9}{fmt(r.get('TCP_RR_p50_us'), 1):>8}"
              f"{fmt(r.get('TCP_RR_p99_us'), 1):>8}")
    if a.note:
        print(a.note)
    print(f"\nwritten: {a.out}")


COLORS = {"uipd": "#1f77b4", "uipd-epoll": "#9467bd", "uipd-nosandbox": "#17becf", "slirp4netns": "#ff7f0e", "pasta": "#2ca02c", "veth": "#7f7f7f"}


def human(v):
    if v is None:
        return ""
    if v >= 10000:
        return f"{v / 1000:.0f}k"
    if v >= 1000:
        return f"{v / 1000:.1f}k"
    return f"{v:.0f}"


def chart_bench(doc, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = doc["ratios"]
    backends = doc["backends"]
    norm = "veth" in backends
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(10, 1.3 * len(ratios) + 3), 10),
                                   gridspec_kw={"height_ratios": [3, 2]})
    width = 0.8 / max(1, len(backends))
    for i, b in enumerate(backends):
        xs, ys, labels = [], [], []
        for j, r in enumerate(ratios):
            v = r.get(b)
            if v is None:
                continue
            base = r.get("veth") if norm else 1
            if not base:
                continue
            xs.append(j + (i - (len(backends) - 1) / 2) * width)
            ys.append(v / base)
            labels.append(human(v))
        bars = ax1.bar(xs, ys, width, label=b, color=COLORS.get(b))
        for bar, text in zip(bars, labels):
            ax1.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                         ha="center", va="bottom", fontsize=7, rotation=90,
                         xytext=(0, 2), textcoords="offset points")
    ax1.set_yscale("log")
    ax1.set_xticks(range(len(ratios)))
    ax1.set_xticklabels([f"{r['test']}\nMTU {r['mtu']}\n({r['unit']})" for r in ratios],
                        fontsize=8)
    ax1.set_ylabel("relative to veth (log)" if norm else "value (log)")
    ax1.grid(axis="y", which="both", alpha=0.3)
    lo, hi = ax1.get_ylim()
    ax1.set_ylim(lo, hi * 4)  # headroom for the legend and the labels
    ax1.legend(loc="upper center", ncol=len(backends), fontsize=8)
    ax1.set_title("Throughput / rate per test, median; labels: absolute values"
                  + (", bars normalised to veth = 1" if norm else ""), fontsize=10)

    rr = [r for r in ratios if r["test"] in RR_TESTS]
    for i, b in enumerate(backends):
        for k, (pct, hatch, alpha) in enumerate((("p50", None, 1.0), ("p99", "//", 0.45))):
            xs, ys = [], []
            for j, r in enumerate(rr):
                v = r.get(f"{b}_{pct}_us")
                if v is None:
                    continue
                xs.append(j + (i - (len(backends) - 1) / 2) * width + (k - 0.5) * width / 2)
                ys.append(v)
            bars = ax2.bar(xs, ys, width / 2, color=COLORS.get(b), alpha=alpha, hatch=hatch,
                           label=f"{b} {pct}")
            for bar, v in zip(bars, ys):
                ax2.annotate(f"{v:.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                             ha="center", va="bottom", fontsize=6, xytext=(0, 1),
                             textcoords="offset points")
    ax2.set_yscale("log")
    ax2.set_xticks(range(len(rr)))
    ax2.set_xticklabels([f"{r['test']} MTU {r['mtu']}" for r in rr], fontsize=8)
    ax2.set_ylabel("latency, us (log)")
    ax2.grid(axis="y", which="both", alpha=0.3)
    lo, hi = ax2.get_ylim()
    ax2.set_ylim(lo, hi * 4)
    ax2.legend(fontsize=7, ncol=len(backends), loc="upper center")
    ax2.set_title("Transaction latency p50 (solid) / p99 (hatched), lower is better",
                  fontsize=10)
    fig.suptitle(f"uipd {doc['git_rev']} vs slirp4netns / pasta / veth - {doc['date']}\n"
                 f"{doc['cpu_model']}, {doc['nproc']} CPUs, kernel {doc['kernel']}, "
                 f"{doc['duration_s']} s x {doc['runs']} runs", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def chart_affinity(doc, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = doc["table"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(12, 1.6 * len(table) + 4), 6))
    x = range(len(table))
    for k, (key, name, color) in enumerate((("TCP_STREAM_mbps", "TCP_STREAM", "#1f77b4"),
                                            ("TCP_MAERTS_mbps", "TCP_MAERTS", "#ff7f0e"))):
        ys = [r.get(key) or 0 for r in table]
        bars = ax1.bar([i + (k - 0.5) * 0.4 for i in x], ys, 0.4, label=name, color=color)
        for bar, v in zip(bars, ys):
            ax1.annotate(human(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                         ha="center", va="bottom", fontsize=7)
    labels = [r["config"].replace(" ", "\n") + f"\n({r.get('workers')} wrk)" for r in table]
    ax1.set_xticks(list(x))
    ax1.set_xticklabels(labels, fontsize=7)
    ax1.set_ylabel("Mbit/s")
    ax1.legend(fontsize=8)
    ax1.set_title("uipd throughput by worker/client placement", fontsize=10)
    ax1.grid(axis="y", alpha=0.3)
    for k, (key, name, alpha) in enumerate((("TCP_RR_p50_us", "p50", 1.0),
                                            ("TCP_RR_p99_us", "p99", 0.45))):
        ys = [r.get(key) or 0 for r in table]
        bars = ax2.bar([i + (k - 0.5) * 0.4 for i in x], ys, 0.4, label=f"TCP_RR {name}",
                       color="#2ca02c", alpha=alpha)
        for bar, v in zip(bars, ys):
            ax2.annotate(f"{v:.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                         ha="center", va="bottom", fontsize=7)
    ax2.set_xticks(list(x))
    ax2.set_xticklabels(labels, fontsize=7)
    ax2.set_ylabel("latency, us")
    ax2.legend(fontsize=8)
    ax2.set_title("TCP_RR latency (lower is better)", fontsize=10)
    ax2.grid(axis="y", alpha=0.3)
    fig.suptitle(f"uipd {doc['git_rev']} CPU affinity - {doc['date']} - {doc['cpu_model']}, "
                 f"{doc['nproc']} CPUs, MTU {doc['mtus'][0]}, "
                 f"{doc['duration_s']} s x {doc['runs']} runs", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


# ── perf/guest-bench.sh: one QEMU TCG guest, several network backends ──

GUEST_BACKENDS = ["vhost", "vhost-nooffload", "stream", "slirp"]
GUEST_DIRS = {"up": "guest -> host (iperf3 -c)", "down": "host -> guest (iperf3 -c -R)"}
# The columns of each CPU snapshot file written by guest-bench.sh's snap().
SNAP = ["qemu_total", "qemu_vcpu", "uipd", "iperf3_server", "wall"]


def read_snap(d, name):
    text = read(os.path.join(d, "cpu." + name)).split()
    if len(text) != len(SNAP):
        return None
    return {k: (None if v == "null" else float(v)) for k, v in zip(SNAP, text)}


def delta(a, b, key):
    if a is None or b is None or a.get(key) is None or b.get(key) is None:
        return None
    return round(b[key] - a[key], 3)


def cmd_guest_record(a):
    """One boot's results: iperf3 JSON from the console, CPU per window."""
    console = read(os.path.join(a.dir, "guest.out")).replace("\r", "")
    rec = {"backend": a.backend, "run": int(a.run),
           "qemu_rc": read(os.path.join(a.dir, "qemu.rc")).strip(),
           "cmdline": read(os.path.join(a.dir, "cmdline")).strip().splitlines(),
           "marks": [line for line in console.splitlines() if line.startswith("MARK ")]}
    blocks, cur, buf = {}, None, []
    for line in console.splitlines():
        if line.startswith("BEGIN ") and cur is None:
            cur, buf = line.split()[1], []
        elif line.startswith("END ") and cur is not None:
            blocks[cur], cur = "\n".join(buf), None
        elif cur is not None:
            buf.append(line)
    snaps = {m: read_snap(a.dir, m) for m in ("ready", "up_start", "up_end", "down_start",
                                              "down_end", "done")}
    errors = []
    for d in GUEST_DIRS:
        r = {}
        try:
            res = json.loads(blocks[d])
        except (KeyError, ValueError):
            res = None
        if not isinstance(res, dict) or res.get("error") or "end" not in res:
            errors.append(f"{d}: " + (str(res.get("error")) if isinstance(res, dict)
                                      else (blocks.get(d) or "no iperf3 output")[:300]))
        else:
            end = res["end"]
            r["mbps"] = end.get("sum_received", {}).get("bits_per_second", 0) / 1e6
            r["bytes"] = end.get("sum_received", {}).get("bytes")
            if "retransmits" in end.get("sum_sent", {}):
                r["retransmits"] = end["sum_sent"]["retransmits"]
        s0, s1 = snaps[d + "_start"], snaps[d + "_end"]
        if s0 is None or s1 is None:
            errors.append(f"{d}: no CPU snapshot around the window")
        else:
            cpu = {k: delta(s0, s1, k) for k in ("qemu_total", "qemu_vcpu", "uipd",
                                                  "iperf3_server")}
            cpu["window_s"] = delta(s0, s1, "wall")
            if cpu["qemu_total"] is not None and cpu["qemu_vcpu"] is not None:
                cpu["qemu_other"] = round(cpu["qemu_total"] - cpu["qemu_vcpu"], 3)
                cpu["net"] = round(cpu["qemu_other"] + (cpu["uipd"] or 0), 3)
                cpu["total"] = round(cpu["qemu_total"] + (cpu["uipd"] or 0), 3)
            r["cpu_s"] = cpu
            if r.get("bytes") and cpu.get("net") is not None:
                gb = r["bytes"] / 1e9
                r["net_cpu_s_per_gb"] = round(cpu["net"] / gb, 3)
                r["total_cpu_s_per_gb"] = round(cpu["total"] / gb, 3)
        rec[d] = r
    ready, done = snaps["ready"], snaps["done"]
    rec["boot_cpu_s"] = {"qemu_total": ready and ready["qemu_total"],
                         "uipd": ready and ready["uipd"]}
    rec["whole_run_cpu_s"] = {"qemu_total": done and done["qemu_total"],
                              "uipd": read(os.path.join(a.dir, "uipd.cpu")).strip() or None}
    if rec["whole_run_cpu_s"]["uipd"] not in (None, "null"):
        rec["whole_run_cpu_s"]["uipd"] = float(rec["whole_run_cpu_s"]["uipd"])
    err = read(os.path.join(a.dir, "uipd.err"))
    feats = [line.split("guest features: ", 1)[1].strip() for line in err.splitlines()
             if "guest features: " in line]
    if feats:
        rec["guest_features"] = feats[-1].split()
    if errors:
        rec["error"] = "; ".join(errors)
        rec["qemu_log"] = read(os.path.join(a.dir, "qemu.log"), 1000).strip()
        rec["uipd_log"] = err[-1000:].strip()
        rec["iperf3_server_log"] = read(os.path.join(a.dir, "iperf-server.log"), 1000).strip()
        rec["console_tail"] = console[-1500:]
        print(f"  FAILED {a.backend} run {a.run}: {rec['error'][:300]}", file=sys.stderr)
    else:
        print(f"  {a.backend}: up {rec['up']['mbps']:.0f} Mbit/s, down "
              f"{rec['down']['mbps']:.0f} Mbit/s", file=sys.stderr)
    with open(a.raw, "a") as f:
        f.write(json.dumps(rec) + "\n")


GUEST_CPU_KEYS = ["qemu_vcpu", "qemu_other", "uipd", "net", "total", "iperf3_server",
                  "window_s"]


def cmd_guest(a):
    rows = [json.loads(line) for line in open(a.raw) if line.strip()]
    backends = [b for b in GUEST_BACKENDS if any(r["backend"] == b for r in rows)]
    table = []
    for b in backends:
        for d in GUEST_DIRS:
            ok = [r[d] for r in rows if r["backend"] == b and "mbps" in r.get(d, {})
                  and r[d].get("cpu_s", {}).get("net") is not None]
            t = {"backend": b, "dir": d, "runs_ok": len(ok),
                 "runs_failed": sum(1 for r in rows if r["backend"] == b) - len(ok),
                 "mbps": median([x["mbps"] for x in ok]),
                 "mbps_runs": [round(x["mbps"], 1) for x in ok],
                 "retransmits": median([x.get("retransmits") for x in ok])}
            t["cpu_s"] = {k: median([x.get("cpu_s", {}).get(k) for x in ok])
                          for k in GUEST_CPU_KEYS}
            t["net_cpu_s_per_gb"] = median([x.get("net_cpu_s_per_gb") for x in ok])
            t["total_cpu_s_per_gb"] = median([x.get("total_cpu_s_per_gb") for x in ok])
            table.append(t)
    index = {(t["backend"], t["dir"]): t for t in table}

    def ratio(x, y):
        return round(x / y, 3) if x and y else None

    ratios = []
    for b in backends:
        if b == "slirp" or "slirp" not in backends:
            continue
        for d in GUEST_DIRS:
            u, s = index[(b, d)], index[("slirp", d)]
            ratios.append({
                "backend": b, "dir": d,
                "mbps_over_slirp": ratio(u["mbps"], s["mbps"]),
                "net_cpu_over_slirp": ratio(u["cpu_s"]["net"], s["cpu_s"]["net"]),
                "total_cpu_over_slirp": ratio(u["cpu_s"]["total"], s["cpu_s"]["total"]),
                "net_cpu_per_gb_over_slirp": ratio(u["net_cpu_s_per_gb"],
                                                   s["net_cpu_s_per_gb"]),
            })
    doc = machine(a)
    doc["versions"] = {
        "uipd": doc["versions"].get("uipd"),
        "iperf3": doc["versions"].get("iperf3"),
        "qemu": (subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                                text=True).stdout.splitlines() or [None])[0],
    }
    doc.update({
        "kind": "guest",
        "duration_s": a.len, "runs": a.runs, "backends": backends,
        "guest": a.note + ", -accel tcg,thread=multi, RAM in a shared memfd, "
                 "virtio-net-pci vectors=0 (INTx) for every backend, MTU 1500, "
                 "busybox + iperf3 initramfs",
        "paths": {
            "vhost": "uipd --vhost-user SOCK --workers 1; QEMU -netdev vhost-user "
                     "(uipd reads/writes the virtqueues in guest memory); guest -> "
                     "192.168.33.1 -> 127.0.0.1",
            "vhost-nooffload": "the same with uipd --no-offload (no CSUM/TSO features "
                               "offered: the guest checksums and segments itself)",
            "stream": "uipd --socket SOCK (default workers); QEMU -netdev stream, each "
                      "frame after a 4-byte length (no virtio-net header, no offloads); "
                      "guest -> 192.168.33.1 -> 127.0.0.1",
            "slirp": "QEMU -netdev user (libslirp in QEMU's main loop); guest -> "
                     "10.0.2.2 -> 127.0.0.1",
        },
        "metrics": {
            "mbps": "iperf3 receiver-side Mbit/s (end.sum_received of the guest's "
                    "iperf3 -J), against iperf3 -s on the outer namespace's 127.0.0.1",
            "cpu_s": "CPU seconds (utime+stime) during one iperf3 direction, from the "
                     "guest's MARK before the client starts to its MARK after it "
                     "exits (window_s wall seconds, about -l + 1)",
            "cpu_s.qemu_vcpu": "QEMU's vCPU threads ('CPU n/TCG'): the emulated guest "
                               "(its kernel's TCP stack, virtio-net driver, iperf3) and "
                               "whatever QEMU does synchronously on a guest MMIO/PIO exit "
                               "(a virtqueue kick: for vhost-user an eventfd write)",
            "cpu_s.qemu_other": "QEMU's other threads: main loop (virtio-net's TX bottom "
                                "half and RX delivery, and for slirp libslirp itself, its "
                                "host sockets included; for stream the socket I/O; for "
                                "vhost-user interrupt injection) and helper threads. The "
                                "vCPU/other split is approximate; qemu_total is exact",
            "cpu_s.uipd": "the uipd process, all threads (null for slirp: it has none)",
            "cpu_s.net": "qemu_other + uipd: the network backend's cost outside the "
                         "guest (for slirp: QEMU's non-vCPU threads only)",
            "cpu_s.total": "qemu_total + uipd: everything the VM and its backend cost",
            "cpu_s.iperf3_server": "the host-side iperf3 -s (same job for every backend)",
            "net_cpu_s_per_gb": "cpu_s.net per 10^9 bytes received",
            "*_over_slirp": "uipd backend / slirp (mbps: >1 uipd faster; cpu: <1 uipd "
                            "cheaper)",
        },
        "table": table, "ratios": ratios, "raw": rows,
    })
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)

    print(f"\n{doc['cpu_model']}, {doc['nproc']} CPUs, kernel {doc['kernel']}, rev {a.rev}; "
          f"guest {a.note}, TCG; iperf3 {a.len} s per direction x {a.runs} runs (medians)")
    print(f"{'':<33}{'CPU seconds in the iperf3 window':^37}")
    print(f"{'backend':<16}{'dir':<5}{'Mbit/s':>8}{'ok':>4}"
          f"{'vCPU':>7}{'qemu-o':>7}{'uipd':>6}{'net':>6}{'total':>6}{'netCPU/GB':>10}")
    for t in table:
        c = t["cpu_s"]
        print(f"{t['backend']:<16}{t['dir']:<5}{fmt(t['mbps']):>8}{t['runs_ok']:>4}"
              f"{fmt(c['qemu_vcpu'], 2):>7}{fmt(c['qemu_other'], 2):>7}"
              f"{fmt(c['uipd'], 2):>6}{fmt(c['net'], 2):>6}{fmt(c['total'], 2):>6}"
              f"{fmt(t['net_cpu_s_per_gb'], 2):>10}")
    if ratios:
        print(f"\n{'ratio to slirp':<16}{'dir':<5}{'Mbit/s':>8}{'net CPU':>9}{'total CPU':>10}"
              f"{'netCPU/GB':>10}")
        for r in ratios:
            print(f"{r['backend']:<16}{r['dir']:<5}{fmt(r['mbps_over_slirp'], 2):>8}"
                  f"{fmt(r['net_cpu_over_slirp'], 2):>9}{fmt(r['total_cpu_over_slirp'], 2):>10}"
                  f"{fmt(r['net_cpu_per_gb_over_slirp'], 2):>10}")
    print("vCPU: QEMU's vCPU threads (the emulated guest); qemu-o: QEMU's other threads "
          "(slirp lives here);\nnet = qemu-o + uipd; total = all of QEMU + uipd")
    failed = [r for r in rows if "error" in r]
    if failed:
        print(f"\n{len(failed)} failed run(s); see 'raw' in the JSON")
    print(f"\nwritten: {a.out}")


GUEST_COLORS = {"vhost": "#1f77b4", "vhost-nooffload": "#aec7e8", "stream": "#9467bd",
                "slirp": "#ff7f0e"}


def chart_guest(doc, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = doc["table"]
    backends = doc["backends"]
    dirs = list(GUEST_DIRS)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.5))
    width = 0.8 / max(1, len(backends))
    idx = {(t["backend"], t["dir"]): t for t in table}
    for i, b in enumerate(backends):
        xs = [j + (i - (len(backends) - 1) / 2) * width for j in range(len(dirs))]
        ys = [idx[(b, d)]["mbps"] or 0 for d in dirs]
        bars = ax1.bar(xs, ys, width, label=b, color=GUEST_COLORS.get(b))
        for bar, v in zip(bars, ys):
            ax1.annotate(human(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                         ha="center", va="bottom", fontsize=7)
    ax1.set_xticks(range(len(dirs)))
    ax1.set_xticklabels([GUEST_DIRS[d] for d in dirs], fontsize=8)
    ax1.set_ylabel("Mbit/s (iperf3 receiver)")
    ax1.legend(fontsize=8)
    ax1.grid(axis="y", alpha=0.3)
    ax1.set_title("Throughput, median (TCG guest: compare ratios)", fontsize=10)
    labels, x = [], 0
    for d in dirs:
        for b in backends:
            c = idx[(b, d)]["cpu_s"]
            bottom = 0
            for k, (key, color) in enumerate((("qemu_vcpu", "#c7c7c7"),
                                              ("qemu_other", "#ff7f0e"),
                                              ("uipd", "#1f77b4"))):
                v = c.get(key) or 0
                ax2.bar(x, v, 0.7, bottom=bottom, color=color,
                        label={"qemu_vcpu": "QEMU vCPU threads (guest)",
                               "qemu_other": "QEMU other threads (slirp here)",
                               "uipd": "uipd"}[key] if x == 0 else None)
                bottom += v
            labels.append(f"{b}\n{d}")
            x += 1
        x += 0.5
    pos = []
    x = 0
    for d in dirs:
        for b in backends:
            pos.append(x)
            x += 1
        x += 0.5
    ax2.set_xticks(pos)
    ax2.set_xticklabels(labels, fontsize=7)
    ax2.set_ylabel(f"CPU seconds in a {doc['duration_s']} s iperf3 window")
    ax2.legend(fontsize=7)
    ax2.grid(axis="y", alpha=0.3)
    ax2.set_title("CPU per direction, median", fontsize=10)
    fig.suptitle(f"uipd {doc['git_rev']}: QEMU TCG guest, vhost-user / stream vs -netdev user "
                 f"- {doc['date']}\n{doc['cpu_model']}, {doc['nproc']} CPUs, "
                 f"{doc['duration_s']} s x {doc['runs']} runs", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def cmd_chart(a):
    doc = json.load(open(a.json))
    chart = {"affinity": chart_affinity, "guest": chart_guest}.get(doc.get("kind"), chart_bench)
    chart(doc, a.png)
    print(f"written: {a.png}")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    for name in ("raw", "backend", "mtu", "test", "run", "cpu", "dir", "extra"):
        r.add_argument(name)
    g = sub.add_parser("guest-record")
    for name in ("raw", "backend", "run", "dir"):
        g.add_argument(name)
    for name in ("bench", "integrators", "affinity", "guest"):
        s = sub.add_parser(name)
        s.add_argument("raw")
        s.add_argument("out")
        s.add_argument("--rev", default="unknown")
        s.add_argument("--len", type=int, default=0)
        s.add_argument("--runs", type=int, default=0)
        s.add_argument("--mtus", default="")
        s.add_argument("--mtu", type=int, default=0)
        s.add_argument("--backends", default="")
        s.add_argument("--tests", default="")
        s.add_argument("--cpus", default="")
        s.add_argument("--uipd-args", default="")
        s.add_argument("--multi", default="")
        s.add_argument("--note", default="")
    sub.add_parser("tx-dropped")
    c = sub.add_parser("chart")
    c.add_argument("json")
    c.add_argument("png")
    a = p.parse_args()
    {"record": cmd_record, "bench": cmd_bench, "integrators": cmd_bench, "affinity": cmd_affinity,
     "chart": cmd_chart, "guest-record": cmd_guest_record, "guest": cmd_guest,
     "tx-dropped": cmd_tx_dropped}[a.cmd](a)


if __name__ == "__main__":
    main()
