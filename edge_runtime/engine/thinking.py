"""Per-request reasoning control: the thinking budget as a stage of the sampler chain, and the think-tag stripper.

`ThinkingController` is one request's budget, a small state machine that works the way llama.cpp's
reasoning budget does: before each draw `apply(logits)` either forces the next token of the close sequence
(default `\\n</think>\\n\\n`, returned as the id to commit instead of sampling) or masks what may not be
sampled in the row; `accept(token)` advances on every committed token, so the answer continues from the
model's own state with no second prefill. States and transitions:

    THINKING --model emits </think>-------------------------------> ANSWER   (ended_by MODEL)
    THINKING --budget: newline at >= B tokens, or B + G tokens-----> CLOSING  (ended_by TOKEN_BUDGET)
    THINKING --first token accepted at/after the deadline----------> CLOSING  (ended_by DEADLINE)
    CLOSING  --last forced token accepted--------------------------> ANSWER
    prompt already closed (`<think></think>`) -----------------------> ANSWER   (ended_by DISABLED)
    ANSWER   --max_answer_tokens reached---------------------------> DONE     (`exhausted`)

Counting: `reasoning_tokens` are the model's own tokens while THINKING (its `</think>` included), so
`reasoning_tokens <= B + G` always; forced tokens are counted in `forced_tokens`. The channel of every
token is decided here, once: reasoning up to and including `</think>` (forced or not), the answer after
it; output processing shows each token's text on its channel. Masks:
in THINKING the request's stop tokens (a reply never ends inside its reasoning, so the answer keeps its
room), in ANSWER the think tags (no second `</think>`, no new `<think>`).

A newline is a token whose text contains "\\n". When the budget hits, the close sequence is completed
rather than restarted if the model already wrote its beginning: the longest token-boundary prefix of the
close sequence whose text ends the model's reasoning text is skipped (so "...done.\\n" is followed by
`</think>`, not by a second "\\n").

The deadline is measured from the first generated token with an injectable millisecond clock; the token
that arrives at or after it is still the model's reasoning, and the close is forced from the next step.

`TagStripper` is the text-side counterpart: it drops the `<think>`/`</think>` tags from decoded text, so
neither the reasoning nor the answer ever shows them. Special tokens are looked up by their text through the tokenizer, never by id.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable

import numpy as np
from tokenizers import Tokenizer

from edge_runtime.engine.records import THINK_CLOSE, THINK_OPEN, Channel, ThinkingConfig, ThinkingEnd
from edge_runtime.engine.toolcalls import held_back_length

class State(enum.Enum):
    THINKING = "thinking"
    CLOSING = "closing"
    ANSWER = "answer"
    DONE = "done"


def _monotonic_ms() -> float:
    return time.monotonic() * 1000.0


class ThinkingController:
    """One request's reasoning budget, a stage of its sampler chain: `apply()` before the draw, `accept()`
    after every committed token, `exhausted` once the answer budget is spent."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        config: ThinkingConfig,
        stop_ids: Iterable[int] = (),
        clock: Callable[[], float] = _monotonic_ms,
    ) -> None:
        self.config = config
        self._stop_ids = np.array(sorted(set(stop_ids)), dtype=np.int64)
        self._clock = clock
        self._close_id = tokenizer.token_to_id(THINK_CLOSE)
        if self._close_id is None:
            raise ValueError(f"tokenizer has no {THINK_CLOSE!r} token")
        self._close_ids = tokenizer.encode(config.close_text, add_special_tokens=False).ids
        if self._close_id not in self._close_ids:
            raise ValueError(f"close_text {config.close_text!r} does not tokenize to a {THINK_CLOSE!r} token")
        self._close_at = self._close_ids.index(self._close_id)  # forced tokens past it are the answer's
        # Text of each token-boundary prefix of the close sequence, for matching what the model wrote.
        self._close_prefix_texts = [
            tokenizer.decode(self._close_ids[:k], skip_special_tokens=False) for k in range(len(self._close_ids))
        ]
        # Once the answer has begun, a sampled <think> or a second </think> would put reasoning tags into
        # the answer, so the sampler is told to skip them.
        self._tag_ids = np.array([i for i in (tokenizer.token_to_id(THINK_OPEN), self._close_id) if i is not None],
                                 dtype=np.int64)
        self._tokenizer = tokenizer
        self._token_text: dict[int, str] = {}
        self._reasoning_tail = ""
        self._close_pos = 0
        self._started_ms: float | None = None

        self.reasoning_tokens = 0
        self.answer_tokens = 0
        self.forced_tokens = 0
        self.ended_by: ThinkingEnd | None = None
        self.state = State.THINKING
        if not config.enabled:
            self.state, self.ended_by = State.ANSWER, ThinkingEnd.DISABLED
        elif self._thinking_cap() == 0:
            self._start_closing(ThinkingEnd.TOKEN_BUDGET)
        self._check_caps()

    def apply(self, logits: np.ndarray) -> int | None:
        """Before the draw: the id to commit instead of sampling (the close sequence's next token), or None
        after masking, in place in this row of logits [V], what may not be sampled now. While thinking: the
        request's stop tokens, since a reply that ends inside its reasoning has no answer (the budget forces
        the close instead). In the answer: the think tags."""
        if self.state is State.CLOSING:
            return self._close_ids[self._close_pos]
        masked = self._stop_ids if self.state is State.THINKING else self._tag_ids
        masked = masked[masked < logits.shape[-1]]
        logits[masked] = -np.inf
        return None

    def accept(self, token_id: int) -> Channel:
        """Advance on a committed token; returns its channel."""
        if self.state is State.DONE:
            raise RuntimeError("accept() after the answer budget was spent")
        if self.state is State.CLOSING and token_id != self._close_ids[self._close_pos]:
            raise RuntimeError(f"token {token_id} is not the forced close token {self._close_ids[self._close_pos]}")
        now = self._clock()
        if self._started_ms is None:
            self._started_ms = now
        channel = self._transition(token_id, now)
        self._check_caps()
        return channel

    @property
    def exhausted(self) -> bool:
        """The answer budget is spent: the request ends with FinishReason.LENGTH."""
        return self.state is State.DONE

    @property
    def answering(self) -> bool:
        """The next token drawn is the answer's (the grammar stage masks only these)."""
        return self.state is State.ANSWER

    @property
    def forced_answer_ids(self) -> list[int]:
        """The tokens the close sequence forces after `</think>`: the first of the answer when a budget ends
        the reasoning."""
        return self._close_ids[self._close_at + 1:]

    def _transition(self, token_id: int, now: float) -> Channel:
        if self.state is State.CLOSING:
            self.forced_tokens += 1
            channel = Channel.ANSWER if self._close_pos > self._close_at else Channel.REASONING
            self._close_pos += 1
            if self._close_pos == len(self._close_ids):
                self.state = State.ANSWER
            return channel
        if self.state is State.ANSWER:
            self.answer_tokens += 1
            return Channel.ANSWER
        self.reasoning_tokens += 1
        if token_id == self._close_id:
            self.state, self.ended_by = State.ANSWER, ThinkingEnd.MODEL
            return Channel.REASONING
        text = self._text(token_id)
        self._reasoning_tail = (self._reasoning_tail + text)[-len(self.config.close_text) :]
        budget = self.config.max_thinking_tokens
        if budget is not None and (
            self.reasoning_tokens >= budget + self.config.thinking_grace_tokens
            or (self.reasoning_tokens >= budget and "\n" in text)
        ):
            self._start_closing(ThinkingEnd.TOKEN_BUDGET)
        elif self.config.thinking_deadline_ms is not None and now - self._started_ms >= self.config.thinking_deadline_ms:
            self._start_closing(ThinkingEnd.DEADLINE)
        return Channel.REASONING

    def _start_closing(self, reason: ThinkingEnd) -> None:
        self.state, self.ended_by = State.CLOSING, reason
        # Skip the part of the close sequence the model has already written itself.
        self._close_pos = max(
            k for k, prefix in enumerate(self._close_prefix_texts) if self._reasoning_tail.endswith(prefix)
        )

    def _check_caps(self) -> None:
        answer_cap = self.config.max_answer_tokens
        if answer_cap is not None and self.state is State.ANSWER and self.answer_tokens >= answer_cap:
            self.state = State.DONE

    def _thinking_cap(self) -> int | None:
        budget = self.config.max_thinking_tokens
        return None if budget is None else budget + self.config.thinking_grace_tokens

    def _text(self, token_id: int) -> str:
        if token_id not in self._token_text:
            self._token_text[token_id] = self._tokenizer.decode([token_id], skip_special_tokens=False)
        return self._token_text[token_id]


class TagStripper:
    """Decoded text deltas in, the same text without `<think>` and `</think>` out, however the text is split.

    Tags are removed in one left-to-right pass, like `str.replace`: text that only spells a tag once a tag
    inside it is removed (`<think<think>>`) is the model's text and is kept. The possible beginning of a
    tag at the end of a delta is held back until the next delta decides it.
    """

    _TAGS = (THINK_OPEN, THINK_CLOSE)

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, delta: str) -> str:
        buffer, out = self._pending + delta, []
        while True:
            hits = [(buffer.find(tag), tag) for tag in self._TAGS if tag in buffer]
            if not hits:
                break
            start, tag = min(hits)
            out.append(buffer[:start])
            buffer = buffer[start + len(tag):]
        keep = max(held_back_length(buffer, tag) for tag in self._TAGS)
        out.append(buffer[:len(buffer) - keep])
        self._pending = buffer[len(buffer) - keep:]
        return "".join(out)

    def flush(self) -> str:
        pending, self._pending = self._pending, ""
        return pending
