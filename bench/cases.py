"""Decode and prefill throughput: our engine against transformers on the same checkpoint.

decode: greedy, `new_tokens` after a `prompt_tokens` prompt, at batch 1 and batch `batch` (that many
  different prompts of equal length, submitted together: the engine prefills them in one step and
  decodes them as one batch). Tokens/s = batch x new tokens / wall time of the whole generation.
prefill: time to the first token of a `max_tokens=1` request (prefill plus one greedy pick), for each
  prompt length, with the whole prompt in one model call (prefill_chunk = max_step_tokens = the longest
  prompt) and with the engine's default chunking (SchedulerConfig(): chunks of 256, 512 tokens a step).
"""

from __future__ import annotations

from bench import reference
from bench.settings import Settings
from bench.timing import Case, timed
from bench.variants import GREEDY, Env, Variant, generate_batch, prompt_ids
from edge_runtime.request import GenerationRequest
from edge_runtime.scheduler import SchedulerConfig

DECODE_TARGET = {"fp32": ">= 3.5", "int8": ">= 8", "int4": ">= 8"}  # x transformers at batch 1
BATCH_TARGET = ">= 3"  # aggregate at batch 8 over batch 1
PREFILL_TARGET = (512, ">= 1.5")  # x transformers at this prompt length


def decode(env: Env, s: Settings) -> dict:
    case = Case("decode", warmups=s.warmups)
    prompts = [prompt_ids(i, s.prompt_tokens, env.vocab) for i in range(s.batch)]
    batches = {Variant.parse(v): (1, s.batch) for v in s.decode_variants}
    batches.update({Variant.parse(v): (1,) for v in s.batch1_only_variants})
    for v in env.available(list(batches)):
        engine = env.engine(v, max_batch=s.batch)
        for b in batches[v]:
            p = prompts[:b]
            case.measure(f"{v.label} b{b}", "tok/s", lambda: b * s.new_tokens / timed(lambda: generate_batch(engine, p, s.new_tokens)),
                         s.reps)
        del engine
    ref = reference.run({"checkpoint": str(env.checkpoint), "threads": s.threads, "reps": s.ref_reps, "warmups": s.warmups,
                         "decode": [{"prompts": prompts[:b], "new_tokens": s.new_tokens} for b in (1, s.batch)]})
    for b in (1, s.batch):
        case.record(f"transformers b{b}", "tok/s", ref["decode"][str(b)])
    case.details["reference"] = {k: ref[k] for k in ("torch", "transformers", "threads", "load_s", "load")}
    for v in env.available(list(batches)):
        case.ratio(f"{v.label} b1 / transformers b1", f"{v.label} b1", "transformers b1",
                   DECODE_TARGET.get(v.fmt))
        if s.batch in batches[v]:
            case.ratio(f"{v.label} b{s.batch} / transformers b{s.batch}", f"{v.label} b{s.batch}", f"transformers b{s.batch}")
            case.ratio(f"{v.label} b{s.batch} / b1", f"{v.label} b{s.batch}", f"{v.label} b1", BATCH_TARGET)
    case.ratio(f"transformers b{s.batch} / b1", f"transformers b{s.batch}", "transformers b1")
    return case.finish()


def prefill(env: Env, s: Settings) -> dict:
    case = Case("prefill", warmups=s.warmups)
    prompts = {n: prompt_ids(10_000 + n, n, env.vocab) for n in s.prefill_lengths}
    longest = max(s.prefill_lengths)
    modes = {"one call": SchedulerConfig(prefill_chunk=longest, max_step_tokens=longest), "chunked": SchedulerConfig()}
    case.details["modes"] = {m: {"prefill_chunk": c.prefill_chunk, "max_step_tokens": c.max_step_tokens} for m, c in modes.items()}
    variants = env.available([Variant.parse(v) for v in s.prefill_variants])
    for v in variants:
        for mode, scheduler in modes.items():
            engine = env.engine(v, max_batch=1, scheduler=scheduler)
            for n, p in prompts.items():
                request = lambda: GenerationRequest(p, GREEDY, max_tokens=1, ignore_eos=True)
                case.measure(f"{v.label} {mode} {n}", "tok/s", lambda: n / timed(lambda: engine.generate(request())), s.reps)
            del engine
    ref = reference.run({"checkpoint": str(env.checkpoint), "threads": s.threads, "reps": s.ref_reps, "warmups": s.warmups,
                         "prefill": list(prompts.values())})
    for n in prompts:
        case.record(f"transformers {n}", "tok/s", ref["prefill"][str(n)])
    case.details["reference"] = {k: ref[k] for k in ("torch", "transformers", "threads", "load_s", "load")}
    for v in variants:
        for mode in modes:
            for n in prompts:
                case.ratio(f"{v.label} {mode} {n} / transformers {n}", f"{v.label} {mode} {n}", f"transformers {n}",
                           PREFILL_TARGET[1] if n == PREFILL_TARGET[0] else None)
    return case.finish()
