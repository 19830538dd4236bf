"""`python -m bench.grammar`: what grammar-constrained decoding costs, against the same decode unconstrained, in one run.

On the `small` preset (fp32 bundle, bench/artifacts.py), in process, batches of 1 and 8 requests each decode
`--tokens` tokens after a 32-token prompt at temperature 1 (seeded): unconstrained (EOS ignored), and
constrained by a JSON Schema that cannot be complete before the token limit, so that every token is drawn
under the grammar's mask:
  - `string`: an object whose one property is a string of at least 100,000 characters (a mask over almost
    the whole vocabulary, every token);
  - `objects`: an array of at least 10,000 objects, each an enum, a bounded integer and a boolean (many
    tokens forced to a handful of choices, the lexer's and parser's busiest case).
Aggregate tokens/s = requests x tokens / wall time of the batch; the rounds interleave the variants
(`--reps`), and the medians' ratio constrained / unconstrained is the figure (the bar: >= 0.90).

Writes `<out>.json` and `<out>.md` (the table for BENCHMARKS.md). What the mask costs at the real vocabulary
(131072 tokens) is bench/vocab_cost.py's, as a ratio to the lm_head.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from bench import artifacts
from edge_runtime.engine.answer_format import AnswerFormat, FormatKind, ResponseFormat
from edge_runtime.engine.engine import Engine, EngineConfig
from edge_runtime.engine.grammar import Grammar
from edge_runtime.engine.providers import ProviderConfig
from edge_runtime.engine.records import GenerationRequest, SamplingParams

PROMPT = 32
SCHEMAS = {
    "string": {"type": "object", "properties": {"log": {"type": "string", "minLength": 100_000}}, "required": ["log"]},
    "objects": {"type": "array", "minItems": 10_000, "items": {
        "type": "object", "properties": {"arm": {"enum": ["left", "right"]},
                                         "x": {"type": "integer", "minimum": -999, "maximum": 999},
                                         "ok": {"type": "boolean"}},
        "required": ["arm", "x", "ok"], "additionalProperties": False}},
}


def grammars(engine: Engine) -> dict[str, Grammar]:
    return {name: engine.grammars.compile(AnswerFormat(response_format=ResponseFormat(FormatKind.JSON_SCHEMA, schema)))
            for name, schema in SCHEMAS.items()}


def tokens_per_second(engine: Engine, rows: int, tokens: int, grammar: Grammar | None, rng: np.random.Generator) -> float:
    vocab = engine.model_config.vocab_size
    requests = [GenerationRequest([int(t) for t in rng.integers(100, vocab, PROMPT)],
                                  SamplingParams(temperature=1.0, seed=k), max_tokens=tokens,
                                  ignore_eos=grammar is None, grammar=grammar) for k in range(rows)]
    start = time.perf_counter()
    handles = [engine.submit(r) for r in requests]
    engine.run_until_done(handles)
    wall = time.perf_counter() - start
    for h in handles:
        assert h.final.finish_reason == "length" and len(h.final.token_ids) == tokens, h.final
        assert grammar is None or h.final.grammar == "cut_off", h.final
    return rows * tokens / wall


def measure(bundle: Path, kernels: str | None, tokens: int, reps: int) -> dict:
    engine = Engine(bundle, EngineConfig(max_batch=8, max_context=PROMPT + tokens + 8,
                                         providers=ProviderConfig(custom_op_library=kernels)))
    compiled = grammars(engine)
    rng = np.random.default_rng(0)
    variants = {"unconstrained": None, **compiled}
    results: dict[str, dict] = {}
    for rows in (1, 8):
        tokens_per_second(engine, rows, 8, None, rng)  # warm up the batch shape
        runs: dict[str, list[float]] = {name: [] for name in variants}
        for rep in range(reps):
            order = list(variants) if rep % 2 == 0 else list(reversed(variants))
            for name in order:
                runs[name].append(tokens_per_second(engine, rows, tokens, variants[name], rng))
        base = statistics.median(runs["unconstrained"])
        results[str(rows)] = {name: {"tokens_per_s": r, "median": statistics.median(r),
                                     "ratio": statistics.median(r) / base} for name, r in runs.items()}
        print(f"batch {rows}: " + ", ".join(f"{n} {v['median']:.1f} tok/s ({v['ratio']:.3f})"
                                            for n, v in results[str(rows)].items()), flush=True)
    return results


def table(results: dict) -> str:
    lines = [f"`small` fp32, {results['tokens']} tokens a request at temperature 1, median of {results['reps']} "
             "interleaved rounds; ratio = constrained / unconstrained tokens/s (bar: >= 0.90).", "",
             "| batch | unconstrained tok/s | JSON string tok/s (ratio) | JSON objects tok/s (ratio) |",
             "|---|---|---|---|"]
    for rows, r in results["batches"].items():
        cell = lambda name: f"{r[name]['median']:.1f} ({r[name]['ratio']:.3f})"
        lines.append(f"| {rows} | {r['unconstrained']['median']:.1f} | {cell('string')} | {cell('objects')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=artifacts.DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=artifacts.REPO / "bench" / "grammar")
    args = parser.parse_args()
    kernels, why = artifacts.kernel_library()
    print(f"native kernels: {why}", flush=True)
    results = {"tokens": args.tokens, "reps": args.reps, "kernels": why,
               "batches": measure(artifacts.bundle(args.cache, "small", "fp32"), kernels, args.tokens, args.reps)}
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
