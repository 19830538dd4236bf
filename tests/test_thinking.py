"""The reasoning budget state machine, driven by scripted token sources through the real synthetic tokenizer.

A scripted source stands in for the model: it yields its reasoning ids while the controller is THINKING
and its answer ids afterwards, the way a real model answers once `</think>` is in its context.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

import numpy as np

from edge_runtime.engine.records import Channel, ThinkingConfig
from edge_runtime.engine.output import OutputProcessor
from edge_runtime.engine.records import Delta
from edge_runtime.engine.thinking import State, TagStripper, ThinkingController
from nemotron_export.tokenizer_synth import build_tokenizer


@lru_cache(maxsize=1)
def tok() -> Tokenizer:
    # Cached builder rather than a fixture: hypothesis reruns test bodies many times.
    return build_tokenizer(4096)


def ids(text: str) -> list[int]:
    return tok().encode(text).ids


def tid(text: str) -> int:
    token_id = tok().token_to_id(text)
    assert token_id is not None
    return token_id


@dataclass
class Run:
    tokens: list[int] = field(default_factory=list)
    channels: list[Channel] = field(default_factory=list)
    forced: list[bool] = field(default_factory=list)

    def text(self, channel: Channel | None = None) -> str:
        """All the text, or the model's own (unforced) tokens' text on one channel."""
        picked = [t for t, c, f in zip(self.tokens, self.channels, self.forced)
                  if channel is None or (c is channel and not f)]
        return tok().decode(picked, skip_special_tokens=False)


class FakeClock:
    def __init__(self, step_ms: float) -> None:
        self.now = 0.0
        self.step_ms = step_ms

    def __call__(self) -> float:
        self.now += self.step_ms
        return self.now


def row() -> np.ndarray:
    return np.zeros(tok().get_vocab_size(), dtype=np.float32)


def masked(ctrl: ThinkingController) -> set[int]:
    """The ids `apply` masks in a row (it must not force a token here)."""
    logits = row()
    assert ctrl.apply(logits) is None
    return set(np.flatnonzero(np.isneginf(logits)).tolist())


def drive(ctrl: ThinkingController, reasoning: list[int], answer: list[int]) -> Run:
    """The engine loop: the stage's forced token if any, else the scripted model's next token for its phase."""
    run = Run()
    reasoning_it, answer_it = iter(reasoning), iter(answer)
    while not ctrl.exhausted:
        forced = ctrl.apply(row())
        if forced is not None:
            token = forced
        else:
            token = next(reasoning_it if ctrl.state is State.THINKING else answer_it, None)
            if token is None:
                break
        run.tokens.append(token)
        run.channels.append(ctrl.accept(token))
        run.forced.append(forced is not None)
    return run


def controller(reasoning_enabled: bool = True, clock=None, stops=(), **limits) -> ThinkingController:
    kwargs = {} if clock is None else {"clock": clock}
    return ThinkingController(tok(), ThinkingConfig(**limits, enabled=reasoning_enabled), stops, **kwargs)


REASONING = "Okay, the user asks about rivers.\nLet me think about the water cycle first.\nThen answer."
ANSWER = "Rivers move water to the sea."


def test_budget_mid_line_closes_at_next_newline() -> None:
    reasoning = ids(REASONING)
    first_line = ids("Okay, the user asks about rivers.\n")
    assert reasoning[: len(first_line)] == first_line  # the newline is a token boundary here
    budget = 3  # well inside the first line
    ctrl = controller(max_thinking_tokens=budget, thinking_grace_tokens=100)
    run = drive(ctrl, reasoning, ids(ANSWER))
    assert ctrl.ended_by == "token_budget"
    assert ctrl.reasoning_tokens == len(first_line)
    assert run.text() == "Okay, the user asks about rivers.\n</think>\n\n" + ANSWER
    # The model's "\n" was kept and only the rest of the close forced: no doubled newline.
    assert ctrl.forced_tokens == len(ids("</think>\n\n"))
    assert run.text(Channel.ANSWER) == ANSWER


def test_grace_exhausted_forces_close_at_b_plus_g() -> None:
    reasoning = ids("word " * 50)
    ctrl = controller(max_thinking_tokens=5, thinking_grace_tokens=7)
    run = drive(ctrl, reasoning, ids(ANSWER))
    assert ctrl.reasoning_tokens == 12
    assert ctrl.ended_by == "token_budget"
    assert run.text() == tok().decode(reasoning[:12]) + "\n</think>\n\n" + ANSWER
    assert run.forced.count(True) == ctrl.forced_tokens == len(ids("\n</think>\n\n"))


def test_model_closes_itself_nothing_forced() -> None:
    reasoning = ids("Short thought.\n</think>\n\n")
    close_at = reasoning.index(tid("</think>"))
    ctrl = controller(max_thinking_tokens=100)
    run = drive(ctrl, reasoning[: close_at + 1], ids("\n\n" + ANSWER))
    assert ctrl.ended_by == "model" and ctrl.forced_tokens == 0
    assert ctrl.reasoning_tokens == close_at + 1
    assert run.text() == "Short thought.\n</think>\n\n" + ANSWER
    assert run.tokens.count(tid("</think>")) == 1


def test_stop_tokens_are_suppressed_while_thinking_and_think_tags_in_the_answer() -> None:
    """While thinking the model may close by itself but not end the reply; once the answer began, neither
    tag may be sampled."""
    tags, stops = {tid("<think>"), tid("</think>")}, {7, 11}
    ctrl = controller(max_thinking_tokens=2, stops=stops)
    assert masked(ctrl) == stops
    for token in ids("word word word"):
        if ctrl.state is not State.THINKING:
            break
        ctrl.accept(token)
    logits = row()
    while (forced := ctrl.apply(logits)) is not None:
        assert not np.isneginf(logits).any()  # forced tokens are fed, not sampled: nothing is masked
        ctrl.accept(forced)
    assert ctrl.state is State.ANSWER
    assert masked(ctrl) == tags
    assert masked(controller(reasoning_enabled=False, stops=stops)) == tags


def test_model_started_close_is_completed_not_repeated() -> None:
    close_text = "\nTime is up, answering now.\n</think>\n\n"
    close_ids = ids(close_text)
    assert len(close_ids) > 4
    # The model writes its thought and then, by itself, the first 3 tokens of the close message.
    thought = ids("Thinking hard")
    reasoning = thought + close_ids[:3] + ids(" more more more")
    budget = len(thought) + 3
    ctrl = controller(max_thinking_tokens=budget, close_text=close_text)
    run = drive(ctrl, reasoning, ids(ANSWER))
    assert ctrl.reasoning_tokens == budget
    assert ctrl.forced_tokens == len(close_ids) - 3
    assert run.text() == "Thinking hard" + close_text + ANSWER
    assert run.text().count("Time is up") == 1 and run.text().count("</") == 1


def test_deadline_closes_at_first_token_after_it() -> None:
    clock = FakeClock(step_ms=10.0)  # the first token is observed at t=10
    ctrl = controller(clock=clock, thinking_deadline_ms=45.0)
    run = drive(ctrl, ids("word " * 50), ids(ANSWER))
    # Token k is observed at 10*k ms; 10*k - 10 >= 45 first holds for k = 6.
    assert ctrl.ended_by == "deadline"
    assert ctrl.reasoning_tokens == 6
    assert run.channels[:6] == [Channel.REASONING] * 6 and run.forced[6] and not any(run.forced[:6])
    assert run.text(Channel.ANSWER) == ANSWER


def test_answer_budget_finishes_with_length() -> None:
    ctrl = controller(max_thinking_tokens=4, max_answer_tokens=3)
    run = drive(ctrl, ids("word " * 20), ids(ANSWER))
    assert ctrl.exhausted
    assert ctrl.answer_tokens == 3 and ctrl.reasoning_tokens == 4
    assert run.text(Channel.ANSWER) == tok().decode(ids(ANSWER)[:3])


def test_reasoning_disabled_starts_in_answer() -> None:
    ctrl = controller(reasoning_enabled=False, max_thinking_tokens=0)
    run = drive(ctrl, [], ids(ANSWER))
    assert ctrl.ended_by == "disabled" and ctrl.forced_tokens == 0 and ctrl.reasoning_tokens == 0
    assert run.channels == [Channel.ANSWER] * len(ids(ANSWER))


def test_zero_budget_closes_before_any_reasoning() -> None:
    ctrl = controller(max_thinking_tokens=0)
    assert ctrl.apply(row()) == ids("\n</think>\n\n")[0]
    run = drive(ctrl, ids("never seen"), ids(ANSWER))
    assert ctrl.reasoning_tokens == 0 and run.text() == "\n</think>\n\n" + ANSWER


def test_misuse_is_rejected() -> None:
    with pytest.raises(ValueError):
        ThinkingConfig(close_text="no close tag")
    ctrl = controller(max_thinking_tokens=0)
    with pytest.raises(RuntimeError):  # the stage forces the close: another token cannot be committed
        ctrl.accept(ids("x")[0])


_ANSWER_WORDS = ["Okay", " so", ".", "\n", " the", " answer", "\n\n", " is", " 42", "é", "你好"]
_WORDS = _ANSWER_WORDS + ["</think>", "\n</"]


@settings(max_examples=200, deadline=None)
@given(
    budget=st.integers(0, 30),
    grace=st.integers(0, 10),
    pieces=st.lists(st.sampled_from(_WORDS), max_size=60),
    answer=st.lists(st.sampled_from(_ANSWER_WORDS), max_size=10),
)
def test_budget_is_strict_and_one_close(budget: int, grace: int, pieces: list[str], answer: list[str]) -> None:
    reasoning = [t for piece in pieces for t in ids(piece)]
    answer_ids = [t for piece in answer for t in ids(piece)]
    # A model that never writes </think> keeps thinking until the budget makes it stop.
    own_close = tid("</think>") in reasoning
    if not own_close:
        reasoning += ids(" filler") * (budget + grace + 1)
    ctrl = controller(max_thinking_tokens=budget, thinking_grace_tokens=grace)
    run = drive(ctrl, reasoning, answer_ids)
    assert ctrl.reasoning_tokens <= budget + grace
    assert run.tokens.count(tid("</think>")) == 1
    assert ctrl.ended_by in ("model", "token_budget")
    assert ctrl.forced_tokens == run.forced.count(True)
    assert (ctrl.ended_by == "model") == (ctrl.forced_tokens == 0)
    own_answer = [c for c, f in zip(run.channels, run.forced) if c is Channel.ANSWER and not f]
    assert len(own_answer) == ctrl.answer_tokens == len(answer_ids)
    # One channel switch, right after </think>: every token up to it is reasoning, every one after it answer.
    close_at = run.tokens.index(tid("</think>"))
    assert run.channels == [Channel.REASONING] * (close_at + 1) + [Channel.ANSWER] * (len(run.tokens) - close_at - 1)
    # The whole stream holds the close sequence exactly once, however much of it the model wrote.
    if ctrl.ended_by == "token_budget":
        assert run.text().count("\n</think>\n\n") == 1


def test_channels_follow_the_token_side() -> None:
    """The output shows each token's text on the channel the thinking stage gave it; tags never show."""
    tokens = ids("Let me think.\n</think>\n\nThe answer.")
    ctrl = controller(max_thinking_tokens=100)
    out = OutputProcessor(tok(), [], stop_strings=[], tool_names=None)
    events = [e for t in tokens for e in out.push(t, ctrl.accept(t), None)] + out.finish()
    merged: list[tuple[Channel, str]] = []
    for e in events:
        if isinstance(e, Delta) and e.text:
            if merged and merged[-1][0] is e.channel:
                merged[-1] = (e.channel, merged[-1][1] + e.text)
            else:
                merged.append((e.channel, e.text))
    assert merged == [(Channel.REASONING, "Let me think.\n"), (Channel.ANSWER, "The answer.")]
    # Spelled-out tags are dropped too, and a held-back "<" that turns out not to be a tag is kept.
    stripper = TagStripper()
    assert "".join([stripper.feed(d) for d in ["<think>", "</think>", "Hi <", "/thin", "g"]] + [stripper.flush()]) \
        == "Hi </thing"


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.sampled_from(["a", "<", "/", "think", ">", "<think>", "</think>", "\n", "é"]), max_size=20), data=st.data())
def test_tags_are_dropped_however_the_text_is_split(pieces: list[str], data: st.DataObject) -> None:
    text = "".join(pieces)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(text)))))
    bounds = [0, *cuts, len(text)]
    stripper = TagStripper()
    raw = [stripper.feed(text[a:b]) for a, b in zip(bounds, bounds[1:])] + [stripper.flush()]
    # One left-to-right pass, tags removed where they occur, however the text was cut ...
    want = re.sub(r"<think>|</think>", "", text)
    assert "".join(raw) == want
    # ... and no delta carries a tag that the pass removes. Text that spells a tag only once a tag inside
    # it is gone ("<think<think>>") is the model's own text and stays, as the docstring says.
    if "<think>" not in want and "</think>" not in want:
        for piece in raw:
            assert "<think>" not in piece and "</think>" not in piece
