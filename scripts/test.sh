#!/usr/bin/env bash
# Install everything the test suite needs into .venv (the CPU build of torch, pinned) and run it all.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# Pinned: an unpinned torch pulls a multi-GB CUDA build; 2.13.0 is a local CPU build on our machines.
.venv/bin/pip install -q 'torch==2.13.0' -e '.[cpu,export,test]'
if ! command -v systemd-analyze >/dev/null; then  # the unit-file tests need it
    if [ "$(id -u)" = 0 ]; then apt-get install -y -q systemd; else sudo apt-get install -y -q systemd; fi
fi
exec .venv/bin/pytest -q -rs "$@"
