"""scripts/gpu-check.sh --provider cpu --quick, as CI runs it: the tiny preset's four weight formats pass
parity against the PyTorch reference, a prefix-cache snapshot restored on the pool's device continues a prompt
bit for bit, the decode step's host <-> device bytes are counted (none cross on
the CPU provider, where the state is bound in host memory), tokens/s are measured at batch 1 and 8, and CUDA graphs are
reported as not supported rather than measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.gpu_check import FORMATS, PERF_BATCHES, TOLERANCES
from nemotron_export.presets import PRESETS

REPO = Path(__file__).resolve().parent.parent


def test_quick_cpu_run_reports_every_check_passed(tmp_path: Path):
    out = tmp_path / "report.json"
    run = subprocess.run(["bash", "scripts/gpu-check.sh", "--provider", "cpu", "--quick", "--out", str(out)],
                         cwd=REPO, env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASSED" in run.stdout
    report = json.loads(out.read_text())
    assert report["provider"] == "cpu" and report["quick"] and report["passed"] and report["failures"] == []
    assert list(report["presets"]) == ["tiny"]
    tiny, vocab = report["presets"]["tiny"], PRESETS["tiny"].vocab_size
    assert set(tiny["export"]) == set(FORMATS)
    for fmt in FORMATS:
        parity = tiny["parity"][fmt]
        assert parity["status"] == "passed", (fmt, parity)
        assert parity["tolerance"] == TOLERANCES["cpu"][fmt]
        assert parity["max_rel_err"] <= parity["tolerance"]
        assert len(parity["greedy_tokens"]) == len(parity["rel_err_per_call"])
        assert parity["against"].startswith("PyTorch reference")
        snap = tiny["snapshot"][fmt]
        assert (snap["status"], snap["bit_identical"], snap["snapshot_devices"]) == ("passed", True, ["cpu"]), snap
        moved = tiny["decode_step_bytes"][fmt]
        assert moved["status"] == "counted"
        for b in PERF_BATCHES:
            step = moved[f"batch{b}"]
            assert step["host_to_device"] == step["device_to_host"] == 0  # the CPU provider: nothing crosses
            bound = step["bound_in_host_memory"]
            assert (bound["inputs"], bound["logits"]) == (2 * 8 * b, 4 * b * vocab) and bound["state"] > 0
            perf = tiny["perf"][fmt][f"batch{b}"]
            assert perf["cuda_graphs_off"]["decode_tokens_per_s"] > 0
            assert perf["cuda_graphs_off"]["prefill_tokens_per_s"] > 0
            assert perf["cuda_graphs_on"]["status"] == "not_supported"
    assert report["presets"]["tiny"]["parity"]["int4"]["against"].endswith("dequantized weights")
