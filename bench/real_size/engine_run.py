"""One bundle in a fresh process that imports only the runtime: load, prefill, decode, resident memory.

`python -m bench.real_size.engine_run SPEC` (SPEC: JSON of `RunSpec`) prints one JSON line:
- load: seconds to build the engine (open and verify the bundle, create both ONNX Runtime sessions,
  allocate the state pool), and of the first 3-token request after it;
- prefill: seconds of a `prefill_tokens` prompt in one model call (and its one sampled token), `reps` times;
- decode at each batch: seconds per engine step while every row decodes (bench/long_context.py's
  `decode_step_seconds`), tokens/s = batch / that;
- memory: VmRSS after load, the largest VmRSS sampled every `SAMPLE_S` during the requests, and VmHWM at
  the end (the kernel's high-water mark: exact, however brief), against the engine's own plan
  (weights + pre-packed copies + overhead after load; plus working memory and the slots' state at peak).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import asdict, dataclass

from bench.memory import proc_status

SAMPLE_S = 0.25


@dataclass(frozen=True)
class RunSpec:
    bundle: str
    budget: int  # bytes: the engine's memory budget, so that it holds its plan
    context: int
    batches: tuple[int, ...]
    prefill_tokens: int
    prefill_reps: int
    decode_tokens: int
    threads: int
    spinning: str
    kernel_library: str | None


class RssSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.largest, self._done = 0, threading.Event()

    def run(self) -> None:
        while not self._done.wait(SAMPLE_S):
            self.largest = max(self.largest, proc_status("VmRSS"))

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.largest


def measure(spec: RunSpec) -> dict:
    from bench.long_context import decode_step_seconds
    from bench.timing import timed
    from bench.variants import GREEDY, prompt_ids
    from edge_runtime import Engine, EngineConfig, GenerationRequest, SchedulerConfig
    from edge_runtime.bundle.memory_plan import MemoryPlanError
    from edge_runtime.engine.records import RequestError
    from edge_runtime.engine.providers import ProviderConfig

    started = proc_status("VmRSS")
    t0 = time.perf_counter()
    chunk = max(spec.prefill_tokens, 64)
    try:
        engine = Engine(spec.bundle, EngineConfig(
            memory_budget=spec.budget, max_batch=max(spec.batches), max_context=spec.context,
            scheduler=SchedulerConfig(prefill_chunk=chunk, max_step_tokens=chunk),
            providers=ProviderConfig(intra_op_threads=spec.threads, spinning=spec.spinning,
                                     custom_op_library=spec.kernel_library)))
    except (MemoryPlanError, RequestError) as e:  # the plan's refusal: what the run reports for a bundle that does not fit
        return {"spec": asdict(spec), "refused": str(e)}
    load_s = time.perf_counter() - t0
    first_s = timed(lambda: engine.generate(GenerationRequest([101, 102, 103], GREEDY, max_tokens=2, ignore_eos=True)))
    loaded = proc_status("VmRSS")
    sampler = RssSampler()
    sampler.start()
    vocab = engine.model_config.vocab_size
    prompt = prompt_ids(0, spec.prefill_tokens, vocab)
    prefill = [timed(lambda: engine.generate(GenerationRequest(prompt, GREEDY, max_tokens=1, ignore_eos=True)))
               for _ in range(spec.prefill_reps)]
    decode = {}
    for b in spec.batches:
        seconds, steps = decode_step_seconds(engine, [prompt_ids(1 + i, 16, vocab) for i in range(b)],
                                             spec.decode_tokens)
        decode[str(b)] = {"step_seconds": seconds, "steps": steps, "tokens_per_second": b / seconds}
    largest = sampler.stop()
    plan = engine.plan
    return {"spec": asdict(spec), "load_seconds": load_s, "first_request_seconds": first_s,
            "prefill_seconds": prefill, "decode": decode,
            "rss": {"start": started, "loaded": loaded, "largest_sampled": max(largest, loaded),
                    "high_water": proc_status("VmHWM")},
            "plan": {"loaded": plan.resident_weight_bytes + plan.overhead_bytes,
                     "peak": plan.total_bytes(max(spec.batches), spec.context),
                     "weight_bytes": plan.weight_bytes, "prepacked_bytes": plan.prepacked_bytes,
                     "overhead_bytes": plan.overhead_bytes, "prefill_working_bytes": plan.prefill_working_bytes,
                     "state_pool_bytes": engine.pool.nbytes, "slots": engine.num_slots}}


if __name__ == "__main__":
    raw = json.loads(sys.argv[1])
    print(json.dumps(measure(RunSpec(**{**raw, "batches": tuple(raw["batches"])}))))
