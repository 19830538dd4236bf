"""`nemotron-edge jetson warmup` opens a bundle as the service would and runs a full prefill chunk."""

from __future__ import annotations

import subprocess
import sys


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_runtime.cli", *args], capture_output=True, text=True, timeout=300)


def test_warmup_runs_the_configured_providers(tiny_bundle):
    out = run_cli("jetson", "warmup", "--bundle", str(tiny_bundle))
    assert out.returncode == 0, out.stderr
    assert "CPUExecutionProvider" in out.stdout and "prefill" in out.stdout


def test_warmup_names_a_bad_bundle(tmp_path):
    out = run_cli("jetson", "warmup", "--bundle", str(tmp_path))
    assert out.returncode == 2
    assert "not a bundle" in out.stderr
