#!/usr/bin/env bash
# Install the device runtime (no torch), build the native kernels if a C++ compiler is here, start the
# service on the embedded demo model over a Unix socket, chat with it once through gRPC, and stop the service.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[cpu]'
# The kernels are an optimisation (every bundle also runs on stock ONNX Runtime), so the demo goes on
# without them, and says why in one line.
kernels=()
cxx="${CXX:-g++}"
if ! command -v "${cxx%% *}" >/dev/null; then
  echo "demo: no C++ compiler ($cxx): running without the native kernels (kernels/README.md)"
elif ! build_log="$(bash kernels/build.sh 2>&1)"; then
  echo "demo: kernels/build.sh failed ($(tail -n1 <<<"$build_log")): running without the native kernels"
else
  kernels=(--custom-op-library "$PWD/kernels/build/libnemotron_edge_ops.so")
fi
sock="${TMPDIR:-/tmp}/nemotron-edge-demo/edge.sock"
.venv/bin/nemotron-edge serve --listen "unix:$sock" ${kernels[@]+"${kernels[@]}"} &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
# The demo model was trained with this system prompt (export/demo_model/tasks.py); greedy, as its accuracy is measured.
system="You are the assistant of a two-armed mobile robot. Answer briefly."
.venv/bin/nemotron-edge chat --server "unix:$sock" --wait 120 --greedy --max-thinking-tokens 128 --max-answer-tokens 48 \
    --system "$system" \
    "${1:-The robot drives at 3 meters per second. The lab is 4 meters away and the kitchen is 14 meters past the lab. How long does it take to reach the kitchen?}"
if [ $# -eq 0 ]; then
  # One tool round trip: the model calls move_arm, the tool's response goes back, the model answers it.
  echo
  .venv/bin/nemotron-edge chat --server "unix:$sock" --greedy --max-thinking-tokens 128 --max-answer-tokens 48 \
      --system "$system" --tools scripts/demo-tools.json --tool-result '{"object": "apple", "holding": true, "grip_force": 42}' \
      "The apple is at x 8, y 4. The left arm is at x 3, y 7 and the right arm is at x 8, y 8. Pick up the apple."
fi
