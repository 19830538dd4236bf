"""Records that cross the engine's boundary: what a caller asks for and what it gets back.

A `GenerationRequest` goes in; a stream of `Delta` and `ToolCallRecord` events and one `Final` come out.
The engine validates requests against the model (context, vocabulary, sampling ranges) and names the bad
field. `Channel`, `FinishReason` and `ThinkingEnd` are the one vocabulary for these values from the
engine to the proto boundary (they are strings too, so they compare and serialize as their values).
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edge_runtime.engine.grammar import Grammar

_ids = itertools.count()

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
DEFAULT_CLOSE_TEXT = "\n</think>\n\n"
MAX_LOGPROBS = 20
MIN_TEMPERATURE = 1e-5
# Beyond this every distribution is uniform to float32 anyway, and logits / temperature stays a number
# where float32(temperature) would be inf.
MAX_TEMPERATURE = 100.0
# Penalties outside this range push float32 logits to inf/0 and make no sense as a request anyway.
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.01, 100.0
# OpenAI's documented range for presence/frequency penalties.
MAX_ABS_ADDITIVE_PENALTY = 2.0


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens. top_k 0, top_p 1, min_p 0 and penalties at their neutral values
    disable those steps. `logprobs` None returns none; n >= 0 returns the chosen token's plus the top n."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    greedy: bool = False
    logprobs: int | None = None

    @property
    def is_greedy(self) -> bool:
        # Below MIN_TEMPERATURE the distribution is a point mass in float arithmetic anyway (and
        # logits / temperature would overflow): sample greedily, as vLLM does.
        return self.greedy or self.temperature < MIN_TEMPERATURE

    @classmethod
    def model_card_default(cls, reasoning: bool) -> "SamplingParams":
        """The model card's recommendation: temperature 0.6 / top_p 0.95 with reasoning on, greedy with it off."""
        return cls(temperature=0.6, top_p=0.95) if reasoning else cls(temperature=0.0, greedy=True)

    def override(self, values: dict[str, object]) -> "SamplingParams":
        """These params with `values` set (field names as here); an explicit temperature decides greediness,
        so a greedy default sampled at temperature 0.6 is not greedy. The ranges are checked by `validate`."""
        unknown = sorted(set(values) - {f.name for f in fields(self)})
        if unknown:
            raise RequestError("sampling", f"unknown field(s) {', '.join(unknown)}")
        greedy = {"greedy": False} if "temperature" in values and "greedy" not in values else {}
        return replace(self, **greedy, **values)

    def validate(self) -> "SamplingParams":
        """Raise ValueError naming the first field out of range; return self so calls can chain."""
        if not 0.0 <= self.temperature <= MAX_TEMPERATURE:
            raise ValueError(f"temperature: must be in [0, {MAX_TEMPERATURE:g}], got {self.temperature!r}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            raise ValueError(f"top_k: must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        if not (0.0 <= self.min_p <= 1.0):
            raise ValueError(f"min_p: must be in [0, 1], got {self.min_p!r}")
        if not (MIN_REPETITION_PENALTY <= self.repetition_penalty <= MAX_REPETITION_PENALTY):
            raise ValueError(f"repetition_penalty: must be in [{MIN_REPETITION_PENALTY}, {MAX_REPETITION_PENALTY}] "
                             f"(1 disables it), got {self.repetition_penalty!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (-MAX_ABS_ADDITIVE_PENALTY <= value <= MAX_ABS_ADDITIVE_PENALTY):
                raise ValueError(f"{name}: must be in [-2, 2], got {value!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0
        ):
            raise ValueError(f"seed: must be an integer >= 0 or None, got {self.seed!r}")
        if self.logprobs is not None and (
            isinstance(self.logprobs, bool) or not isinstance(self.logprobs, (int, np.integer))
            or not 0 <= self.logprobs <= MAX_LOGPROBS
        ):
            raise ValueError(f"logprobs: must be an integer in [0, {MAX_LOGPROBS}] or None, got {self.logprobs!r}")
        return self


@dataclass(frozen=True)
class TokenLogprobs:
    """Log-probability of the chosen token and the top-n alternatives (most probable first)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass(frozen=True)
class ThinkingConfig:
    """Per-request limits; None means unlimited. `enabled`: the prompt leaves the model thinking (False when
    the template closed the section: the request starts in the answer)."""

    max_thinking_tokens: int | None = None
    thinking_grace_tokens: int = 0
    thinking_deadline_ms: float | None = None
    max_answer_tokens: int | None = None
    close_text: str = DEFAULT_CLOSE_TEXT
    enabled: bool = True

    def __post_init__(self) -> None:
        for name in ("max_thinking_tokens", "thinking_deadline_ms", "max_answer_tokens"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.thinking_grace_tokens < 0:
            raise ValueError(f"thinking_grace_tokens must be >= 0, got {self.thinking_grace_tokens}")
        if THINK_CLOSE not in self.close_text:
            raise ValueError(f"close_text must contain {THINK_CLOSE!r}, got {self.close_text!r}")


class Priority(enum.IntEnum):
    """Lower value goes first."""

    REALTIME = 0
    NORMAL = 1
    BACKGROUND = 2


class Channel(enum.StrEnum):
    """Where a token and its text belong: decided once, on the token side, by the thinking stage
    (everything up to and including `</think>` is reasoning)."""

    REASONING = "reasoning"
    ANSWER = "answer"


class FinishReason(enum.StrEnum):
    STOP = "stop"  # an end-of-sequence token or one of stop_token_ids
    LENGTH = "length"  # max_tokens, max_answer_tokens or the context limit
    STOP_SEQUENCE = "stop_sequence"  # one of the stop strings
    CANCELLED = "cancelled"  # the caller cancelled, or the engine shut down
    DEADLINE = "deadline"  # the request's deadline passed first
    ERROR = "error"  # a model call or the sampler failed; Final.error says what


class ThinkingEnd(enum.StrEnum):
    """What ended the reasoning section."""

    MODEL = "model"  # the model wrote </think> itself
    TOKEN_BUDGET = "token_budget"
    DEADLINE = "deadline"  # the thinking deadline
    DISABLED = "disabled"  # the prompt left no thinking section open


class GrammarOutcome(enum.StrEnum):
    """How a constrained answer ended (Final.grammar)."""

    COMPLETE = "complete"  # it satisfies its grammar
    CUT_OFF = "cut_off"  # a token limit ended it first
    FAILED = "failed"  # a grammar error or a dead end ended the request
    UNFINISHED = "unfinished"  # a stop string, a cancel, a deadline or a failed model call ended it first


class RequestError(ValueError):
    """A request the engine refuses; `field` names what is wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class QueueFullError(RuntimeError):
    """The waiting queue is at its bound; try again later (RESOURCE_EXHAUSTED)."""


class EngineUnavailableError(RuntimeError):
    """The engine is draining or stopped (UNAVAILABLE)."""


def new_request_id() -> str:
    """A process-unique id for a request whose caller gave none."""
    return f"req-{next(_ids)}"


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = 256  # None: up to the context limit
    stop_strings: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    priority: Priority = Priority.NORMAL
    deadline: float | None = None  # engine-clock seconds; past it the request ends with FinishReason.DEADLINE
    # Reasoning control; None: plain generation, no thinking section and no budget.
    thinking: ThinkingConfig | None = None
    tool_names: list[str] | None = None  # parse <TOOLCALL> blocks against these tools (chat requests)
    # The answer's grammar (engine/grammar.py: tool calls, response format), compiled for this engine's
    # vocabulary; None: the answer is free.
    grammar: Grammar | None = None
    request_id: str = field(default_factory=new_request_id)
    # Prefix cache (engine/prefix_cache.py): start from the longest cached prefix of the prompt, and take
    # snapshots after the first n prompt tokens for each n in `capture_at` (pinned ones are never evicted).
    prefix_cache: bool = True
    capture_at: tuple[int, ...] = ()
    pin_captures: bool = False


@dataclass
class Delta:
    """Newly generated text on one channel (REASONING or ANSWER), with the tokens that made it."""

    text: str
    channel: Channel
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)


@dataclass
class ToolCallRecord:
    index: int
    name: str
    arguments_json: str
    error: str | None = None


@dataclass
class Usage:
    prompt_tokens: int = 0
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    forced_tokens: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens whose state came from the prefix cache, not prefilled

    @property
    def completion_tokens(self) -> int:
        return self.reasoning_tokens + self.answer_tokens + self.forced_tokens


@dataclass
class Timings:
    queue_wait_ms: float = 0.0
    time_to_first_token_ms: float = 0.0
    token_latencies_ms: list[float] = field(default_factory=list)
    total_ms: float = 0.0


@dataclass
class Final:
    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    thinking_ended_by: ThinkingEnd | None = None  # None: no thinking budget, or still thinking at the end
    token_ids: list[int] = field(default_factory=list)
    reasoning_text: str = ""
    answer_text: str = ""
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    # What went wrong: why the request failed (ERROR), or why a constrained answer is incomplete (LENGTH).
    error: str | None = None
    grammar: GrammarOutcome | None = None  # None: the answer had no grammar


Event = Delta | ToolCallRecord | Final
