#!/usr/bin/env bash
# Installs what the browser and JavaScript tests need beyond a Rust toolchain and Node 20:
# Debian's chromium (the H5 demo's end-to-end test drives it headless), CJK and emoji fonts (no
# assertion needs them: the screenshot the README shows has Chinese danmaku and emoji), and the
# npm packages of sdk/js and examples/h5-room (from their lock files). The Debian packages need
# root; the npm part works as any user. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=()
command -v chromium >/dev/null || packages+=(chromium)
fc-list 2>/dev/null | grep -qi "noto sans cjk" || packages+=(fonts-noto-cjk fonts-noto-color-emoji)
if ((${#packages[@]} > 0)); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
    elif ! command -v chromium >/dev/null; then
        echo "install-test-deps: chromium is missing; install Debian's chromium as root (apt-get install chromium)" >&2
        exit 1
    fi
fi
for dir in sdk/js examples/h5-room; do
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
done
