#!/usr/bin/env python3
"""Upstream figures (bench/README.md, "Upstream"): the upstream scenarios and the same load
without senders, several rounds each, with medians.

Each round runs, in an order that rotates from round to round,

  baseline  roomcast-bench run bench/scenarios/upstream.toml --senders 0   (the backend idles)
  proxy     roomcast-bench run bench/scenarios/upstream.toml
  direct    roomcast-bench run bench/scenarios/upstream-direct.toml

(flags after `--` go to every run), keeps each run's JSON and output in --out-dir, and prints
one row per run and the medians (with ranges) per variant: sends/s attempted and answered, the
outcomes, the reply's p50/p99/max, CPU per answered send of the edges, the control plane and the
backend, and the downstream figures (the load's delivered msg/s, the normal group's p50/p99),
plus the cores the host spent outside the benchmark in the window and, of them, in interrupts and
softirqs (charged to no process: on loopback, much of the network stack's receive work; the rest
is other work on a shared host, and runs where it is high measure the neighbours too).

--quiet-wait S waits before each run (at most S seconds) until the host has been quiet for 5 s:
under --quiet-cores busy cores and no compiler running. The runs themselves are not retried.

  cargo build --release -p roomcast-bench -p roomcast-engine -p roomcast-control \\
      -p roomcast-example-backend
  python3 bench/scripts/upstream_compare.py --rounds 3
  python3 bench/scripts/upstream_compare.py --rounds 1 --variants proxy -- --conns 2000
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCENARIOS = os.path.join(ROOT, "bench", "scenarios")
VARIANTS = {
    "baseline": [os.path.join(SCENARIOS, "upstream.toml"), "--senders", "0"],
    "proxy": [os.path.join(SCENARIOS, "upstream.toml")],
    "direct": [os.path.join(SCENARIOS, "upstream-direct.toml")],
}
COMPILERS = ("rustc", "cc1", "cc1plus", "ld", "cargo")


def busy_cores(secs):
    """Busy cores of the host over `secs` (from /proc/stat)."""

    def read():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    total0, idle0 = read()
    time.sleep(secs)
    total1, idle1 = read()
    ticks = os.sysconf("SC_CLK_TCK")
    return ((total1 - total0) - (idle1 - idle0)) / ticks / secs


def compiler_running():
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() in COMPILERS:
                    return True
        except OSError:
            pass
    return False


def wait_quiet(max_secs, cores):
    deadline = time.time() + max_secs
    while time.time() < deadline:
        if not compiler_running() and busy_cores(5) < cores:
            return True
        time.sleep(5)
    print(f"upstream_compare: the host did not go quiet within {max_secs:.0f} s; running anyway",
          file=sys.stderr)
    return False


def get(d, *path):
    for p in path:
        if not isinstance(d, dict) or d.get(p) is None:
            return None
        d = d[p]
    return d


def figures(r):
    """The row of one run's JSON."""
    u = r.get("upstream") or {}
    w = u.get("window") or {}
    cpu = r.get("cpu") or {}
    normal = next((g for g in get(r, "delivery", "groups") or [] if g.get("group") == "normal"), {})
    secs = get(r, "window", "secs") or 1.0
    upstream_per_s = get(u, "delivered", "window_msgs_per_s") or 0.0
    delivered = get(r, "delivery", "msgs_per_s") or 0.0
    return {
        "sends/s": w.get("attempted_per_s"),
        "answered/s": w.get("answered_per_s"),
        "published/s": w.get("published_per_s"),
        "not bcast/s": w.get("not_broadcast_per_s"),
        "rate_limited/s": (w["rate_limited"] / secs) if "rate_limited" in w else None,
        "unavail/s": (w["unavailable"] / secs) if "unavailable" in w else None,
        "other/s": (w["other"] / secs) if "other" in w else None,
        "reply p50": get(u, "reply_ms", "p50"),
        "reply p99": get(u, "reply_ms", "p99"),
        "reply max": get(u, "reply_ms", "max"),
        "edge us/send": get(u, "cpu", "edge_us_per_send"),
        "ctl us/send": get(u, "cpu", "control_us_per_send"),
        "backend us/send": get(u, "cpu", "backend_us_per_send"),
        "load msg/s": delivered - upstream_per_s,
        "sends recv msg/s": upstream_per_s if u else None,
        "p50 ms": get(normal, "latency_ms", "p50"),
        "p99 ms": get(normal, "latency_ms", "p99"),
        "complete": normal.get("completeness"),
        "edge cores": cpu.get("edge_cores"),
        "ctl cores": cpu.get("control_cores"),
        "backend cores": cpu.get("backend_cores"),
        "client cores": cpu.get("clients_cores"),
        "other cores": cpu.get("other_busy_cores"),
        "irq cores": cpu.get("irq_softirq_cores"),
    }


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.2f}"
    return str(v)


def main():
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="baseline,proxy,direct")
    ap.add_argument("--bench", default=os.path.join(ROOT, "target", "release", "roomcast-bench"))
    ap.add_argument("--out-dir", default="/tmp/upstream-compare")
    ap.add_argument("--quiet-wait", type=float, default=0.0, metavar="S")
    ap.add_argument("--quiet-cores", type=float, default=0.2)
    ap.add_argument("--pause", type=float, default=3.0, help="seconds between runs (ports settle)")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r} (one of {', '.join(VARIANTS)})")
    os.makedirs(args.out_dir, exist_ok=True)
    rows = []
    for rnd in range(args.rounds):
        order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]
        for v in order:
            if args.quiet_wait > 0:
                wait_quiet(args.quiet_wait, args.quiet_cores)
            name = f"{v}-{rnd + 1}"
            out = os.path.join(args.out_dir, name)
            cmd = [args.bench, "run", *VARIANTS[v], *extra,
                   "--json-out", out + ".json", "--log-dir", out]
            print(f"upstream_compare: round {rnd + 1}, {v}: {' '.join(cmd)}", file=sys.stderr)
            with open(out + ".txt", "w") as log:
                status = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
            if status != 0:
                print(f"upstream_compare: {name} failed ({status}); see {out}.txt", file=sys.stderr)
                continue
            with open(out + ".json") as f:
                r = json.load(f)
            row = figures(r)
            rows.append((v, rnd + 1, row))
            summary = next((l for l in open(out + ".txt") if l.startswith("summary:")), "")
            print(summary.rstrip(), file=sys.stderr)
            time.sleep(args.pause)
    if not rows:
        return 1
    keys = list(rows[0][2].keys())
    print("| run | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for v, rnd, row in rows:
        print(f"| {v} {rnd} | " + " | ".join(fmt(row[k]) for k in keys) + " |")
    print()
    print("medians (min-max):")
    print("| variant | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for v in variants:
        mine = [row for (vv, _, row) in rows if vv == v]
        if not mine:
            continue
        cells = []
        for k in keys:
            xs = [row[k] for row in mine if row[k] is not None]
            if not xs:
                cells.append("-")
            elif len(xs) == 1:
                cells.append(fmt(xs[0]))
            else:
                cells.append(f"{fmt(statistics.median(xs))} ({fmt(min(xs))}-{fmt(max(xs))})")
        print(f"| {v} ({len(mine)}) | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
