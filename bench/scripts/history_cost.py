#!/usr/bin/env python3
"""History's cost on the control plane's publish path (issue 12): throughput with history on
vs off, back to back, and memory per stored message.

Each round starts `roomcast-control` (embedded edge, as the README's control-plane figures are
measured) twice — once with `--history-max-bytes=0` (history off: epochs, positions and dedupe
still work, no message is stored) and once with its defaults (history on) — and runs
`roomcast-bench run bench/scenarios/control-publish.toml --no-spawn --control-pid PID` against
each. The order alternates round by round (off/on, on/off, ...) so both modes see the same
machine noise. It prints medians (with ranges) as a Markdown table:

* published and delivered msg/s, completeness, control-plane CPU per published message;
* the history at the end from the control plane's /metrics (`roomcast_control_history_messages`,
  `_bytes`): messages stored and bytes per message as the history counts them (kind + data +
  its bookkeeping), which is what --history-max-bytes bounds;
* the control process's RSS growth from idle (clients joined) to the end: with history on minus
  with history off, per stored message, is what a stored message really costs (allocator
  included).

    cargo build --release -p roomcast-bench -p roomcast-control
    python3 bench/scripts/history_cost.py --rounds 3
    python3 bench/scripts/history_cost.py --rounds 1 -- --rate 100000 --duration 5   # bench flags

Flags after `--` go to every `roomcast-bench run`. The ports (API, link, edge WS/TCP) are
--port-base .. --port-base+3 (default 9090..9093); each run's JSON and logs are kept in --out
(default target/history-cost/).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

MODES = {
    "off": ["--history-max-bytes=0"],
    "on": [],
}


def dig(doc, *path):
    for key in path:
        if isinstance(doc, list):
            doc = doc[key] if isinstance(key, int) and key < len(doc) else None
        elif isinstance(doc, dict):
            doc = doc.get(key)
        else:
            return None
    return doc


def metrics(report):
    return {
        "published msg/s": dig(report, "publishing", "rate_in_window"),
        "delivered msg/s": dig(report, "delivery", "msgs_per_s"),
        "complete %": 100 * (dig(report, "delivery", "groups", 0, "completeness") or 0),
        "control µs/msg": dig(report, "cpu", "control_us_per_published"),
        "control cores": dig(report, "cpu", "control_cores"),
        "stored msgs": dig(report, "control", "history", "messages"),
        "history B/msg": dig(report, "control", "history", "bytes_per_message"),
        "RSS growth MiB": (dig(report, "control", "rss_growth") or 0) / 2**20,
    }


def wait_healthy(url, proc, limit=20.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"roomcast-control exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"roomcast-control did not answer {url}/healthz within {limit} s")


def one_run(args, mode, round_no, bench_args):
    base = args.port_base
    api = f"127.0.0.1:{base}"
    tag = f"{round_no}-{mode}"
    log_dir = os.path.join(args.out, tag)
    os.makedirs(log_dir, exist_ok=True)
    control_cmd = [
        args.control,
        f"--api-listen={api}",
        f"--link-listen=127.0.0.1:{base + 1}",
        f"--edge-ws-listen=127.0.0.1:{base + 2}",
        f"--edge-tcp-listen=127.0.0.1:{base + 3}",
        "--edge-admin-listen=127.0.0.1:0",
    ] + MODES[mode] + args.control_arg
    with open(os.path.join(log_dir, "control.log"), "w") as log:
        control = subprocess.Popen(control_cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://{api}", control)
        out = os.path.join(args.out, f"{tag}.json")
        cmd = [
            args.bench, "run", args.scenario,
            "--no-spawn", "--control-pid", str(control.pid),
            "--control-url", f"http://{api}",
            "--json-out", out, "--log-dir", log_dir,
        ] + bench_args
        print(f"# round {round_no}, history {mode}: {' '.join(cmd)}", file=sys.stderr)
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with open(os.path.join(log_dir, "bench-output.txt"), "w") as f:
            f.write(done.stdout)
        summary = [l for l in done.stdout.splitlines() if l.startswith(("summary:", "control store"))]
        print("\n".join(summary), file=sys.stderr)
        if done.returncode != 0:
            sys.exit(f"roomcast-bench failed ({done.returncode}); see {log_dir}/bench-output.txt")
        with open(out) as f:
            return json.load(f)
    finally:
        control.terminate()
        try:
            control.wait(timeout=10)
        except subprocess.TimeoutExpired:
            control.kill()
            control.wait()


def cell(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    med = statistics.median(values)
    text = f"{med:,.2f}" if abs(med) < 1000 else f"{med:,.0f}"
    if len(values) > 1:
        lo, hi = min(values), max(values)
        fmt = (lambda v: f"{v:,.2f}") if abs(med) < 1000 else (lambda v: f"{v:,.0f}")
        text += f" ({fmt(lo)}–{fmt(hi)})"
    return text


def main():
    argv = sys.argv[1:]
    bench_args = []
    if "--" in argv:
        i = argv.index("--")
        argv, bench_args = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bench", default="target/release/roomcast-bench")
    p.add_argument("--control", help="default: roomcast-control next to --bench")
    p.add_argument("--scenario", default="bench/scenarios/control-publish.toml")
    p.add_argument("--control-arg", action="append", default=[],
                   help="extra flag for both control planes (repeatable)")
    p.add_argument("--port-base", type=int, default=9090)
    p.add_argument("--out", default="target/history-cost")
    args = p.parse_args(argv)
    args.control = args.control or os.path.join(os.path.dirname(args.bench), "roomcast-control")
    os.makedirs(args.out, exist_ok=True)

    results = {mode: [] for mode in MODES}
    for r in range(args.rounds):
        for mode in (["off", "on"] if r % 2 == 0 else ["on", "off"]):
            results[mode].append(metrics(one_run(args, mode, r, bench_args)))

    keys = list(next(iter(results["on"])).keys())
    print(f"\n{args.rounds} round(s) of {os.path.basename(args.scenario)}"
          f"{' ' + ' '.join(bench_args) if bench_args else ''}; medians (ranges)\n")
    print("| history | " + " | ".join(keys) + " |")
    print("|" + "---|" * (len(keys) + 1))
    for mode in ("off", "on"):
        print(f"| {mode} | " + " | ".join(cell([m[k] for m in results[mode]]) for k in keys) + " |")

    med = lambda mode, k: statistics.median([m[k] or 0 for m in results[mode]])
    off, on = med("off", "published msg/s"), med("on", "published msg/s")
    if off:
        print(f"\nthroughput with history on: {100 * on / off:.1f} % of off "
              f"(issue 12: must stay within 15 %, i.e. >= 85 %)")
    stored = med("on", "stored msgs")
    if stored:
        extra = (med("on", "RSS growth MiB") - med("off", "RSS growth MiB")) * 2**20
        print(f"memory per stored message: {med('on', 'history B/msg'):.0f} B as the history counts it; "
              f"{extra / stored:.0f} B of control RSS (growth on − off, over {stored:,.0f} stored messages)")


if __name__ == "__main__":
    main()
