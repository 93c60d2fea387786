#!/usr/bin/env python3
"""Join and auth reply latency with the join acknowledgement (PROTOCOL.md §5), against a running
roomcast (`roomcast-control` with its embedded edge): a fresh user's `auth` and the first `join`
of a fresh room wait for the control plane's sync barrier; a `join` of a room the edge worker
already holds answers at once. Prints p50/p99 of each over N rounds.

    pip install websockets
    python3 bench/scripts/join_latency.py --rounds 500
"""
import argparse
import asyncio
import json
import time
import urllib.request

import websockets


def token(api, key, user):
    req = urllib.request.Request(
        f"{api}/v1/tokens",
        data=json.dumps({"user": user}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    return json.load(urllib.request.urlopen(req))["token"]


async def call(ws, op):
    started = time.perf_counter()
    await ws.send(json.dumps(op))
    while True:
        msg = json.loads(await ws.recv())
        if msg.get("op") == "reply" and msg.get("seq") == op["seq"]:
            assert msg.get("ok"), msg
            return time.perf_counter() - started


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))] * 1000


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", default="http://127.0.0.1:9090")
    ap.add_argument("--key", default="roomcast-dev-api-key")
    ap.add_argument("--ws", default="ws://127.0.0.1:8080/ws")
    ap.add_argument("--rounds", type=int, default=500)
    args = ap.parse_args()
    run = int(time.time())
    auths, firsts, laters, pings = [], [], [], []
    # One long-lived member keeps room "held" on the edge (two connections, so both workers of a
    # two-worker edge are likely to hold it).
    holders = []
    for h in range(4):
        ws = await websockets.connect(args.ws)
        await call(ws, {"op": "auth", "seq": 1, "token": token(args.api, args.key, f"holder-{run}-{h}")})
        await call(ws, {"op": "join", "seq": 2, "room": f"held-{run}"})
        holders.append(ws)
    for i in range(args.rounds):
        tok = token(args.api, args.key, f"lat-{run}-{i}")
        async with websockets.connect(args.ws) as ws:
            auths.append(await call(ws, {"op": "auth", "seq": 1, "token": tok}))
            pings.append(await call(ws, {"op": "ping", "seq": 2}))
            firsts.append(await call(ws, {"op": "join", "seq": 3, "room": f"fresh-{run}-{i}"}))
            laters.append(await call(ws, {"op": "join", "seq": 4, "room": f"held-{run}"}))
    for ws in holders:
        await ws.close()
    for name, values in [("auth (new user)", auths), ("join, first member (new room)", firsts),
                         ("join, later member (held room)", laters), ("ping (no confirmation)", pings)]:
        print(f"{name:34} p50 {pct(values, 50):6.2f} ms   p99 {pct(values, 99):6.2f} ms   n={len(values)}")


asyncio.run(main())
