"""The reading stages of the real-size measurement: each bundle's memory plan, and its run in a fresh process
(bench/real_size/engine_run.py) beside this machine's copy-bandwidth ceiling of decode."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from bench import artifacts
from bench.bandwidth import bytes_per_decode_token, measure_bandwidth
from bench.real_size.engine_run import RunSpec
from bench.real_size.measured_process import cli
from bench.timing import Case

# (name, budget, providers): this machine's CPU provider, and a Thor's 96 GiB on its GPU (docs/memory-plan.md)
PLANS = (("here", None, "cpu"), ("thor", "96GiB", "cuda,cpu"))
PLAN_CONTEXT = 8192
THOR_BANDWIDTH = 273e9  # bytes/s, LPDDR5X (../shared/reference)


def plan(bundle: Path, budget: str) -> dict:
    """`nemotron-edge plan --json` of `bundle` for each of PLANS (`budget`: this machine's)."""
    out = {}
    for name, plan_budget, providers in PLANS:
        args = cli("plan", "--bundle", str(bundle), "--budget", plan_budget or budget, "--context", str(PLAN_CONTEXT),
                   "--providers", providers, "--json")
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode == 2 and " short of " in done.stderr:  # the plan's refusal: the bundle does not fit
            out[name] = {"refused": done.stderr.strip().splitlines()[-1]}
        elif done.returncode != 0:
            raise RuntimeError(f"plan of {bundle} failed: {done.stderr[-2000:]}")
        else:
            out[name] = json.loads(done.stdout)
    thor = out["thor"]
    if "refused" not in thor:  # batch 1: all weights once, one sequence's SSM state read and written
        out["thor_decode_ceiling_tokens_per_second"] = THOR_BANDWIDTH / (thor["weight_bytes"] + 2 * thor["fixed_state_bytes_per_sequence"])
    return out


def bandwidth(threads: int) -> dict:
    case = Case("bandwidth", warmups=1)
    return measure_bandwidth(case, 1 << 30, threads, 5)


def run(work: Path, name: str, spec: RunSpec, copy_gbps: float) -> dict:
    """`spec`'s bundle in a fresh process (its log: <work>/run-<name>.log), and the copy-bandwidth ceiling of
    its decode at each batch: bandwidth / (weights.bin once + each row's state read and written)."""
    log = work / f"run-{name}.log"
    with open(log, "w") as err:
        done = subprocess.run([sys.executable, "-m", "bench.real_size.engine_run", json.dumps(asdict(spec))],
                              stdout=subprocess.PIPE, stderr=err, text=True, cwd=artifacts.REPO)
    if done.returncode != 0:
        raise RuntimeError(f"run of {spec.bundle} failed (exit {done.returncode}); see {log}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if "refused" in result:
        return result
    mean_context = 16 + spec.decode_tokens // 2
    b = bytes_per_decode_token(spec.bundle, mean_context)
    result["ceiling"] = {"copy_gbps": copy_gbps, "bytes_per_token": b,
                         **{str(n): n * copy_gbps * 1e9 / (b["weights"] + n * b["state"]) for n in spec.batches}}
    return result
