"""What the runtime spends per token beyond the lm_head at the real vocabulary (131072), as ratios to the lm_head.

`python -m bench.vocab_cost` times, on one core:
- the lm_head: a float32 numpy matmul [rows, 4480] x [4480, 131072] (the real hidden size and vocabulary),
  done as 8 products with a [4480, 16384] block, so the same multiply-adds and bytes read without holding
  2.3 GB;
- the sampler chain (`choose` then `accept`, as the engine runs them) on seeded random float32 logits
  [rows, 131072] for greedy, temperature + top-p 0.95 (standard-normal logits are flat: most of the
  vocabulary is in the nucleus, the worst case), top-k 50, and on top of greedy the repetition, presence
  and frequency penalties (8000-token prompt, 8000 output tokens so far), logprobs 5 and the thinking
  stage's mask, the thinking stage forcing its close, and the grammar stage (llguidance's mask for the
  answer) inside a long JSON string and inside an array of small objects (bench/grammar.py's schemas);
- the output processor (detokenizer, think-tag split, stop strings, tool-call parser) over a 2000-token
  output that is one long tool call, per token over tokens 0-200 and 1800-2000 (flat means no work
  that grows with the output), with the synthesized tokenizer padded to 131072 entries.

Each figure is the median over repetitions, per token per row. Run it under `nice` on a busy machine; the
ratios are what to compare, not the absolute times.
"""

from __future__ import annotations

import os

# The sampler runs on one core, so the lm_head it is compared with does too.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import statistics
import time
from collections.abc import Callable

import numpy as np

from bench.grammar import SCHEMAS
from edge_runtime.engine.answer_format import AnswerFormat, FormatKind, ResponseFormat
from edge_runtime.engine.grammar import GrammarCompiler, GrammarStage
from edge_runtime.engine.output import OutputProcessor
from edge_runtime.engine.records import THINK_CLOSE, Channel, SamplingParams, ThinkingConfig
from edge_runtime.engine.sampler import SamplerChain, SamplerState, choose
from edge_runtime.engine.thinking import ThinkingController
from nemotron_export.tokenizer_synth import build_tokenizer, corpus_text

VOCAB, HIDDEN, BLOCK = 131072, 4480, 16384
OUTPUT_TOKENS, WINDOW = 2000, 200
PENALTY_HISTORY = 8000  # prompt tokens, and output tokens already recorded, for the penalties


def _median_s(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def lm_head_s(rows: int, rng: np.random.Generator) -> float:
    """Seconds for one lm_head call over `rows` rows."""
    weight = rng.standard_normal((HIDDEN, BLOCK), dtype=np.float32)
    hidden = rng.standard_normal((rows, HIDDEN), dtype=np.float32)
    return _median_s(lambda: [hidden @ weight for _ in range(VOCAB // BLOCK)], 5)


def sampler_cases(tokenizer) -> dict[str, Callable[[], SamplerChain]]:
    prompt = np.random.default_rng(1).integers(0, VOCAB, PENALTY_HISTORY).tolist()
    compiler = GrammarCompiler(tokenizer, VOCAB, {2})
    grammars = {name: compiler.compile(AnswerFormat(response_format=ResponseFormat(FormatKind.JSON_SCHEMA, schema)))
                for name, schema in SCHEMAS.items()}

    def chain(thinking: ThinkingConfig | None = None, prompt_ids=(), history: int = 0, grammar: str | None = None,
              **params) -> Callable[[], SamplerChain]:
        def make() -> SamplerChain:
            state = SamplerState.create(SamplingParams(seed=0, **params).validate(), prompt_ids)
            state.record(np.random.default_rng(2).integers(0, VOCAB, history).tolist())
            controller = ThinkingController(tokenizer, thinking, {2}) if thinking is not None else None
            stage = GrammarStage(grammars[grammar], {2}) if grammar is not None else None
            return SamplerChain(state, controller, frozenset({2}), stage)
        return make

    return {
        "greedy": chain(temperature=0.0),
        "temperature 0.6 + top-p 0.95": chain(temperature=0.6, top_p=0.95),
        "temperature 1.0 + top-p 0.95": chain(temperature=1.0, top_p=0.95),
        "top-k 50": chain(temperature=1.0, top_k=50),
        "greedy + penalties": chain(temperature=0.0, repetition_penalty=1.1, presence_penalty=0.5,
                                    frequency_penalty=0.1, prompt_ids=prompt, history=PENALTY_HISTORY),
        "greedy + logprobs 5": chain(temperature=0.0, logprobs=5),
        "greedy + thinking masking": chain(ThinkingConfig(enabled=True), temperature=0.0),
        "thinking forcing": chain(ThinkingConfig(enabled=True, max_thinking_tokens=0, close_text="</think>" * 64),
                                  temperature=0.0),
        "temperature 1.0": chain(temperature=1.0),
        "temperature 1.0 + grammar (JSON string)": chain(temperature=1.0, grammar="string"),
        "temperature 1.0 + grammar (JSON objects)": chain(temperature=1.0, grammar="objects"),
    }


def sampler_s(make: Callable[[], SamplerChain], rows: int, rng: np.random.Generator, steps: int = 20) -> float:
    """Seconds per step (all rows) of choose + accept."""
    chains = [make() for _ in range(rows)]
    logits = rng.standard_normal((steps, rows, VOCAB), dtype=np.float32)

    def step(k: int) -> None:
        for chain, choice in zip(chains, choose(list(logits[k]), chains)):
            chain.accept(choice.token_id)

    times = []
    for k in range(steps):
        start = time.perf_counter()
        step(k)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def output_ids(tokenizer) -> list[int]:
    """A 2000-token output: `</think>`, then a tool call that runs past the end, so that every token after the
    first takes the same path and only the length of the output so far differs between the two windows."""
    opening = tokenizer.encode('<TOOLCALL>[{"name": "write", "arguments": {"content": "', add_special_tokens=False).ids
    body = tokenizer.encode(corpus_text().replace('"', "'"), add_special_tokens=False).ids
    return ([tokenizer.token_to_id(THINK_CLOSE)] + opening + body)[:OUTPUT_TOKENS]


def output_window_s(tokenizer, ids: list[int]) -> tuple[float, float]:
    """Seconds per token of OutputProcessor.push over the first and the last WINDOW tokens."""
    processor = OutputProcessor(tokenizer, [1, 2, 3], ["<SPECIAL_12>", "\nUser:"], ["write"])
    per_token = []
    for k, token in enumerate(ids):
        channel = Channel.REASONING if k == 0 else Channel.ANSWER
        start = time.perf_counter()
        processor.push(token, channel, None)
        per_token.append(time.perf_counter() - start)
    return sum(per_token[:WINDOW]) / WINDOW, sum(per_token[-WINDOW:]) / WINDOW


def main() -> None:
    rng = np.random.default_rng(0)
    tokenizer = build_tokenizer(VOCAB)
    for rows in (1, 8):
        head = lm_head_s(rows, rng)
        print(f"rows={rows}: lm_head {head * 1e3:.2f} ms per step")
        for name, make in sampler_cases(tokenizer).items():
            t = sampler_s(make, rows, rng)
            print(f"  {name:42s} {t * 1e6 / rows:9.1f} us/token/row  {t / head:.4f} x lm_head")
    ids = output_ids(tokenizer)
    runs = [output_window_s(tokenizer, ids) for _ in range(5)]
    first, last = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    head = lm_head_s(1, rng)
    print(f"output processing over {len(ids)} tokens: tokens 0-{WINDOW} {first * 1e6:.1f} us/token "
          f"({first / head:.5f} x lm_head), tokens {len(ids) - WINDOW}-{len(ids)} {last * 1e6:.1f} us/token "
          f"({last / head:.5f} x lm_head), last/first {last / first:.2f}")


if __name__ == "__main__":
    main()
