#!/usr/bin/env bash
# Starts a real Prometheus server (Debian package `prometheus`) against a running roomcast —
# the control plane with its embedded edge, on free loopback ports — drives a little traffic,
# lets Prometheus scrape both /metrics endpoints, and queries series back through Prometheus's
# HTTP API. Also runs `promtool check metrics` on both pages and `promtool check config` on
# dashboards/prometheus.yml. Exits non-zero on any failure. Takes about 15-25 s.
#
#   scripts/prometheus-check.sh            # builds the debug binaries if needed
#   ROOMCAST_BIN_DIR=target/release scripts/prometheus-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in prometheus promtool curl python3; do
    command -v "$tool" >/dev/null || {
        echo "prometheus-check: $tool not found (apt-get install prometheus curl python3)" >&2
        exit 2
    }
done

BIN_DIR=${ROOMCAST_BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}
if [[ -z ${ROOMCAST_BIN_DIR:-} ]]; then
    cargo build -q -j1 -p roomcast-control -p roomcast-engine --bins
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
API=$(free_port); LINK=$(free_port); WS=$(free_port); TCP=$(free_port); ADMIN=$(free_port); PROM=$(free_port)
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "prometheus-check: FAIL: $*" >&2; echo "--- roomcast log" >&2; tail -20 "$WORK/roomcast.log" >&2 || true; echo "--- prometheus log" >&2; tail -20 "$WORK/prometheus.log" >&2 || true; exit 1; }

KEY=prometheus-check-key
"$BIN_DIR/roomcast-control" --api-listen 127.0.0.1:$API --link-listen 127.0.0.1:$LINK \
    --edge-ws-listen 127.0.0.1:$WS --edge-tcp-listen 127.0.0.1:$TCP --edge-admin-listen 127.0.0.1:$ADMIN \
    --edge-workers 2 --api-key $KEY >"$WORK/roomcast.log" 2>&1 &
PIDS+=($!)

wait_http() { # url
    for _ in $(seq 1 100); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
    fail "$1 did not answer"
}
wait_http "http://127.0.0.1:$API/readyz"
wait_http "http://127.0.0.1:$ADMIN/readyz"
echo "roomcast up: API :$API, edge admin :$ADMIN"

# A little traffic: a token, a raw TCP viewer in room r1, a few publishes, one dispatch.
AUTH=(-H "Authorization: Bearer $KEY" -H 'Content-Type: application/json')
TOKEN=$(curl -fsS "${AUTH[@]}" -d '{"user":"u1","rooms":["r1"]}' "http://127.0.0.1:$API/v1/tokens" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
python3 - "$TCP" "$TOKEN" >"$WORK/viewer.log" 2>&1 <<'EOF' &
import socket, struct, sys, time
# Raw TCP, binary ops (PROTOCOL.md §3): u32 length + op byte + body.
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def frame(payload):
    s.sendall(struct.pack(">I", len(payload)) + payload)
token = sys.argv[2].encode()
frame(b"\x01" + struct.pack(">QH", 1, len(token)) + token)
frame(b"\x02" + struct.pack(">QB", 2, 2) + b"r1")
s.settimeout(20)
got = 0
end = time.time() + 20
try:
    while time.time() < end:
        data = s.recv(65536)
        if not data:
            break
        got += len(data)
except Exception:
    pass
print("viewer read", got, "bytes")
EOF
PIDS+=($!)
for _ in $(seq 1 50); do
    online=$(curl -fsS "${AUTH[@]}" "http://127.0.0.1:$API/v1/rooms/r1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["online"])')
    [[ $online == 1 ]] && break
    sleep 0.1
done
[[ $online == 1 ]] || fail "the viewer never showed up in r1"
for i in 1 2 3 4 5; do
    curl -fsS -o /dev/null "${AUTH[@]}" -d "{\"priority\":2,\"kind\":\"chat\",\"data\":{\"n\":$i}}" "http://127.0.0.1:$API/v1/rooms/r1/messages"
done
curl -fsS -o /dev/null "http://127.0.0.1:$API/v1/dispatch?transport=tcp"

# promtool on both pages and on the example scrape config.
curl -fsS "http://127.0.0.1:$ADMIN/metrics" >"$WORK/edge.prom"
curl -fsS "http://127.0.0.1:$API/metrics" >"$WORK/control.prom"
[[ -s $WORK/edge.prom && -s $WORK/control.prom ]] || fail "empty /metrics page"
promtool check metrics <"$WORK/edge.prom" || fail "promtool rejected the edge's /metrics"
promtool check metrics <"$WORK/control.prom" || fail "promtool rejected the control plane's /metrics"
echo "promtool check metrics: edge ($(grep -vc '^#' "$WORK/edge.prom") samples) and control ($(grep -vc '^#' "$WORK/control.prom") samples) OK"
promtool check config dashboards/prometheus.yml >/dev/null || fail "dashboards/prometheus.yml"

# A real Prometheus scraping both every second.
cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: roomcast-edge
    static_configs: [{targets: ["127.0.0.1:$ADMIN"]}]
  - job_name: roomcast-control
    static_configs: [{targets: ["127.0.0.1:$API"]}]
EOF
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
    --web.listen-address=127.0.0.1:$PROM >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$PROM/-/ready"
echo "prometheus $(prometheus --version 2>&1 | head -1 | awk '{print $3}') up on :$PROM"

query() { # promql → prints "value" of the first result, or nothing
    curl -fsS --get "http://127.0.0.1:$PROM/api/v1/query" --data-urlencode "query=$1" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); r=d["data"]["result"]; print(r[0]["value"][1] if r else "")'
}
expect() { # description, promql, python condition on v
    local v=""
    for _ in $(seq 1 40); do
        v=$(query "$2")
        if [[ -n $v ]] && python3 -c "import sys; v=float(sys.argv[1]); sys.exit(0 if ($3) else 1)" "$v"; then
            printf '  ok   %-58s %s = %s\n' "$1" "$2" "$v"
            return 0
        fi
        sleep 0.5
    done
    fail "$1: $2 = '${v}', want $3"
}
echo "querying through Prometheus's HTTP API:"
expect "both targets up" 'sum(up{job=~"roomcast-.*"})' 'v == 2'
expect "edge connections (the viewer)" 'sum(roomcast_connections)' 'v >= 1'
expect "messages in, priority 2" 'roomcast_messages_in_total{priority="2"}' 'v >= 5'
expect "frames queued" 'sum(roomcast_frames_queued_total)' 'v >= 1'
expect "bytes written" 'sum(roomcast_written_bytes_total)' 'v > 0'
expect "capacity watermark" 'roomcast_capacity_ratio_max' '0 < v < 1'
expect "capacity ratio series" 'count(roomcast_capacity_ratio)' 'v == 5'
expect "publish->flush p99 (s)" 'histogram_quantile(0.99, sum by (le) (roomcast_publish_to_flush_seconds_bucket))' 'v >= 0'
expect "control: edges up" 'roomcast_control_edges_up' 'v == 1'
expect "control: room publishes 200" 'roomcast_control_publishes_total{endpoint="/v1/rooms/{room}/messages",status="200"}' 'v >= 5'
expect "control: fan-out messages" 'roomcast_control_fanout_messages_total' 'v >= 5'
expect "control: dispatch answers" 'roomcast_control_dispatch_answers_total{transport="tcp",result="ok"}' 'v >= 1'
echo "prometheus-check: OK"
