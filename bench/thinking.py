"""Time to the final answer under a thinking budget: our single pass against the model card's two calls.

Both run on the same in-process engine, with the model card's reasoning sampling (temperature 0.6,
top-p 0.95) and the same seed, EOS ignored so that every run produces the same number of tokens.

- single pass: `Chat.prepare(ChatRequest(messages, max_thinking_tokens=B, max_answer_tokens=A, sampling={"seed": seed}))`;
  the sampler chain's thinking stage ends the reasoning at the budget by forcing "\n</think>\n\n" into
  the same stream, and the answer continues from the model's state (no second prefill).
- two calls (the model card's ThinkingBudgetClient): call 1 generates up to B tokens from the same prompt;
  if its text has no "</think>", ".\n</think>\n\n" is appended; call 2 re-reads prompt + reasoning as a
  new prompt (a fresh prefill) and generates A tokens.
- two calls on transformers: the same two calls through the reference's `generate()` (bench/reference.py:
  the same sampling settings, its own seed, exactly B and then A tokens), the client's text work done
  here: the model card's method on the runtime a user of this machine would otherwise have.
Time = wall time from submitting until the last Final (for transformers: from the first call until the
second returns). How the reasoning ended is recorded per run, and so is call 2's time to its first token
(its prefill): what the single pass saves on one engine, besides one request.
The target compares the single pass with the two calls on this engine, where only the method differs.

The case is about enforcing a budget, so the seed is chosen for the budget to bind: the first seed from
`seed` on whose sampled reasoning the random-weight model does not write </think> by itself within the
largest budget (probed untimed with a single pass; the seeds tried and why each was passed over are
reported). With the same seed both methods sample the same tokens up to the budget.
"""

from __future__ import annotations

import collections
import time

from bench.reference import Reference
from bench.settings import Settings
from bench.timing import Case
from bench.variants import Env
from edge_runtime.engine.chat import Chat, ChatRequest
from edge_runtime.engine.engine import Engine
from edge_runtime.engine.records import GenerationRequest
from edge_runtime.engine.thinking import THINK_CLOSE

MESSAGES = [{"role": "system", "content": "You are a helpful assistant. /think"},
            {"role": "user", "content": "What is 2+2?"}]  # the model card's example
TARGET = (256, "<= 0.7")  # single pass / two calls at this budget


def _binding_seed(engine, chat: Chat, s: Settings, tries: int = 20) -> tuple[int, dict[int, str]]:
    """The first seed from s.seed whose thinking runs into the largest budget; {seed: how thinking ended}."""
    tried: dict[int, str] = {}
    for seed in range(s.seed, s.seed + tries):
        request = chat.prepare(ChatRequest(MESSAGES, max_thinking_tokens=max(s.budgets), max_answer_tokens=1,
                                           sampling={"seed": seed}, ignore_eos=True))
        handle = engine.submit(request)
        engine.run_until_done([handle])
        f = handle.final
        tried[seed] = f"{f.thinking_ended_by} after {f.usage.reasoning_tokens} reasoning tokens"
        if f.thinking_ended_by == "token_budget":
            return seed, tried
    raise RuntimeError(f"no seed in {tries} lets the budget bind: {tried}")


def thinking(env: Env, s: Settings) -> dict:
    case = Case("thinking", warmups=s.warmups)
    v = env.preferred(s.service_format)
    engine = env.engine(v, max_batch=1)
    chat = Chat(engine)
    tok = engine.tokenizer
    prompt_text = chat.render(ChatRequest(MESSAGES))
    ended: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    seed, tried = _binding_seed(engine, chat, s)
    with Reference(env.checkpoint, s.threads) as ref:
        case.details["reference"] = ref.info
        for budget in s.budgets:
            _budget(case, s, budget, engine, chat, prompt_text, ref, seed, ended)
    case.details.update(variant=v.label, answer_tokens=s.answer_tokens, seed=seed, seeds_tried=tried, prompt=prompt_text,
                        prompt_tokens=len(tok.encode(prompt_text, add_special_tokens=False).ids),
                        thinking_ended={k: dict(c) for k, c in ended.items()})
    return case.finish()


def _second_prompt(tok, prompt_text: str, reasoning_ids: list[int]) -> tuple[list[int], bool]:
    """The model card client's call 2: prompt + call 1's text, closed with ".\n</think>\n\n" unless it
    holds </think>, encoded as a new prompt; and whether the model had closed its reasoning itself."""
    reasoning = tok.decode(reasoning_ids, skip_special_tokens=False)
    closed = THINK_CLOSE in reasoning
    if not closed:
        reasoning += ".\n</think>\n\n"
    return tok.encode(prompt_text + reasoning, add_special_tokens=False).ids, closed


def _budget(case: Case, s: Settings, budget: int, engine: Engine, chat: Chat, prompt_text: str, ref: Reference,
            seed: int, ended: dict[str, collections.Counter]) -> None:
    """The three methods at one budget, interleaved round by round; `prompt_text` is MESSAGES rendered."""
    tok = engine.tokenizer
    call2_prefill: list[float] = []  # seconds to call 2's first token: the prefill the single pass saves

    def single() -> float:
        request = chat.prepare(ChatRequest(MESSAGES, max_thinking_tokens=budget, max_answer_tokens=s.answer_tokens,
                                           sampling={"seed": seed}, ignore_eos=True))
        t0 = time.perf_counter()
        handle = engine.submit(request)
        engine.run_until_done([handle])
        seconds = time.perf_counter() - t0
        f = handle.final
        ended[f"single {budget}"][f"{f.thinking_ended_by}: {f.usage.reasoning_tokens} reasoning + "
                                  f"{f.usage.forced_tokens} forced + {f.usage.answer_tokens} answer tokens"] += 1
        return seconds

    def two_calls() -> float:
        request = chat.prepare(ChatRequest(MESSAGES, sampling={"seed": seed}))
        t0 = time.perf_counter()
        first = engine.generate(GenerationRequest(request.prompt_ids, request.sampling, max_tokens=budget,
                                                  ignore_eos=True))
        ids, closed = _second_prompt(tok, prompt_text, first.token_ids)
        second = engine.generate(GenerationRequest(ids, request.sampling, max_tokens=s.answer_tokens, ignore_eos=True))
        seconds = time.perf_counter() - t0
        call2_prefill.append(second.timings.time_to_first_token_ms / 1000)
        how = "model wrote </think>" if closed else f"{len(first.token_ids)} tokens, no </think>: closed by the client"
        ended[f"two calls {budget}"][f"{how}; call 2 prefilled {len(ids)} tokens, {len(second.token_ids)} answer tokens"] += 1
        return seconds

    def two_calls_transformers() -> float:
        request = chat.prepare(ChatRequest(MESSAGES, sampling={"seed": seed}))
        p = request.sampling
        t0 = time.perf_counter()
        first = ref.generate(request.prompt_ids, budget, p.temperature, p.top_p, seed)
        ids, _ = _second_prompt(tok, prompt_text, first)
        ref.generate(ids, s.answer_tokens, p.temperature, p.top_p, seed)
        return time.perf_counter() - t0

    case.measure_interleaved({f"single pass {budget}": ("s", single), f"two calls {budget}": ("s", two_calls),
                              f"two calls transformers {budget}": ("s", two_calls_transformers)}, s.reps)
    case.record(f"call 2 prefill {budget}", "s", call2_prefill[-s.reps:])
    case.ratio(f"single / two calls {budget}", f"single pass {budget}", f"two calls {budget}",
               TARGET[1] if budget == TARGET[0] else None)
    case.ratio(f"single / two calls transformers {budget}", f"single pass {budget}",
               f"two calls transformers {budget}")
