"""The text a user sees is clean: no control token's text (turn markers, `<s>`, tags) in any streamed delta or
final text, no character cut into U+FFFD, and the text is a well-defined decode of the generated ids.
Run on the embedded demo bundle's tokenizer and engine, with tokens looked up by their text."""

from __future__ import annotations

import re
from functools import lru_cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from edge_runtime.bundle.demo import DEMO_BUNDLE
from edge_runtime.engine.chat import Chat, ChatRequest
from edge_runtime.engine.engine import Engine
from edge_runtime.engine.output import OutputProcessor
from edge_runtime.engine.records import Channel, Delta, Event, ThinkingConfig, ToolCallRecord
from edge_runtime.engine.thinking import ThinkingController

REPLACEMENT_CHAR = "\ufffd"
# Emitted by the model as control tokens, never as text; </s> and <SPECIAL_12> end a reply (stop tokens).
CONTROL = ("<unk>", "<s>", "<SPECIAL_10>", "<SPECIAL_11>", "<think>", "</think>", "<TOOLCALL>", "</TOOLCALL>",
           "<TOOL_RESPONSE>", "</TOOL_RESPONSE>", "<AVAILABLE_TOOLS>", "</AVAILABLE_TOOLS>")


@lru_cache(maxsize=1)
def tok() -> Tokenizer:
    return Tokenizer.from_file(str(DEMO_BUNDLE / "tokenizer.json"))


def ids(text: str) -> list[int]:
    return tok().encode(text, add_special_tokens=False).ids


def control(text: str) -> int:
    token_id = tok().token_to_id(text)
    assert token_id is not None, text
    return token_id


def split_character_ids(char: str) -> list[int]:
    """The ids of a character that the demo tokenizer spells in more than one token."""
    pieces = ids(char)
    assert len(pieces) > 1 and all(REPLACEMENT_CHAR in tok().decode([p]) for p in pieces), pieces
    return pieces


def assert_clean(events: list[Event]) -> None:
    for event in events:
        if isinstance(event, Delta):
            assert REPLACEMENT_CHAR not in event.text, event
            assert not any(tag in event.text for tag in CONTROL), event


def test_control_tokens_and_split_characters_through_the_output_path() -> None:
    """Reasoning and answer hold control tokens, one of them between the bytes of an emoji: none shows, the
    emoji arrives whole, and the tool call is still parsed from the tags on the answer channel."""
    wave, check = split_character_ids("👋"), split_character_ids("✅")
    tokens = (
        [control("<SPECIAL_10>")] + ids("Plan: ") + wave[:1] + [control("<SPECIAL_11>")] + wave[1:]
        + [control("<s>"), control("<TOOLCALL>")] + ids(" grüß") + [control("<TOOL_RESPONSE>"), control("<unk>")]
        + ids("\n") + [control("</think>")] + ids("\n\n") + [control("<AVAILABLE_TOOLS>")] + ids("Done ")
        + check[:1] + [control("<SPECIAL_10>")] + check[1:]
        + [control("<TOOLCALL>")] + ids('[{"name": "move_arm", "arguments": {"side": "left"}}]')
        + [control("</TOOLCALL>")]
    )
    thinking = ThinkingController(tok(), ThinkingConfig())
    out = OutputProcessor(tok(), ids("<SPECIAL_11>Assistant\n<think>\n"), stop_strings=[], tool_names=["move_arm"])
    events = [e for t in tokens for e in out.push(t, thinking.accept(t), None)] + out.finish()
    assert_clean(events)
    assert out.reasoning_text == "Plan: 👋 grüß\n"
    assert out.answer_text == "Done ✅"
    assert [(c.name, c.error) for c in out.tool_calls] == [("move_arm", None)]
    # Every id is still streamed once, on its own channel, text or not.
    assert [t for e in events if isinstance(e, Delta) for t in e.token_ids] == tokens


def test_tool_call_tags_show_nowhere_without_a_parser_reading_them() -> None:
    call = '[{"name": "a", "arguments": {}}]'
    tokens = [control("<TOOLCALL>")] + ids(call) + [control("</TOOLCALL>")]
    out = OutputProcessor(tok(), [], stop_strings=[], tool_names=None)
    events = [e for t in tokens for e in out.push(t, Channel.ANSWER, None)] + out.finish()
    assert_clean(events)
    assert out.answer_text == call and out.tool_calls == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, tok().get_vocab_size() - 1), max_size=40))
def test_reasoning_text_is_the_decode_of_the_ids_that_are_not_control_tokens(token_ids: list[int]) -> None:
    out = OutputProcessor(tok(), [], stop_strings=[], tool_names=["a"])
    streamed = "".join(e.text for t in token_ids for e in out.push(t, Channel.REASONING, None)
                       if isinstance(e, Delta)) + "".join(e.text for e in out.finish() if isinstance(e, Delta))
    hidden = {control(text) for text in (*CONTROL, "</s>", "<SPECIAL_12>")}
    text = tok().decode([t for t in token_ids if t not in hidden], skip_special_tokens=False)
    # Think tags the model spells out of ordinary tokens are dropped too.
    assert streamed == out.reasoning_text == re.sub("<think>|</think>", "", text)


@pytest.fixture(scope="module")
def demo_chat() -> Chat:
    return Chat(Engine(DEMO_BUNDLE))


def test_demo_bundle_chat_shows_no_control_token(demo_chat: Chat) -> None:
    """A chat on the demo bundle whose thinking budget forces a close sequence full of control tokens and
    characters spelled in several tokens: what the engine streams and returns is the clean text, on any
    weights (every token is forced)."""
    close_text = "<SPECIAL_11>ok 👋<s>\n</think>\n\n<TOOL_RESPONSE>Done ✅<AVAILABLE_TOOLS>"
    forced = len(ids(close_text))
    request = ChatRequest([{"role": "user", "content": "Hello"}], max_thinking_tokens=0,
                          thinking_close_text=close_text, max_tokens=forced)
    handle = demo_chat.submit(request)
    demo_chat.engine.run_until_done([handle])
    events = list(handle.events())
    assert_clean(events)
    final = handle.final
    assert final.usage.forced_tokens == forced
    assert (final.reasoning_text, final.answer_text) == ("ok 👋\n", "Done ✅")
    for channel, text in ((Channel.REASONING, final.reasoning_text), (Channel.ANSWER, final.answer_text)):
        assert "".join(e.text for e in events if isinstance(e, Delta) and e.channel is channel) == text
