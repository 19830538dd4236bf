"""Streaming tool-call parsing: tags never leak into answer text, bad calls are records, splits do not matter."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.engine.toolcalls import CLOSE_TAG, OPEN_TAG, TextDelta, ToolCall, ToolCallEvent, ToolCallParser, held_back_length

TOOLS = ["get_weather", "calculate_tip"]


def run(parser: ToolCallParser, deltas: list[str]) -> list[ToolCallEvent]:
    events: list[ToolCallEvent] = []
    for delta in deltas:
        events.extend(parser.feed(delta))
    events.extend(parser.flush())
    return events


def coalesce(events: list[ToolCallEvent]) -> list[ToolCallEvent]:
    out: list[ToolCallEvent] = []
    for event in events:
        if isinstance(event, TextDelta) and out and isinstance(out[-1], TextDelta):
            out[-1] = TextDelta(out[-1].text + event.text)
        else:
            out.append(event)
    return out


def test_answer_then_calls() -> None:
    text = 'Let me check.\n\n<TOOLCALL>[{"name": "get_weather", "arguments": {"city": "Zürich"}}, ' \
           '{"name": "calculate_tip", "arguments": "{\\"bill_total\\": 100, \\"tip_percentage\\": 18}"}]</TOOLCALL>'
    events = coalesce(run(ToolCallParser(TOOLS), list(text)))
    assert events == [
        TextDelta("Let me check.\n\n"),
        ToolCall("get_weather", '{"city": "Zürich"}', {"city": "Zürich"}),
        ToolCall("calculate_tip", '{"bill_total": 100, "tip_percentage": 18}', {"bill_total": 100, "tip_percentage": 18}),
    ]


def test_partial_tag_is_held_back_then_released() -> None:
    parser = ToolCallParser(TOOLS)
    assert parser.feed("Use <TOOL") == [TextDelta("Use ")]
    assert parser.feed("S please") == [TextDelta("<TOOLS please")]
    assert parser.feed(" <TOOLC") == [TextDelta(" ")]
    assert parser.flush() == [TextDelta("<TOOLC")]


def test_malformed_json_is_an_error_record() -> None:
    events = run(ToolCallParser(TOOLS), ['<TOOLCALL>[{"name": "get_weather", "arguments": {"city": ]</TOOLCALL>after'])
    assert len(events) == 2
    call = events[0]
    assert isinstance(call, ToolCall) and call.arguments is None and "invalid JSON" in (call.error or "")
    assert events[1] == TextDelta("after")


def test_unknown_tool_is_an_error_record() -> None:
    events = run(ToolCallParser(TOOLS), ['<TOOLCALL>[{"name": "rm_rf", "arguments": {"path": "/"}}]</TOOLCALL>'])
    assert events == [ToolCall("rm_rf", '{"path": "/"}', {"path": "/"}, "unknown tool 'rm_rf'")]


def test_any_tool_accepted_without_a_tool_list() -> None:
    events = run(ToolCallParser(None), ['<TOOLCALL>{"name": "anything"}</TOOLCALL>'])
    assert events == [ToolCall("anything", "{}", {})]


def test_bad_shapes_are_error_records() -> None:
    body = '[42, {"arguments": {}}, {"name": "get_weather", "arguments": [1]}, {"name": "get_weather", "arguments": "{bad"}]'
    events = run(ToolCallParser(TOOLS), [f"<TOOLCALL>{body}</TOOLCALL>"])
    assert [type(e) for e in events] == [ToolCall] * 4
    assert all(isinstance(e, ToolCall) and e.error for e in events)
    assert run(ToolCallParser(TOOLS), ['<TOOLCALL>"just a string"</TOOLCALL>'])[0].error


def test_unterminated_block_becomes_error_on_flush() -> None:
    parser = ToolCallParser(TOOLS)
    assert parser.feed('ok <TOOLCALL>[{"name": "get_weather"') == [TextDelta("ok ")]
    (call,) = parser.flush()
    assert isinstance(call, ToolCall) and "unterminated" in (call.error or "")
    assert call.arguments_json == '[{"name": "get_weather"'


def test_a_long_call_streamed_a_character_at_a_time_is_searched_once() -> None:
    """Each delta is searched with at most a tag's length of what came before, never the whole block so far, so
    a call as long as a whole answer costs the same per token at its end as at its start."""
    content = "x" * 20_000
    text = f'Writing.<TOOLCALL>[{{"name": "get_weather", "arguments": {{"city": "{content}"}}}}]{CLOSE_TAG}done'
    parser = ToolCallParser(TOOLS)
    events = coalesce(run(parser, list(text)))
    assert events == [TextDelta("Writing."), ToolCall("get_weather", json.dumps({"city": content}), {"city": content}),
                      TextDelta("done")]
    assert parser.chars_searched <= len(CLOSE_TAG) * len(text)


def test_held_back_length() -> None:
    assert held_back_length("abc<TOOL", OPEN_TAG) == 5
    assert held_back_length("abc<", OPEN_TAG) == 1
    assert held_back_length("abc", OPEN_TAG) == 0
    assert held_back_length("<TOOLCALL", OPEN_TAG) == 9


_PIECES = st.sampled_from(
    ["Hello", " ", "<", "TOOL", "<TOOLCALL>", "</TOOLCALL>", "\n\n", "é", "你好", "😀",
     '[{"name": "get_weather", "arguments": {"city": "Oslo"}}]', '{"name": "x"}', "[", "]", "{", "<TOOLS>"]
)


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(_PIECES, max_size=12), data=st.data())
def test_any_split_gives_same_events(pieces: list[str], data: st.DataObject) -> None:
    text = "".join(pieces)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(text)), max_size=len(text) + 1)))
    bounds = [0, *cuts, len(text)]
    deltas = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    whole = run(ToolCallParser(TOOLS), [text])
    split_events = run(ToolCallParser(TOOLS), deltas)
    assert coalesce(split_events) == coalesce(whole)
    for event in split_events:
        if isinstance(event, TextDelta):
            assert OPEN_TAG not in event.text
    # Text outside blocks survives exactly: rebuild the stream with the blocks cut out.
    outside = "".join(e.text for e in whole if isinstance(e, TextDelta))
    expected = ""
    rest = text
    while OPEN_TAG in rest:
        before, _, after = rest.partition(OPEN_TAG)
        expected += before
        if "</TOOLCALL>" not in after:
            rest = ""
            break
        rest = after.partition("</TOOLCALL>")[2]
    expected += rest
    assert outside == expected


@settings(max_examples=100, deadline=None)
@given(args=st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5), st.booleans()), max_size=4))
def test_arguments_round_trip(args: dict) -> None:
    text = f"<TOOLCALL>{json.dumps([{'name': 'get_weather', 'arguments': args}])}</TOOLCALL>"
    (call,) = run(ToolCallParser(TOOLS), list(text))
    assert isinstance(call, ToolCall) and call.error is None
    assert call.arguments == args and json.loads(call.arguments_json) == args
