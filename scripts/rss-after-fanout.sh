#!/usr/bin/env bash
# Edge RSS per idle connection, holding only and after full-room fan-outs, on one I/O driver.
#
# `roomcast-bench run --hold-only` holds the connections (one edge, one room, through the control
# plane). Once the edge has been idle for 15 s (the write-buffer arena is trimmed within 6 s of
# its last use) the edge's RSS is read from /proc/<edge>/status: the hold figure. Then ten
# priority-0 publishes of two 2 KB messages, one a second, each go to every member at once (on
# io_uring: one write per connection in flight at once), the edge sits idle for 15 s again, and
# its RSS is read a second time. Both are printed as growth over the edge's RSS before the clients
# connected, per connection, from the same edge process. Takes about a minute.
#
# mimalloc commits its arena eagerly, backed by 2 MiB transparent huge pages where the host allows
# them, so RSS moves in 2 MiB steps (about 140 B per connection at 15,000). The script sets
# MIMALLOC_ARENA_EAGER_COMMIT=0 (pages committed as they are touched, 4 KiB at a time) so that
# the figures are exact to a few bytes; export MIMALLOC_ARENA_EAGER_COMMIT=1 to measure the
# default instead.
#
#   scripts/rss-after-fanout.sh uring            # 15000 connections, binaries in target/release
#   scripts/rss-after-fanout.sh epoll 10000
#   ROOMCAST_BIN_DIR=/path/to/release scripts/rss-after-fanout.sh uring
set -euo pipefail
cd "$(dirname "$0")/.."

IO=${1:?usage: rss-after-fanout.sh uring|epoll [connections]}
CONNS=${2:-15000}
BIN_DIR=${ROOMCAST_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
SETTLE=15
KEY=roomcast-dev-api-key
export MIMALLOC_ARENA_EAGER_COMMIT=${MIMALLOC_ARENA_EAGER_COMMIT:-0}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
API=$(free_port)
WORK=$(mktemp -d)
"$BIN_DIR/roomcast-bench" run --publish-via control --hold-only --duration 70 \
    --edges 1 --conns "$CONNS" --rooms 1 --edge-arg=--io="$IO" \
    --control-url "http://127.0.0.1:$API" --link-listen "127.0.0.1:$(free_port)" \
    --ws-port "$(free_port)" --tcp-port "$(free_port)" \
    --log-dir "$WORK" --json-out "$WORK/result.json" >"$WORK/bench.out" 2>"$WORK/bench.err" &
BENCH=$!
trap 'kill $BENCH 2>/dev/null || true; rm -rf "$WORK"' EXIT

until grep -q "connections joined" "$WORK/bench.err" 2>/dev/null; do
    kill -0 "$BENCH" 2>/dev/null || { cat "$WORK/bench.err" >&2; exit 1; }
    sleep 0.2
done
for pid in $(pgrep -P "$BENCH"); do
    [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == */roomcast-edge ]] && EDGE=$pid
done
rss() { awk '/^VmRSS/ {print $2 * 1024}' "/proc/$EDGE/status"; }

sleep "$SETTLE"
HOLD=$(rss)
PAD=$(head -c 2000 /dev/zero | tr '\0' x)
MSG="{\"room\":\"room-0\",\"priority\":0,\"kind\":\"gift\",\"data\":{\"pad\":\"$PAD\"}}"
PEAK=0
for _ in $(seq 10); do
    curl -sf -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
        -d "{\"messages\":[$MSG,$MSG]}" "http://127.0.0.1:$API/v1/messages" |
        grep -q '"delivered_edges":1' || { echo "a publish was not routed to the edge" >&2; exit 1; }
    sleep 1
    PEAK=$(( $(rss) > PEAK ? $(rss) : PEAK ))
done
sleep "$SETTLE"
AFTER=$(rss)
FRAMES=$(curl -sf -H "Authorization: Bearer $KEY" "http://127.0.0.1:$API/v1/edges" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["edges"][0]["frames_out"])')
wait "$BENCH"

python3 - "$WORK/result.json" "$IO" "$HOLD" "$PEAK" "$AFTER" "$FRAMES" <<'PY'
import json, sys
edge = json.load(open(sys.argv[1]))["edges"][0]
io, hold, peak, after, frames = sys.argv[2], *map(int, sys.argv[3:])
conns, before = edge["connections_idle"], edge["rss_before"]
per = lambda rss: (rss - before) / conns
print(f"{io}: {conns} connections, {frames} frames sent; edge RSS before the clients "
      f"{before/2**20:.1f} MiB; holding {hold/2**20:.1f} MiB = {per(hold):.0f} B/conn; "
      f"peak during the fan-outs {per(peak):.0f} B/conn; idle after them {after/2**20:.1f} MiB = "
      f"{per(after):.0f} B/conn ({(after-hold)/conns:+.0f} B/conn)")
PY
