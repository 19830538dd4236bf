"""Records that cross the engine's boundary: what a caller asks for and what it gets back.

A `GenerationRequest` goes in; a stream of `Delta` and `ToolCallRecord` events and one `Final` come out.
The engine validates requests against the model (context, vocabulary) and names the bad field.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

from edge_runtime.engine.sampler import SamplingParams, TokenLogprobs
from edge_runtime.engine.thinking import ThinkingConfig

_ids = itertools.count()


class Priority(enum.IntEnum):
    """Lower value goes first."""

    REALTIME = 0
    NORMAL = 1
    BACKGROUND = 2


class RequestError(ValueError):
    """A request the engine refuses; `field` names what is wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class QueueFullError(RuntimeError):
    """The waiting queue is at its bound; try again later (RESOURCE_EXHAUSTED)."""


class EngineUnavailableError(RuntimeError):
    """The engine is draining or stopped (UNAVAILABLE)."""


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = 256
    stop_strings: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    priority: Priority = Priority.NORMAL
    deadline: float | None = None  # engine-clock seconds; past it the request ends with finish_reason "deadline"
    # Reasoning control; None means the prompt does not open a thinking section (plain generation).
    thinking: ThinkingConfig | None = None
    tool_names: list[str] | None = None  # parse <TOOLCALL> blocks against these tools (chat requests)
    request_id: str = field(default_factory=lambda: f"req-{next(_ids)}")


@dataclass
class Delta:
    """Newly generated text on one channel ("reasoning" or "answer"), with the tokens that made it."""

    text: str
    channel: str
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
    finish_reason: str  # stop | length | stop_sequence | cancelled | deadline | error
    usage: Usage
    timings: Timings
    thinking_ended_by: str | None = None  # model | token_budget | deadline | disabled
    token_ids: list[int] = field(default_factory=list)
    reasoning_text: str = ""
    answer_text: str = ""
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    error: str | None = None


Event = Delta | ToolCallRecord | Final
