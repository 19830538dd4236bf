"""Where a decode step's time goes: ONNX Runtime's profiler, kernel time summed by operator type.

The engine's decode session is rebuilt from its own SessionOptions (`get_session_options()`, the custom-op
library registered again for a `+k` variant) with `enable_profiling`, and a greedy request of
`profile_steps` decode steps runs through the engine twice; the second is the profile. Reported per decode step at batch 1:
- wall time per token: the median token latency of the profiled run, and of an unprofiled run of the same
  request before it (the profiler's own cost is the difference);
- ONNX Runtime's `model_run` time (the session's Run), and the kernel time inside it, by op type;
- what is left: wall - model_run is the engine around the model call (state gather/scatter copies,
  sampling, bookkeeping); model_run - kernels is ONNX Runtime between kernels.
"""

from __future__ import annotations

import bisect
import collections
import json
import os
import tempfile

import onnxruntime as ort

from bench.settings import Settings
from bench.timing import Case
from bench.variants import GREEDY, Env, prompt_ids
from edge_runtime.request import GenerationRequest

TOP = 12
KERNEL_OPS = {"SsmStep", "CausalConv1d", "SsdChunkScan"}


def profile_events(path: str, last: int) -> tuple[list[float], dict[str, list[float]], int]:
    """For the `last` Run calls: (model_run durations in ms, kernel ms per step by op type, kernels per step)."""
    with open(path) as f:
        events = json.load(f)
    runs = sorted((e["ts"], e["dur"]) for e in events if e.get("name") == "model_run")[-last:]
    starts = [ts for ts, _ in runs]
    by_op: dict[str, list[float]] = collections.defaultdict(lambda: [0.0] * len(runs))
    count = 0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= starts[0]:
            step = bisect.bisect_right(starts, e["ts"]) - 1
            if step >= 0:
                by_op[e["args"]["op_name"]][step] += e["dur"] / 1000
                count += 1
    return [d / 1000 for _, d in runs], dict(by_op), count // max(1, len(runs))


def profile(env: Env, s: Settings) -> dict:
    case = Case("profile")
    prompt = prompt_ids(7, s.prompt_tokens, env.vocab)
    request = lambda: GenerationRequest(prompt, GREEDY, max_tokens=s.profile_steps + 1, ignore_eos=True)
    for fmt in s.profile_formats:
        v = env.preferred(fmt)
        engine = env.engine(v, max_batch=1)
        engine.generate(request())
        wall = engine.generate(request()).timings.token_latencies_ms
        old = engine.runner.sessions["decode"]
        options = old.get_session_options()
        with tempfile.TemporaryDirectory() as tmp:
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(tmp, "decode")
            if v.kernels:
                options.register_custom_ops_library(env.kernel_library)
            engine.runner.sessions["decode"] = ort.InferenceSession(str(engine.bundle.graph_path("decode")), options,
                                                                    providers=old.get_providers())
            engine.generate(request())  # the new session's warm-up
            profiled = engine.generate(request()).timings.token_latencies_ms
            model_runs, by_op, kernels_per_step = profile_events(engine.runner.sessions["decode"].end_profiling(),
                                                                 last=s.profile_steps)
        del engine
        if v.kernels and not KERNEL_OPS & set(by_op):
            case.notes.append(f"{v.label}: the profiled session ran without the native kernels")
        per_step = [sum(op[i] for op in by_op.values()) for i in range(len(model_runs))]
        case.record(f"{v.label} wall per token", "ms", wall)
        case.record(f"{v.label} wall per token, profiled", "ms", profiled)
        case.record(f"{v.label} model_run", "ms", model_runs)
        case.record(f"{v.label} kernels", "ms", per_step)
        case.ratio(f"{v.label} profiled / unprofiled wall", f"{v.label} wall per token, profiled", f"{v.label} wall per token")
        case.ratio(f"{v.label} model_run / wall", f"{v.label} model_run", f"{v.label} wall per token, profiled")
        case.ratio(f"{v.label} kernels / model_run", f"{v.label} kernels", f"{v.label} model_run")
        total = sum(per_step)
        top = sorted(by_op.items(), key=lambda kv: -sum(kv[1]))[:TOP]
        case.details[v.label] = {
            "kernels_per_step": kernels_per_step,
            "by_op_ms_per_step": {op: sum(t) / len(t) for op, t in top},
            "by_op_share": {op: sum(t) / total for op, t in top},
        }
    return case.finish()
