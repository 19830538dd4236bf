"""Next-token choice: each sequence's sampler chain, and batched sampling over logits [B, V] with per-row
parameters (numpy only).

A sequence's `SamplerChain` runs its stages in order: first the stages that force or mask (the thinking
budget, engine/thinking.py: `apply` before the draw, `accept` after the commit, as llama.cpp's reasoning
budget does; then, on the answer channel only, the answer's grammar, engine/grammar.py), then the draw
below over what is left; `accept` advances every stage on the committed token, whether it was drawn or
forced. The thinking stage's forced close comes first: a row it forces is never masked. Each sequence owns a `SamplerState`: its `SamplingParams`, its own random generator and the token counts the
penalties need. A row's draw depends only on its own logits and its own generator, so a seeded request
yields the same tokens alone or batched with anything else.

Per row, in this order (vLLM/HF order):
  1. repetition_penalty (HF): over tokens seen in prompt + output, positive logits are divided by the penalty,
     negative ones multiplied by it;
  2. frequency_penalty and presence_penalty (OpenAI): over output tokens only,
     logit -= frequency_penalty * count + presence_penalty * (count > 0);
  3. greedy rows (temperature 0 or greedy=True): argmax, no further steps;
  4. temperature: logits / temperature;
  5. truncation: top_k, then top_p over the top-k-renormalised distribution, then min_p
     (keep p >= min_p * p_max);
  6. one uniform draw from the row's generator, inverted through the kept tokens' cumulative distribution.

Logprobs are log-softmax of the logits after steps 1-4 (penalties and temperature; for greedy rows the
temperature step is skipped, i.e. temperature 1), before truncation: the chosen token's and the top-n
alternatives'. This is vLLM's "processed" logprobs apart from truncation, which would otherwise put -inf on
every alternative outside the nucleus.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.engine.grammar import GrammarError, GrammarStage
from edge_runtime.engine.records import Channel, SamplingParams, TokenLogprobs
from edge_runtime.engine.thinking import ThinkingController


class IdTally:
    """Distinct token ids in first-seen order with their counts, as arrays that grow in place, so adding one
    id is O(1) (amortised) and a penalty reads them without rebuilding anything from Python objects."""

    def __init__(self) -> None:
        self._ids = np.empty(64, dtype=np.int64)
        self._counts = np.zeros(64, dtype=np.float32)
        self._slot: dict[int, int] = {}

    def add(self, token_id: int) -> None:
        slot = self._slot.get(token_id)
        if slot is None:
            slot = len(self._slot)
            if slot == self._ids.shape[0]:
                self._ids = np.resize(self._ids, 2 * slot)
                self._counts = np.concatenate([self._counts, np.zeros(slot, dtype=np.float32)])
            self._slot[token_id] = slot
            self._ids[slot] = token_id
        self._counts[slot] += 1

    def __len__(self) -> int:
        return len(self._slot)

    @property
    def ids(self) -> np.ndarray:
        return self._ids[: len(self._slot)]

    @property
    def counts(self) -> np.ndarray:
        return self._counts[: len(self._slot)]


@dataclass
class SamplerState:
    """One sequence's sampling state; the engine keeps one per sequence and calls `record` for every token
    appended to it, sampled or forced, so the penalties see the whole output."""

    params: SamplingParams
    rng: np.random.Generator
    seen: IdTally = field(default_factory=IdTally)  # prompt and output ids: the repetition penalty's
    output: IdTally = field(default_factory=IdTally)  # output ids: the presence and frequency penalties'

    @classmethod
    def create(cls, params: SamplingParams, prompt_token_ids: Iterable[int] = ()) -> "SamplerState":
        """`params` as the engine validated them (SamplingParams.validate). No seed: fresh OS entropy, so
        unseeded requests differ from each other."""
        state = cls(params, np.random.default_rng(params.seed))
        for token_id in prompt_token_ids:
            state.seen.add(int(token_id))
        return state

    def record(self, token_ids: int | Iterable[int]) -> None:
        for token_id in [token_ids] if isinstance(token_ids, (int, np.integer)) else token_ids:
            self.seen.add(int(token_id))
            self.output.add(int(token_id))


@dataclass(frozen=True)
class SampleResult:
    token_ids: np.ndarray  # [B] int64
    logprobs: list[TokenLogprobs | None]  # None for rows that did not ask


def sample(logits: np.ndarray, states: Sequence[SamplerState]) -> SampleResult:
    """Pick one token per row of `logits` [B, V]. Advances each sampled row's generator by exactly one draw;
    does not record the chosen tokens (the engine does, see `SamplerState.record`)."""
    if logits.ndim != 2:
        raise ValueError(f"logits: expected shape [B, V], got {logits.shape}")
    if logits.shape[0] != len(states):
        raise ValueError(f"states: {len(states)} states for {logits.shape[0]} rows of logits")
    chosen = np.empty(len(states), dtype=np.int64)
    logprobs: list[TokenLogprobs | None] = []
    for row, state in enumerate(states):
        token, lp = _sample_row(logits[row], state)
        chosen[row] = token
        logprobs.append(lp)
    return SampleResult(chosen, logprobs)


@dataclass(frozen=True)
class Choice:
    """A row's next token: drawn (with its logprobs if asked) or forced by a stage; or, with `error` set, none,
    because a stage found no way to go on (the request ends with that error)."""

    token_id: int
    logprobs: TokenLogprobs | None = None
    forced: bool = False
    error: str | None = None


@dataclass(frozen=True)
class Accepted:
    """What committing a token means: its channel, and whether it ends the request (a stop token the model
    chose; a forced token never ends it)."""

    channel: Channel
    stops: bool


@dataclass
class SamplerChain:
    """One sequence's way from a row of logits to its next token."""

    state: SamplerState
    thinking: ThinkingController | None = None
    stop_ids: frozenset[int] = frozenset()
    grammar: GrammarStage | None = None
    _forced: bool = False

    def apply(self, logits: np.ndarray) -> int | None:
        """The stages before the draw, on one row [V] (masks are written into it): a forced id, or None to draw.
        GrammarError when the grammar leaves nothing to draw."""
        forced = self.thinking.apply(logits) if self.thinking is not None else None
        self._forced = forced is not None
        if forced is None and self.grammar is not None and (self.thinking is None or self.thinking.answering):
            self.grammar.apply(logits)
        return forced

    def accept(self, token_id: int) -> Accepted:
        self.state.record(token_id)
        channel = self.thinking.accept(token_id) if self.thinking is not None else Channel.ANSWER
        stops = not self._forced and token_id in self.stop_ids
        if self.grammar is not None and channel is Channel.ANSWER and not stops:
            self.grammar.accept(token_id)
        return Accepted(channel, stops)

    @property
    def exhausted(self) -> bool:
        """A stage's budget is spent (the answer budget): the request ends with FinishReason.LENGTH."""
        return self.thinking is not None and self.thinking.exhausted


def choose(rows: Sequence[np.ndarray], chains: Sequence[SamplerChain]) -> list[Choice]:
    """Each row's next token: its chain's stages force it or mask the row, then the rows left are sampled as
    one batch. A row whose grammar leaves nothing to draw gets a Choice with its error; the others go on.
    Accepting the choices is the caller's (`SamplerChain.accept`, once the token is committed)."""
    choices: list[Choice] = []
    drawn: list[int] = []
    for k, (row, chain) in enumerate(zip(rows, chains)):
        try:
            forced = chain.apply(row)
        except GrammarError as e:
            choices.append(Choice(-1, error=str(e)))
            continue
        choices.append(Choice(forced, forced=True) if forced is not None else Choice(-1))
        if forced is None:
            drawn.append(k)
    if drawn:
        result = sample(np.stack([rows[k] for k in drawn]), [chains[k].state for k in drawn])
        for j, k in enumerate(drawn):
            choices[k] = Choice(int(result.token_ids[j]), result.logprobs[j])
    return choices


def apply_penalties(logits: np.ndarray, state: SamplerState) -> np.ndarray:
    """Steps 1 and 2 on one row; returns a float32 copy when a penalty applies, else the input."""
    p = state.params
    vocab = logits.shape[-1]
    out = logits
    if p.repetition_penalty != 1.0 and len(state.seen):
        ids = _in_vocab(state.seen.ids, vocab)
        out = np.array(logits, dtype=np.float32)
        seen = out[ids]
        out[ids] = np.where(seen > 0, seen / p.repetition_penalty, seen * p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and len(state.output):
        ids, counts = state.output.ids, state.output.counts
        keep = (ids >= 0) & (ids < vocab)
        if out is logits:
            out = np.array(logits, dtype=np.float32)
        out[ids[keep]] -= p.frequency_penalty * counts[keep] + p.presence_penalty
    return out


def allowed_tokens(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """Steps 4-5 on one row of logits [V] (after the penalties): the token ids that may be drawn and their
    weights exp((logit - max) / temperature) in float64, proportional to their probabilities (most probable
    first when top_p applies)."""
    t, m = params.temperature, float(logits.max())
    if not math.isfinite(m):
        logits = _drawable(logits)
        m = float(logits.max())
    rest = 0.0  # float64 weight of the tokens left out before weighing, for top_p's total
    if 0 < params.top_k < logits.shape[0]:
        ids = np.argpartition(-logits, params.top_k - 1)[: params.top_k]  # logit order is probability order
    elif params.top_p < 1.0:
        ids, rest = _nucleus_candidates(logits, m, t, params.top_p)
    else:
        ids = np.arange(logits.shape[0])
    weights = np.exp((logits[ids].astype(np.float64) - m) / t)
    if params.top_p < 1.0:
        keep = _nucleus(weights, params.top_p * (weights.sum() + rest))
        ids, weights = ids[keep], weights[keep]
    if params.min_p > 0.0:
        keep = weights >= params.min_p * weights.max()
        ids, weights = ids[keep], weights[keep]
    return ids, weights


def _drawable(logits: np.ndarray) -> np.ndarray:
    """A row whose largest logit is not finite, made one the arithmetic can weigh: a NaN is never drawn,
    +inf logits share all the probability. ValueError if no logit is finite or +inf."""
    top = np.isposinf(logits)
    if top.any():
        return np.where(top, np.float32(0.0), np.float32(-np.inf))
    clean = np.where(np.isnan(logits), np.float32(-np.inf), logits)
    if not np.isfinite(clean.max()):
        raise ValueError("logits: no token has a finite logit")
    return clean


def _nucleus_candidates(logits: np.ndarray, m: float, t: float, top_p: float) -> tuple[np.ndarray, float]:
    """The tokens that can be in a top_p nucleus of softmax(logits / t), and the total weight of the others.

    A token whose weight is below (1 - top_p) * total / V cannot be in it: all tokens at or below its weight
    hold less than the 1 - top_p tail together. One float32 pass over the vocabulary finds the rest, so only
    they are weighed in float64; on 131072 logits that pass is what top_p costs. Half the bound leaves room
    for float32 rounding; exponents are floored at -80, where exp would return slow denormals.
    """
    w = np.exp(np.maximum((logits.astype(np.float32, copy=False) - np.float32(m)) / np.float32(t), np.float32(-80.0)))
    total = w.sum(dtype=np.float64)
    ids = np.flatnonzero(w >= np.float32(0.5 * (1.0 - top_p) / w.shape[0] * total))
    return ids, max(0.0, total - float(w[ids].sum(dtype=np.float64)))


def _nucleus(weights: np.ndarray, mass: float) -> np.ndarray:
    """Positions in `weights` of the smallest most-probable prefix holding `mass` (at least one), most probable
    first, equal weights in position order: the prefix a stable descending sort of all of `weights` gives.

    Its size needs only the weights' values in descending order, which tied positions share: those of the 64
    largest (one partition) usually hold `mass`, else all of them are sorted (values only, not positions). The
    prefix is then every position above its smallest value plus, in position order, as many at that value as
    it takes, and only those are ordered. The cumulative sums are the full sort's, added in the same order.
    """
    n = weights.shape[0]
    values = np.sort(np.partition(weights, n - 64)[n - 64:] if n > 64 else weights)[::-1]
    cum = np.cumsum(values)
    if cum[-1] < mass and values.shape[0] < n:
        values = np.sort(weights)[::-1]
        cum = np.cumsum(values)
    size = min(int(np.searchsorted(cum, mass, side="left")) + 1, n)
    last = values[size - 1]
    above = np.flatnonzero(weights > last)
    keep = np.concatenate([above, np.flatnonzero(weights == last)[: size - above.shape[0]]])
    kept = weights[keep]
    order = np.argsort(-kept)
    # Equal weights (common in float32 logits) come out of that sort in no set order: put each run of them
    # in position order, sorting only the tied entries rather than everything stably.
    ordered = kept[order]
    equal = np.flatnonzero(ordered[1:] == ordered[:-1])
    if equal.size:
        tied = np.union1d(equal, equal + 1)
        order[tied] = order[tied][np.lexsort((order[tied], -ordered[tied]))]
    return keep[order]


def _sample_row(row: np.ndarray, state: SamplerState) -> tuple[int, TokenLogprobs | None]:
    p = state.params
    penalised = apply_penalties(row, state)
    if p.is_greedy:
        token = int(np.argmax(penalised))
        if not math.isfinite(penalised[token]):  # a NaN won argmax, or +inf did: choose among what is drawable
            penalised = _drawable(penalised)
            token = int(np.argmax(penalised))
        return token, _logprobs(penalised, 1.0, token, p.logprobs)
    ids, weights = allowed_tokens(penalised, p)
    cdf = np.cumsum(weights)
    u = state.rng.random() * cdf[-1]
    # side="right" never picks a zero-probability token sitting at u == 0.
    token = int(ids[min(int(np.searchsorted(cdf, u, side="right")), ids.shape[0] - 1)])
    return token, _logprobs(penalised, p.temperature, token, p.logprobs)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - np.max(x)
    return shifted - np.log(np.sum(np.exp(shifted)))


def _logprobs(logits: np.ndarray, temperature: float, token: int, n: int | None) -> TokenLogprobs | None:
    """The chosen token's log-probability and the top n of log_softmax(logits / temperature); None if not asked."""
    if n is None:
        return None
    logp = _log_softmax(logits.astype(np.float64) / temperature)
    top: list[tuple[int, float]] = []
    n = min(n, logp.shape[0])
    if n > 0:
        part = np.argpartition(-logp, n - 1)[:n]
        part = part[np.argsort(-logp[part], kind="stable")]
        top = [(int(t), float(logp[t])) for t in part]
    return TokenLogprobs(token, float(logp[token]), top)


def _in_vocab(ids: np.ndarray, vocab: int) -> np.ndarray:
    # Token ids past the logits' width (a tokenizer larger than the exported head) cannot be penalised.
    return ids[(ids >= 0) & (ids < vocab)]
