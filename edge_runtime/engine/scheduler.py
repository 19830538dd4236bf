"""Continuous-batching scheduler: who gets a state slot, and what each engine step runs.

Waiting requests are ordered by (priority, deadline, arrival). A request is admitted when a state slot is
free (the pool is sized by the memory plan, so a free slot means the budget holds one more sequence);
the queue in front of admission is bounded. Every step decodes one token for each running sequence and
spends what is left of a per-step token budget on prompt chunks, so a long prompt never stalls the
decode latency of running streams by more than one chunk. A chunk also ends where its sequence is to be
snapshotted for the prefix cache.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field

from edge_runtime.engine.records import QueueFullError
from edge_runtime.engine.sequence import Sequence


@dataclass
class StepPlan:
    decode: list[Sequence] = field(default_factory=list)
    prefill: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, chunk length)

    def __bool__(self) -> bool:
        return bool(self.decode or self.prefill)


@dataclass
class SchedulerConfig:
    max_queue: int = 64
    max_step_tokens: int = 512  # decode tokens + prefill tokens per step
    prefill_chunk: int = 256


class Scheduler:
    def __init__(self, config: SchedulerConfig, max_rows: int):
        self.config = config
        self.max_rows = max_rows  # sequences one model call takes
        self._waiting: list[tuple[int, float, int, Sequence]] = []
        self._order = itertools.count()
        self.running: list[Sequence] = []

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    def enqueue(self, seq: Sequence, free_slots: int = 0) -> None:
        """Queue a request. `max_queue` bounds the requests that will still wait once the `free_slots` are
        taken, so a burst that fits the free slots plus the queue is accepted however soon the engine admits."""
        waiting = len(self._waiting) - free_slots
        if waiting >= self.config.max_queue:
            raise QueueFullError(f"queue: {waiting} requests waiting for a slot, the limit is {self.config.max_queue}")
        heapq.heappush(self._waiting, (*_urgency(seq), next(self._order), seq))

    def pop_waiting(self) -> Sequence | None:
        return heapq.heappop(self._waiting)[3] if self._waiting else None

    def peek_waiting(self) -> Sequence | None:
        return self._waiting[0][3] if self._waiting else None

    def remove_waiting(self, seq: Sequence) -> bool:
        for k, entry in enumerate(self._waiting):
            if entry[3] is seq:
                self._waiting.pop(k)
                heapq.heapify(self._waiting)
                return True
        return False

    def plan(self) -> StepPlan:
        """Decode every running sequence that has a token to feed, in slot order; fill the rest of the budget
        with prompt chunks, most urgent first. Slot order, because a model call over consecutive slots
        updates their state in place, while any other order copies every row's state in and out (StatePool)."""
        plan = StepPlan()
        budget = self.config.max_step_tokens
        for seq in sorted(self.running, key=lambda s: s.slot):
            if not seq.prefilling and seq.next_token is not None:
                plan.decode.append(seq)
                budget -= 1
        prefilling = sorted((s for s in self.running if s.prefilling), key=_urgency)
        for seq in prefilling:
            if budget <= 0 or len(plan.prefill) == self.max_rows:
                break
            n = min(seq.prompt_len - seq.computed, self.config.prefill_chunk, budget)
            if seq.captures:  # a chunk ends where a snapshot is to be taken
                n = min(n, seq.captures[0] - seq.computed)
            plan.prefill.append((seq, n))
            budget -= n
        return plan


def _urgency(seq: Sequence) -> tuple[int, float]:
    r = seq.request
    return int(r.priority), r.deadline if r.deadline is not None else math.inf
