#!/usr/bin/env bash
# Install the device runtime (no torch), start the service on the embedded demo model over a Unix
# socket, chat with it once through gRPC, and stop the service.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[cpu]'
sock="${TMPDIR:-/tmp}/nemotron-edge-demo/edge.sock"
.venv/bin/nemotron-edge serve --listen "unix:$sock" &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
.venv/bin/nemotron-edge chat --server "unix:$sock" --wait 120 --max-thinking-tokens 32 --max-answer-tokens 48 \
    "${1:-Hello! Which arm should the robot move first?}"
