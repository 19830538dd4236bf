"""Thinking budgets enforced inside the engine's decode loop, on the `tiny` bundle with its real tokenizer."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge_runtime.engine.chat import Chat, ChatRequest
from edge_runtime.engine.engine import Engine
from edge_runtime.engine.records import Delta, ToolCallRecord
from edge_runtime.engine.sampler import SamplingParams

WORDS = ["robot", "arm", "left", "door", "why", "plan", "move", "stop", "Hello", "the", "grip", "wheel"]


@pytest.fixture(scope="module")
def engine(tiny_bundle) -> Engine:
    return Engine(tiny_bundle)


@pytest.fixture(scope="module")
def chat(engine) -> Chat:
    return Chat(engine)


def run(engine: Engine, chat: Chat, request: ChatRequest):
    calls_before = dict(engine.runner.calls)
    handle = chat.submit(request)
    engine.run_until_done([handle])
    prefill_calls = engine.runner.calls["prefill"] - calls_before["prefill"]
    return handle, prefill_calls


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
# Found by this test: the model's EOS as its last reasoning token at the budget ended the reply unanswered.
@example(budget=9, grace=12, answer=1, words=["wheel", "left", "left", "why", "robot", "plan"], seed=11)
@given(budget=st.integers(0, 40), grace=st.integers(0, 12), answer=st.integers(1, 24),
       words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=12), seed=st.integers(0, 2**31 - 1))
def test_budget_is_strict_and_the_answer_keeps_its_room(engine, chat, budget, grace, answer, words, seed):
    close_id = engine.tokenizer.token_to_id("</think>")
    request = ChatRequest([{"role": "user", "content": " ".join(words)}], max_thinking_tokens=budget,
                          thinking_grace_tokens=grace, max_answer_tokens=answer, max_tokens=budget + grace + answer + 8,
                          sampling={"seed": seed})
    prompt_len = len(chat.prepare(request).prompt_ids)
    handle, prefill_calls = run(engine, chat, request)
    final = handle.final
    streamed = [t for e in handle.events() if isinstance(e, Delta) for t in e.token_ids]
    assert streamed == final.token_ids
    assert final.usage.reasoning_tokens <= budget + grace
    # Stop tokens are masked while thinking, so every reply closes its reasoning once and then answers.
    assert streamed.count(close_id) == 1, final
    assert final.thinking_ended_by in ("model", "token_budget"), final
    assert final.usage.answer_tokens > 0, final
    if final.finish_reason != "stop":  # the model's EOS may end the answer early, nothing else may
        assert final.finish_reason == "length" and final.usage.answer_tokens == answer, final
    if final.thinking_ended_by == "token_budget":
        assert final.usage.forced_tokens > 0
    # One prefill for the prompt, however thinking ended: the close is forced token by token in the same pass.
    chunk = engine.scheduler.config.prefill_chunk
    assert prefill_calls == -(-prompt_len // chunk)


def test_model_closing_itself_forces_nothing(engine, chat):
    """With a huge budget, whatever the model does, nothing is forced."""
    handle, _ = run(engine, chat, ChatRequest([{"role": "user", "content": "hi"}], max_thinking_tokens=10_000,
                                              max_tokens=40, sampling={"seed": 3}))
    assert handle.final.usage.forced_tokens == 0
    assert handle.final.thinking_ended_by in (None, "model")


def test_deadline_closes_at_the_first_token_after_it(tiny_bundle):
    """Fake clock: every engine step advances 10 ms; a 35 ms deadline closes after the token of the step
    at which 35 ms have passed since the first generated token."""
    now = [0.0]
    engine = Engine(tiny_bundle, clock=lambda: now[0])
    chat = Chat(engine)
    handle = chat.submit(ChatRequest([{"role": "user", "content": "plan a path"}], thinking_deadline_ms=35,
                                     max_thinking_tokens=10_000, max_answer_tokens=5, max_tokens=200, sampling={"seed": 0}))
    while not handle.done:
        engine.step()
        now[0] += 0.010
    final = handle.final
    if final.finish_reason == "stop" and final.thinking_ended_by is None:
        pytest.skip("the random model ended its turn before the deadline")
    assert final.thinking_ended_by == "deadline"
    # tokens at t = 0, 10, 20, 30, 40 ms: the one at 40 ms is the first at/after the deadline; then the close.
    assert final.usage.reasoning_tokens == 5


def test_reasoning_off_renders_empty_think_and_answers_greedily(engine, chat):
    request = ChatRequest([{"role": "user", "content": "Which door?"}], reasoning=False, max_tokens=12)
    prepared = chat.prepare(request)
    assert not prepared.thinking.enabled and prepared.sampling.is_greedy
    assert engine.tokenizer.decode(prepared.prompt_ids[-4:], skip_special_tokens=False).endswith("<think></think>")
    handle, _ = run(engine, chat, request)
    assert handle.final.thinking_ended_by == "disabled" and handle.final.usage.reasoning_tokens == 0
    assert all(e.channel == "answer" for e in handle.events() if isinstance(e, Delta))


def test_no_think_marker_and_model_card_defaults(chat):
    on = chat.prepare(ChatRequest([{"role": "user", "content": "hi"}]))
    off = chat.prepare(ChatRequest([{"role": "system", "content": "/no_think"}, {"role": "user", "content": "hi"}]))
    assert on.thinking.enabled and not off.thinking.enabled
    assert (on.sampling.temperature, on.sampling.top_p) == (0.6, 0.95)
    assert off.sampling.is_greedy


def test_tool_calls_parse_from_the_answer_stream(engine):
    """Tool-call parsing on a forced answer: the engine's output processor sees the tags only as structure."""
    from edge_runtime.engine.output import OutputProcessor
    from edge_runtime.engine.records import Channel

    text = 'Sure.<TOOLCALL>[{"name": "move_arm", "arguments": {"side": "left"}}]</TOOLCALL>'
    ids = engine.tokenizer.encode(text, add_special_tokens=False).ids
    out = OutputProcessor(engine.tokenizer, [], stop_strings=[], tool_names=["move_arm"])
    events = [e for t in ids for e in out.push(t, Channel.ANSWER, None)] + out.finish()
    calls = [e for e in events if isinstance(e, ToolCallRecord)]
    assert [(c.name, c.error) for c in calls] == [("move_arm", None)]
    assert "".join(e.text for e in events if isinstance(e, Delta)) == "Sure."


def test_unknown_tool_choice_is_refused(chat):
    from edge_runtime.engine.records import RequestError

    with pytest.raises(RequestError, match="tool_choice"):
        chat.prepare(ChatRequest([{"role": "user", "content": "hi"}], tools=[{"name": "a"}], tool_choice="b"))
