#!/usr/bin/env python3
"""Before/after performance of two roomcast-edge binaries, measured side by side.

Runs the README's 10k-room matrix (one edge, raw-TCP clients, `--publish-via link`, tick 100 ms
and 0, 10 and 100 msg/s, both drivers) and the 100k hold (`--hold-only`, both drivers) with the
same roomcast-bench, alternating the two edges run by run so both see the same machine noise, and
prints medians (with ranges) as a Markdown table.

`--only overload` runs issue 11's matrix instead: one 10k room of WebSocket/JSON viewers,
100-byte payloads, 10, 50 and 100 msg/s (100k, 500k and 1M deliveries/s), with a window of 0 and
100 ms (`--publish-via link`, the edge's `--tick-ms`) and the control plane's default levels
(`--publish-via control`: a 10k room sits at level 3, a 500 ms tick), both drivers.
`--only slow-viewers` runs the 50 and 100 msg/s rows with a window of 0 and 100 ms on a slower
viewer side: one client thread (`--client-threads 1`) reads all 10,000 sockets, so the viewers,
not the edge, set the pace, as with the single-threaded probe of issue 11.

    cargo build --release -p roomcast-bench -p roomcast-engine -p roomcast-control
    python3 bench/scripts/before_after.py --before /path/to/old/roomcast-edge \
        --after target/release/roomcast-edge --runs 3 [--only room|hold]

The bench binary is the one next to --after unless --bench is given. Each run's JSON report is
kept in --out (default target/before-after/).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys


def find(value, key):
    """The first value under `key` anywhere in a JSON document (depth first)."""
    if isinstance(value, dict):
        if key in value:
            return value[key]
        for v in value.values():
            got = find(v, key)
            if got is not None:
                return got
    elif isinstance(value, list):
        for v in value:
            got = find(v, key)
            if got is not None:
                return got
    return None


def room_metrics(report):
    groups = find(report, "groups") or [{}]
    latency = groups[0].get("latency_ms", {})
    return {
        "delivered msg/s": find(report, "msgs_per_s"),
        "frames/s": find(report, "frames_per_s"),
        "complete %": 100 * (groups[0].get("completeness") or 0),
        "p50 ms": latency.get("p50"),
        "p99 ms": latency.get("p99"),
        "edge µs CPU/frame": find(report, "edge_us_per_frame"),
        "× floor": find(report, "edge_frame_vs_floor"),
        "writes/flush": find(report, "write_calls_per_flush"),
    }


def overload_metrics(report):
    groups = find(report, "groups") or [{}]
    latency = groups[0].get("latency_ms", {})
    delta = (find(report, "edge_counters") or {}).get("delta", {})
    duration = (report.get("config") or {}).get("duration") or 0
    batches = delta.get("batches")
    msgs, frames = find(report, "msgs_per_s"), find(report, "frames_per_s")
    return {
        "delivered msg/s": msgs,
        "msgs/frame": msgs / frames if msgs and frames else None,
        "complete %": 100 * (groups[0].get("completeness") or 0),
        "p50 ms": latency.get("p50"),
        "p99 ms": latency.get("p99"),
        "batches/s": batches / duration if batches is not None and duration else None,
        "edge µs/msg": find(report, "edge_us_per_msg"),
        "edge cores": find(report, "edge_cores"),
        "iovecs/write": (find(report, "edge_counters") or {}).get("iovecs_per_write"),
    }


def hold_metrics(report):
    rss = find(report, "edge_rss_per_conn")
    return {
        "joined": find(report, "joined"),
        "connect s": find(report, "time_to_all_connected_secs"),
        "edge RSS KiB/conn": rss / 1024 if rss is not None else None,
        "edge cores holding": find(report, "edge_cores"),
    }


def matrix(only):
    configs = []
    if only in (None, "room"):
        for rate in (10, 100):
            for tick in (100, 0):
                for io in ("uring", "epoll"):
                    name = f"10k room, {rate} msg/s, tick {tick}, {io}"
                    args = ["--publish-via", "link", "--conns", "10000", "--rate", str(rate),
                            "--duration", "10", f"--edge-arg=--tick-ms={tick}",
                            f"--edge-arg=--io={io}"]
                    configs.append((name, args, room_metrics))
    # Issue 11's 10k room of WebSocket/JSON viewers.
    room = ["--conns", "10000", "--rooms", "1", "--transport", "ws-json", "--payload", "100",
            "--warmup", "3", "--duration", "10"]
    if only == "slow-viewers":
        for rate in (50, 100):
            for window in ("0", "100"):
                for io in ("uring", "epoll"):
                    name = f"{rate} msg/s, window {window} ms, one client thread, {io}"
                    args = [*room, "--client-threads", "1", "--publish-via", "link",
                            f"--edge-arg=--tick-ms={window}", "--rate", str(rate),
                            f"--edge-arg=--io={io}"]
                    configs.append((name, args, overload_metrics))
    if only == "overload":
        for rate in (10, 50, 100):
            for window in ("0", "100", "levels"):
                for io in ("uring", "epoll"):
                    if window == "levels":
                        name = f"{rate} msg/s, default levels, {io}"
                        via = ["--publish-via", "control"]
                    else:
                        name = f"{rate} msg/s, window {window} ms, {io}"
                        via = ["--publish-via", "link", f"--edge-arg=--tick-ms={window}"]
                    args = [*room, *via, "--rate", str(rate), f"--edge-arg=--io={io}"]
                    configs.append((name, args, overload_metrics))
    if only in (None, "hold"):
        for io in ("uring", "epoll"):
            name = f"100k hold, {io}"
            args = ["--conns", "100000", "--hold-only", "--duration", "20",
                    f"--edge-arg=--io={io}"]
            configs.append((name, args, hold_metrics))
    return configs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--before", required=True, help="the old roomcast-edge binary")
    p.add_argument("--after", required=True, help="the new roomcast-edge binary")
    p.add_argument("--bench", help="roomcast-bench (default: next to --after)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--only", choices=["room", "hold", "overload", "slow-viewers"])
    p.add_argument("--out", default="target/before-after")
    a = p.parse_args()
    bench = a.bench or os.path.join(os.path.dirname(a.after), "roomcast-bench")
    os.makedirs(a.out, exist_ok=True)
    results = {}
    for name, args, metrics in matrix(a.only):
        for run in range(a.runs):
            # Alternate which binary goes first, so a drifting machine favours neither.
            order = [("before", a.before), ("after", a.after)]
            if run % 2:
                order.reverse()
            for label, edge in order:
                slug = name.replace(" ", "_").replace(",", "").replace("/", "")
                out = os.path.join(a.out, f"{slug}-{label}-{run}.json")
                cmd = [bench, "run", *args, "--edge-bin", edge, "--json-out", out]
                print(f"# {label} run {run + 1}/{a.runs}: {' '.join(cmd)}", file=sys.stderr,
                      flush=True)
                done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True)
                if done.returncode != 0 or not os.path.exists(out):
                    print(done.stderr[-2000:], file=sys.stderr)
                    continue
                with open(out) as f:
                    got = metrics(json.load(f))
                print(f"#   {got}", file=sys.stderr, flush=True)
                results.setdefault((name, label), []).append(got)
    print_table(results)


def fmt(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    digits = 0 if med >= 1000 else (2 if med < 100 else 1)
    if lo == hi or len(values) == 1:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} ({lo:,.{digits}f}–{hi:,.{digits}f})"


def print_table(results):
    by_config = {}
    for (name, label), runs in results.items():
        by_config.setdefault(name, {})[label] = runs
    header = None
    for name, labels in by_config.items():
        keys = list(next(iter(labels.values()))[0].keys())
        if header != keys:
            header = keys
            print()
            print("| config | edge | " + " | ".join(keys) + " |")
            print("|---|---|" + "---|" * len(keys))
        for label in ("before", "after"):
            runs = labels.get(label, [])
            cells = [fmt([r[k] for r in runs]) for k in keys]
            print(f"| {name} | {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
