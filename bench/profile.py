"""Where a model call's time goes: ONNX Runtime's profiler, kernel time summed by operator type.

For each (format, graph, batch) of `profile_runs`, the engine's session for that graph is rebuilt from its
own SessionOptions (`get_session_options()`, the custom-op library registered again for a `+k` variant)
with `enable_profiling`, and the same requests run through the engine twice: a warm-up, then the profile.
- decode: `batch` greedy requests of `profile_steps` decode steps after a `prompt_tokens` prompt;
- prefill: one request whose `prefill_tokens` prompt is prefilled in one call (max_tokens=1).
Reported per model call: the wall time of an engine step (median token latency; for prefill the time to
the first token) unprofiled and profiled (the profiler's own cost is the difference); ONNX Runtime's
`model_run` (the session's Run) and the kernel time inside it, by op type. What is left over: profiled
wall - model_run is the engine around the model call (state gather/scatter copies, sampling, output
processing); model_run - kernels is ONNX Runtime between kernels.
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
from edge_runtime.engine.engine import Engine
from edge_runtime.engine.records import GenerationRequest
from edge_runtime.engine.scheduler import SchedulerConfig

TOP = 12
KERNEL_OPS = {"SsmStep", "CausalConv1d", "SsdChunkScan", "MambaDecodeStep"}


def profile_events(path: str, last: int) -> tuple[list[float], dict[str, list[float]], int]:
    """For the `last` Run calls: (model_run durations in ms, kernel ms per call by op type, kernels per call)."""
    with open(path) as f:
        events = json.load(f)
    runs = sorted((e["ts"], e["dur"]) for e in events if e.get("name") == "model_run")[-last:]
    starts = [ts for ts, _ in runs]
    by_op: dict[str, list[float]] = collections.defaultdict(lambda: [0.0] * len(runs))
    count = 0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= starts[0]:
            by_op[e["args"]["op_name"]][bisect.bisect_right(starts, e["ts"]) - 1] += e["dur"] / 1000
            count += 1
    return [d / 1000 for _, d in runs], dict(by_op), count // max(1, len(runs))


def _wall(engine: Engine, graph: str, requests: list[GenerationRequest]) -> list[float]:
    """Per model call, ms: every row's token latencies (decode), or the time to the first token (prefill)."""
    handles = [engine.submit(r) for r in requests]
    engine.run_until_done(handles)
    if graph == "prefill":
        return [h.final.timings.time_to_first_token_ms for h in handles]
    return [ms for h in handles for ms in h.final.timings.token_latencies_ms]


def profile(env: Env, s: Settings) -> dict:
    case = Case("profile", warmups=1)
    for fmt, graph, batch in s.profile_runs:
        v = env.preferred(fmt)
        label = f"{v.label} {graph} b{batch}" + (f" {s.prefill_tokens} tokens" if graph == "prefill" else "")
        if graph == "prefill":
            scheduler = SchedulerConfig(prefill_chunk=s.prefill_tokens, max_step_tokens=s.prefill_tokens * batch)
            prompts = [prompt_ids(20 + i, s.prefill_tokens, env.vocab) for i in range(batch)]
            steps, new = 1, 1
        else:
            scheduler, steps, new = SchedulerConfig(), s.profile_steps, s.profile_steps + 1
            prompts = [prompt_ids(20 + i, s.prompt_tokens, env.vocab) for i in range(batch)]
        requests = lambda: [GenerationRequest(p, GREEDY, max_tokens=new, ignore_eos=True) for p in prompts]
        engine = env.engine(v, max_batch=batch, scheduler=scheduler)
        _wall(engine, graph, requests())
        plain = _wall(engine, graph, requests())
        old = engine.runner.sessions[graph]
        options = old.get_session_options()
        with tempfile.TemporaryDirectory() as tmp:
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(tmp, graph)
            if v.kernels:
                options.register_custom_ops_library(env.kernel_library)
            engine.runner.replace_session(graph, ort.InferenceSession(str(engine.bundle.graph_path(graph)), options,
                                                                      providers=old.get_providers()))
            _wall(engine, graph, requests())  # the new session's warm-up
            profiled = _wall(engine, graph, requests())
            model_runs, by_op, kernels_per_call = profile_events(engine.runner.sessions[graph].end_profiling(), steps)
        del engine
        if v.kernels and not KERNEL_OPS & set(by_op):
            case.notes.append(f"{label}: the profiled session ran without the native kernels")
        per_call = [sum(op[i] for op in by_op.values()) for i in range(len(model_runs))]
        case.record(f"{label} wall", "ms", plain)
        case.record(f"{label} wall, profiled", "ms", profiled)
        case.record(f"{label} model_run", "ms", model_runs)
        case.record(f"{label} kernels", "ms", per_call)
        case.ratio(f"{label} profiled / unprofiled wall", f"{label} wall, profiled", f"{label} wall")
        case.ratio(f"{label} model_run / wall", f"{label} model_run", f"{label} wall, profiled")
        case.ratio(f"{label} kernels / model_run", f"{label} kernels", f"{label} model_run")
        total = sum(per_call)
        top = sorted(by_op.items(), key=lambda kv: -sum(kv[1]))[:TOP]
        case.details[label] = {
            "kernels_per_call": kernels_per_call,
            "by_op_ms_per_call": {op: sum(t) / len(t) for op, t in top},
            "by_op_share": {op: sum(t) / total for op, t in top},
        }
    return case.finish()
