"""Decode and prefill throughput: our engine against transformers on the same checkpoint.

decode: greedy, `new_tokens` after a `prompt_tokens` prompt, at batch 1 and batch `batch` (that many
  different prompts of equal length, submitted together: the engine prefills them in one step and
  decodes them as one batch). Tokens/s = batch x new tokens / wall time of the whole generation.
prefill: time to the first token of a `max_tokens=1` request (prefill plus one greedy pick), for each
  prompt length, with the whole prompt in one model call (prefill_chunk = max_step_tokens = the longest
  prompt) and with the engine's default chunking (SchedulerConfig(): chunks of 256, 512 tokens a step).
Every engine of a case is loaded up front, and all variants and transformers run in rounds, one run each
per round: `warmups` rounds, then `reps` timed rounds. In decode a round holds both batch sizes, so that
batch 8 over batch 1 compares runs as close in time as ours and transformers'; in prefill a round holds
one prompt length.
"""

from __future__ import annotations

from bench.reference import Reference
from bench.settings import Settings
from bench.timing import Case, timed
from bench.variants import GREEDY, Env, Variant, generate_batch, prompt_ids
from edge_runtime.engine.records import GenerationRequest
from edge_runtime.engine.scheduler import SchedulerConfig

DECODE_TARGET = {"fp32": ">= 3.5", "int8": ">= 8", "int4": ">= 8"}  # x transformers at batch 1
BATCH_TARGET = ">= 3"  # aggregate at batch 8 over batch 1
PREFILL_TARGET = (512, ">= 1.5")  # x transformers at this prompt length


def decode(env: Env, s: Settings) -> dict:
    case = Case("decode", warmups=s.warmups)
    prompts = [prompt_ids(i, s.prompt_tokens, env.vocab) for i in range(s.batch)]
    batches = {Variant.parse(v): (1, s.batch) for v in s.decode_variants}
    batches.update({Variant.parse(v): (1,) for v in s.batch1_only_variants})
    variants = env.available(list(batches))
    engines = {v: env.engine(v, max_batch=s.batch) for v in variants}
    with Reference(env.checkpoint, s.threads) as ref:
        case.details["reference"] = ref.info
        fns = {}
        for b in (1, s.batch):
            p = prompts[:b]
            fns.update({f"{v.label} b{b}": ("tok/s", lambda e=e, b=b, p=p: b * s.new_tokens / timed(lambda: generate_batch(e, p, s.new_tokens)))
                        for v, e in engines.items() if b in batches[v]})
            fns[f"transformers b{b}"] = ("tok/s", lambda p=p: ref.decode(p, s.new_tokens))
        case.measure_interleaved(fns, s.reps)
    del engines
    for v in variants:
        case.ratio(f"{v.label} b1 / transformers b1", f"{v.label} b1", "transformers b1", DECODE_TARGET.get(v.fmt))
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
    engines = {f"{v.label} {mode}": env.engine(v, max_batch=1, scheduler=c) for v in variants for mode, c in modes.items()}
    with Reference(env.checkpoint, s.threads) as ref:
        case.details["reference"] = ref.info
        for n, p in prompts.items():
            request = lambda: GenerationRequest(p, GREEDY, max_tokens=1, ignore_eos=True)
            fns = {f"{name} {n}": ("tok/s", lambda e=e: n / timed(lambda: e.generate(request()))) for name, e in engines.items()}
            fns[f"transformers {n}"] = ("tok/s", lambda: ref.prefill(p))
            case.measure_interleaved(fns, s.reps)
    del engines
    for name in [f"{v.label} {mode}" for v in variants for mode in modes]:
        for n in prompts:
            case.ratio(f"{name} {n} / transformers {n}", f"{name} {n}", f"transformers {n}",
                       PREFILL_TARGET[1] if n == PREFILL_TARGET[0] else None)
    return case.finish()
