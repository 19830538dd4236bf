"""`python -m bench.long_context`: what a decode step costs after a long prompt, against after a short one.

Issue 18 asks whether decode slows down as the context grows. One engine (`max_batch` the largest batch,
`max_context` the bench bundles' MAX_CONTEXT, `threads` intra-op threads, the bench's spinning) runs, per
round and for each batch size, `batch` greedy requests (EOS ignored, `new_tokens` each) whose prompts are
`short` random token ids, and the same with `long` ones: the short and the long case of a batch back to
back, in the reverse order every other round (bench/timing.py).

Only the decode part is timed: the engine is stepped here and each step is timed; the steps counted are
those that follow the step in which the last row got its first token, while every row still decodes
(every step in which the engine committed one token for each of the `batch` rows: no prefill left, all
rows in the model call). ms per step = their total time / their number. A step takes at most one long
prompt's worth of prompt tokens (`prefill_chunk` = `max_step_tokens` = `long`), so the rows of a batch start
decoding within about `batch` steps of each other while a model call's working memory stays about one
prompt's; `new_tokens` must exceed that stagger.

Reported per batch: the long over short step time as the median of the per-round ratios (with their min
and max) against TARGETS, and the median step times. Without --bundle the bundle is the bench cache's
(bench/artifacts.py: the preset's checkpoint exported as --format, built if missing or stale).

    python -m bench.long_context [--rounds 10] [--batches 1 8] [--long 3000] [--short 16] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import artifacts
from bench import report
from bench.run import machine, versions
from bench.settings import Settings
from bench.timing import Case, timed
from bench.variants import GREEDY, Env, Variant, prompt_ids
from edge_runtime import Engine, EngineConfig, GenerationRequest, SchedulerConfig

# Long over short decode step time, at most, per batch: on the `small` preset's int4 bundle with the
# native kernels (int4+k), bundle max_context 4096, 3000 prompt tokens against 16.
TARGETS = {1: "<= 1.15", 8: "<= 1.3"}


@dataclass(frozen=True)
class Options:
    batches: tuple[int, ...]
    short: int
    long: int
    new_tokens: int
    rounds: int
    warmups: int


def decode_step_seconds(engine: Engine, prompts: list[list[int]], new_tokens: int) -> tuple[float, int]:
    """Seconds per engine step while every row decodes (module docstring), and how many steps that was."""
    handles = [engine.submit(GenerationRequest(p, GREEDY, max_tokens=new_tokens, ignore_eos=True)) for p in prompts]
    rows, steps = len(prompts), []
    all_started = False
    committed = engine.status().tokens_generated
    while not all(h.done for h in handles):
        seconds = timed(engine.step)
        now = engine.status().tokens_generated
        # A step commits one token per row that decoded or finished its prompt: `rows` tokens means every
        # row has a token now; the first such step still prefilled the last row, the later ones only decode.
        if now - committed == rows:
            if all_started:
                steps.append(seconds)
            all_started = True
        committed = now
    short = [h.final for h in handles if len(h.final.token_ids) != new_tokens]
    if short:
        raise RuntimeError(f"generation ended early: {short[0]}")
    if not steps:
        raise RuntimeError(f"no step decoded all {rows} rows: raise --new-tokens above the {rows} steps the "
                           "rows' prefill is spread over")
    return sum(steps) / len(steps), len(steps)


def measure(engine: Engine, o: Options) -> dict:
    """The interleaved rounds on `engine`, as a bench/timing.py case."""
    case = Case("long_context", warmups=o.warmups)
    vocab = engine.model_config.vocab_size
    counted: dict[str, int] = {}

    def run(key: str, prompts: list[list[int]]) -> float:
        seconds, counted[key] = decode_step_seconds(engine, prompts, o.new_tokens)
        return seconds * 1000

    fns = {}
    for b in o.batches:
        for kind, n in (("short", o.short), ("long", o.long)):
            prompts = [prompt_ids(seed, n, vocab) for seed in range(b)]
            fns[f"b{b} {kind}"] = ("ms/step", lambda key=f"b{b} {kind}", p=prompts: run(key, p))
    case.measure_interleaved(fns, o.rounds, alternate=True)
    for b in o.batches:
        case.ratio(f"b{b} long / short", f"b{b} long", f"b{b} short", TARGETS.get(b))
    case.details["decode_steps_counted"] = counted
    return case.finish()


def markdown(case: dict, o: Options) -> str:
    rows = []
    for b in o.batches:
        r = case["ratios"][f"b{b} long / short"]
        m = case["measurements"]
        rows.append([str(b), report.num(m[f"b{b} short"]["median"]), report.num(m[f"b{b} long"]["median"]),
                     f"{r['value']:.3f}x", f"{r['min']:.3f}x - {r['max']:.3f}x", report.mark(r) or "-"])
    return report.table(["batch", f"ms/step after {o.short}", f"ms/step after {o.long}", "long / short (median of rounds)",
                          "min - max", "target"], rows)


def main(argv: list[str] | None = None) -> int:
    defaults = Settings()
    p = argparse.ArgumentParser(prog="python -m bench.long_context", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, help="a bundle to run (default: the cache's bundle of --preset and --format)")
    p.add_argument("--preset", default=defaults.preset)
    p.add_argument("--format", default="int4", choices=list(artifacts.FORMATS))
    p.add_argument("--cache", type=Path, default=artifacts.DEFAULT_CACHE)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmups", type=int, default=1, help="untimed rounds before them")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--long", type=int, default=3000, help="prompt tokens of the long case")
    p.add_argument("--short", type=int, default=16, help="prompt tokens of the short case")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=defaults.threads, help="ONNX Runtime intra-op threads")
    p.add_argument("--kernels", action=argparse.BooleanOptionalAction, default=True,
                   help="register the native kernels (kernels/build.sh)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    o = Options(tuple(args.batches), args.short, args.long, args.new_tokens, args.rounds, args.warmups)
    if min(o.batches) < 1 or not 0 < o.short < o.long or o.rounds < 1 or o.warmups < 0:
        p.error("batches and rounds must be positive, warmups not negative, 0 < --short < --long")
    lib, why = artifacts.kernel_library()
    if args.kernels and lib is None:
        p.error(f"{why}; or run with --no-kernels")
    env = Env(args.cache.resolve(), args.preset, args.threads, lib if args.kernels else None, defaults.spinning)
    variant = Variant(args.format, kernels=args.kernels)
    bundle = args.bundle or env.bundle(variant.fmt)
    engine = Engine(bundle, EngineConfig(
        max_batch=max(o.batches), max_context=artifacts.MAX_CONTEXT, providers=env.providers(variant),
        scheduler=SchedulerConfig(prefill_chunk=o.long, max_step_tokens=o.long)))
    if o.long + o.new_tokens > engine.max_context:
        p.error(f"--long {o.long} + --new-tokens {o.new_tokens} exceed the engine's context of {engine.max_context}")
    label = engine.bundle.weights["format"] + ("+k" if args.kernels else "")
    results = {"meta": {
        "command": "python -m bench.long_context " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "versions": versions(), "kernel_library": env.kernel_library,
        "kernel_library_status": why, "bundle": str(bundle), "variant": label,
        "bundle_max_context": engine.bundle.limits["max_context"], "engine_max_context": engine.max_context,
        "max_batch": max(o.batches), "threads": args.threads, "spinning": env.spinning,
        "options": asdict(o),
    }, "cases": {"long_context": measure(engine, o)}}
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"{label}, {bundle}: decode step after {o.long} prompt tokens against after {o.short}, "
          f"{o.rounds} rounds, {o.new_tokens} new tokens")
    print(markdown(results["cases"]["long_context"], o))
    return 0


if __name__ == "__main__":
    sys.exit(main())
