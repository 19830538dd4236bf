"""One request inside the engine, from submission to its `Final`: the one record the engine, the scheduler
and output processing share, and the handle its caller holds.

The caller's side: events arrive through `on_event` (default: a list read by `events()`), `wait()` returns
the `Final`, `cancel()` ends the request within one engine step. The engine's side: the slot and the
tokens the scheduler plans with, the sampler chain that picks the next token, the output processor that
turns committed tokens into events, and the timings.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_runtime.engine.output import OutputProcessor
from edge_runtime.engine.records import Event, Final, GenerationRequest, Timings
from edge_runtime.engine.sampler import SamplerChain


@dataclass(eq=False)
class Sequence:
    request: GenerationRequest
    chain: SamplerChain
    output: OutputProcessor
    max_tokens: int  # the request's, or what the context leaves when it set none
    submitted: float  # engine-clock seconds
    on_event: Callable[[Event], None] | None = None
    slot: int | None = None  # the state slot, once admitted
    tokens: list[int] = field(default_factory=list)  # prompt + generated; `computed` of them are in the state
    computed: int = 0
    cached: int = 0  # prompt tokens restored from the prefix cache
    captures: list[int] = field(default_factory=list)  # prompt positions still to snapshot, ascending
    next_token: int | None = None  # committed, not yet fed to the model
    generated: list[int] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    last_token: float | None = None
    cancelled: bool = False
    final: Final | None = None
    _events: list[Event] = field(default_factory=list)
    _done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.tokens = list(self.request.prompt_ids)

    # ---- the caller's side --------------------------------------------------------------------------------

    def cancel(self) -> None:
        self.cancelled = True

    def wait(self, timeout: float | None = None) -> Final | None:
        self._done.wait(timeout)
        return self.final

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def events(self) -> list[Event]:
        return list(self._events)

    # ---- the engine's side --------------------------------------------------------------------------------

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def prefilling(self) -> bool:
        return self.computed < self.prompt_len

    def emit(self, event: Event) -> None:
        if isinstance(event, Final):
            self.final = event
        (self.on_event or self._events.append)(event)
        if isinstance(event, Final):
            self._done.set()
