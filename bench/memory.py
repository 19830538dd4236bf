"""Resident memory of a fresh process against the memory planner's figures.

A subprocess (`python -m bench.memory SPEC`, importing only the runtime) builds an engine with a memory
budget, so the engine holds its plan (`plan_for_bundle`, `engine.plan`), and reports psutil's RSS:
- after load: engine built and warmed up by one 3-token request (every weight read once), against the
  plan's weights + runtime overhead (all the plan counts before any sequence or prefill);
- at peak: `batch` sequences, each prompted to the full context and generating 16 tokens, together;
  peak = the kernel's high-water mark of the process (VmHWM), against `plan.total_bytes(batch, context)`.
Each format runs in `memory_reps` fresh processes; the table shows the median and the largest.
"""

from __future__ import annotations

import json
import subprocess
import sys

from bench import artifacts
from bench.settings import Settings
from bench.timing import Case
from bench.variants import Env

BUDGET = 8 << 30
NEW_TOKENS = 16


def proc_status(field: str) -> int:
    """A `kB` field of /proc/self/status, in bytes: VmRSS now, or VmHWM, the peak RSS of this process image.
    (getrusage's ru_maxrss would not do for the peak: it survives exec, so a child forked from a large
    parent reports the parent's size.)"""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def _child(spec: dict) -> dict:
    import psutil

    proc = psutil.Process()
    start = proc.memory_info().rss
    from edge_runtime.engine.engine import Engine, EngineConfig
    from edge_runtime.engine.providers import ProviderConfig
    from edge_runtime.engine.records import GenerationRequest
    from edge_runtime.engine.sampler import SamplingParams

    greedy = SamplingParams(greedy=True)
    batch, context = spec["batch"], spec["context"]
    engine = Engine(spec["bundle"], EngineConfig(
        memory_budget=BUDGET, max_batch=batch, max_context=context,
        providers=ProviderConfig(intra_op_threads=spec["threads"], custom_op_library=spec["custom_op_library"])))
    engine.generate(GenerationRequest([101, 102, 103], greedy, max_tokens=2, ignore_eos=True))
    loaded = proc.memory_info().rss
    handles = [engine.submit(GenerationRequest([101 + i] * (context - NEW_TOKENS), greedy, max_tokens=NEW_TOKENS,
                                               ignore_eos=True)) for i in range(batch)]
    engine.run_until_done(handles)
    plan = engine.plan
    return {"start": start, "loaded": loaded, "end": proc.memory_info().rss,
            "peak": proc_status("VmHWM"),
            "planned_loaded": plan.resident_weight_bytes + plan.overhead_bytes, "planned_peak": plan.total_bytes(batch, context),
            "weight_bytes": plan.weight_bytes, "prepacked_bytes": plan.prepacked_bytes, "state_pool_bytes": engine.pool.nbytes,
            "overhead_bytes": plan.overhead_bytes, "prefill_working_bytes": plan.prefill_working_bytes}


def _run_child(spec: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.memory", json.dumps(spec)], capture_output=True, text=True,
                         cwd=artifacts.REPO)
    if out.returncode != 0:
        raise RuntimeError(f"memory subprocess failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(env: Env, s: Settings) -> dict:
    case = Case("memory", warmups=0)
    for fmt in s.memory_formats:
        v = env.preferred(fmt)
        spec = {"bundle": str(env.bundle(fmt)), "batch": s.memory_batch, "context": s.memory_context,
                "threads": s.threads, "custom_op_library": env.kernel_library if v.kernels else None}
        runs = [_run_child(spec) for _ in range(s.memory_reps)]
        case.details[v.label] = runs
        for what in ("loaded", "peak"):
            case.record(f"{v.label} {what}", "bytes", [m[what] for m in runs])
            case.record(f"{v.label} planned {what}", "bytes", [m[f"planned_{what}"] for m in runs])
            case.ratio(f"{v.label} {what} / planned", f"{v.label} {what}", f"{v.label} planned {what}")
    case.details["setting"] = {"batch": s.memory_batch, "context": s.memory_context, "budget_bytes": BUDGET}
    return case.finish()


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
