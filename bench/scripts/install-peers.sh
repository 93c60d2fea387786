#!/usr/bin/env bash
# Installs the peers roomcast-bench compares roomcast with (`roomcast-bench run --server nats`):
# nats-server, from Debian's package (2.9.x on bookworm). Idempotent: apt-get runs only when the
# binary is missing. Not part of CI: the comparisons are long benchmarks, not tests.
set -euo pipefail
if command -v nats-server >/dev/null; then
    echo "nats-server already installed: $(nats-server --version)"
    exit 0
fi
if [[ $(id -u) != 0 ]]; then
    echo "install-peers.sh: nats-server is missing; run as root (apt-get install -y nats-server)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq nats-server >/dev/null 2>&1 || {
    apt-get update -qq
    apt-get install -y -qq nats-server >/dev/null
}
# The package enables a system service; the bench starts its own server with its own config.
echo "installed $(nats-server --version)"
