"""Grammar-constrained answers (engine/answer_format.py, engine/grammar.py) on the `tiny` model: random
weights, its real tokenizer, sampling at temperature 1, so whatever the model would write, only the grammar
keeps the answers valid. Validity is judged by `jsonschema`, not by our own code."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime.engine.answer_format import AnswerFormat, FormatKind, ResponseFormat, ToolTags
from edge_runtime.engine.chat import Chat, ChatRequest
from edge_runtime.engine.engine import Engine
from edge_runtime.engine.records import GrammarOutcome, RequestError, ToolCallRecord

KEYS = ["arm", "x", "y", "speed", "label", "mode", "steps", "target", "ok", "items"]
WORDS = ["left", "right", "up", "down", "stop", "grip"]


@pytest.fixture(scope="module")
def engine(tiny_long_bundle) -> Engine:
    return Engine(tiny_long_bundle)


@pytest.fixture(scope="module")
def chat(engine) -> Chat:
    return Chat(engine)


# ---- bounded JSON Schemas and the most bytes an instance of one can take ------------------------------------

leaves = st.one_of(
    st.builds(lambda n: {"type": "string", "maxLength": n}, st.integers(0, 8)),
    st.builds(lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
              st.integers(-50, 50), st.integers(0, 100)),
    st.builds(lambda lo, span, step: {"type": "number", "minimum": lo, "maximum": lo + span, "multipleOf": step},
              st.integers(-20, 20), st.integers(1, 40), st.sampled_from([0.25, 0.5, 1])),
    st.builds(lambda values: {"enum": values}, st.lists(st.sampled_from(WORDS), min_size=1, max_size=4, unique=True)),
    st.just({"type": "boolean"}),
)


def objects(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.dictionaries(st.sampled_from(KEYS), children, min_size=1, max_size=3).flatmap(
        lambda props: st.builds(
            lambda required: {"type": "object", "properties": props, "required": required, "additionalProperties": False},
            st.lists(st.sampled_from(sorted(props)), unique=True)))


def arrays(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(lambda items, n: {"type": "array", "items": items, "maxItems": n}, children, st.integers(0, 3))


values = st.recursive(leaves, lambda c: st.one_of(objects(c), arrays(c)), max_leaves=6)
schemas = objects(values)


def max_bytes(schema: dict) -> int:
    """The most bytes compact JSON satisfying `schema` can take (each character of a string may be a
    \\uXXXX escape), so that a token limit of this many leaves room for the largest instance."""
    if "enum" in schema:
        return max(len(json.dumps(v)) for v in schema["enum"])
    kind = schema["type"]
    if kind == "string":
        return 2 + 6 * schema["maxLength"]
    if kind in ("integer", "number", "boolean"):
        return 24
    if kind == "array":
        return 2 + schema["maxItems"] * (max_bytes(schema["items"]) + 2)
    return 2 + sum(len(json.dumps(k)) + 4 + max_bytes(v) for k, v in schema["properties"].items())


def tool(name: str, schema: dict) -> dict:
    return {"type": "function", "function": {"name": name, "description": f"{name} the robot", "parameters": schema}}


@settings(max_examples=40, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=schemas, other=schemas, choice=st.sampled_from(["required", "act"]), budget=st.integers(0, 12),
       grace=st.integers(0, 4), seed=st.integers(0, 2**31 - 1))
def test_constrained_calls_and_answers_always_parse_and_validate(engine, chat, schema, other, choice, budget, grace, seed):
    tools = [tool("act", schema), tool("look", other)]
    room = budget + grace + 8 + 64 + max(max_bytes(schema), max_bytes(other))  # reasoning, close, wrapper, JSON
    common = dict(max_thinking_tokens=budget, thinking_grace_tokens=grace, max_tokens=room,
                  sampling={"temperature": 1.0, "seed": seed})
    messages = [{"role": "user", "content": "Do it."}]
    call = chat.submit(ChatRequest(messages, tools=tools, tool_choice=choice, parallel_tool_calls=False, **common))
    answer = chat.submit(ChatRequest(messages, response_format=ResponseFormat(FormatKind.JSON_SCHEMA, schema), **common))
    engine.run_until_done([call, answer])

    for handle in (call, answer):
        final = handle.final
        assert final.finish_reason == "stop", final
        assert final.grammar is GrammarOutcome.COMPLETE and final.error is None, final
        assert final.usage.reasoning_tokens <= budget + grace, final  # the thinking budget still holds
    [record] = call.final.tool_calls
    assert record.error is None, record
    assert record.name in ("act", "look") and (choice == "required" or record.name == "act")
    jsonschema.validate(json.loads(record.arguments_json), schema if record.name == "act" else other)
    assert call.final.answer_text == ""  # `required`: calls, no text
    assert not [e for e in answer.events() if isinstance(e, ToolCallRecord)]
    jsonschema.validate(json.loads(answer.final.answer_text), schema)


def test_parallel_calls_auto_text_and_none(engine, chat):
    schema = {"type": "object", "properties": {"arm": {"enum": ["left", "right"]}}, "required": ["arm"],
              "additionalProperties": False}
    messages = [{"role": "user", "content": "Wave."}]
    sampling = {"temperature": 1.0}
    handles = [chat.submit(ChatRequest(messages, tools=[tool("act", schema)], tool_choice=choice, max_tokens=200,
                                       sampling={**sampling, "seed": seed}, max_thinking_tokens=4))
               for choice in ("required", "auto", "none") for seed in range(6)]
    engine.run_until_done(handles)
    required, auto, none = handles[:6], handles[6:12], handles[12:]
    for h in required + auto:
        assert h.final.grammar in (GrammarOutcome.COMPLETE, GrammarOutcome.CUT_OFF), h.final
        for record in h.final.tool_calls:
            assert record.error is None and record.name == "act", record
            jsonschema.validate(json.loads(record.arguments_json), schema)
    assert all(h.final.tool_calls for h in required if h.final.finish_reason == "stop")
    for h in none:  # `none`: text only, the tag never written, not even spelled out
        assert not h.final.tool_calls and "<TOOLCALL>" not in h.final.answer_text, h.final


def test_regex_and_lark_answers(engine, chat):
    messages = [{"role": "user", "content": "Which arm?"}]
    formats = [(ResponseFormat(FormatKind.REGEX, r"(left|right) arm, \d{1,2} cm"), r"(left|right) arm, [0-9]{1,2} cm"),
               (ResponseFormat(FormatKind.LARK, 'start: "go " DIR\nDIR: "north" | "south"'), r"go (north|south)")]
    handles = [(chat.submit(ChatRequest(messages, response_format=fmt, max_tokens=120, max_thinking_tokens=6,
                                        sampling={"temperature": 1.0, "seed": seed})), pattern)
               for fmt, pattern in formats for seed in range(4)]
    engine.run_until_done([h for h, _ in handles])
    for h, pattern in handles:
        assert h.final.finish_reason == "stop" and re.fullmatch(pattern, h.final.answer_text), h.final


def test_an_unbounded_answer_cut_off_by_max_tokens_says_so(engine, chat):
    vocab = engine.tokenizer.get_vocab()
    longest = max(len(t) for t in vocab)
    # More characters than 10 tokens of this vocabulary can hold: the string cannot be finished in time.
    schema = {"type": "object", "properties": {"note": {"type": "string", "minLength": 10 * longest + 10}},
              "required": ["note"], "additionalProperties": False}
    h = chat.submit(ChatRequest([{"role": "user", "content": "Note it."}], tools=[tool("act", schema)],
                                tool_choice="required", reasoning=False, max_tokens=10, sampling={"seed": 1}))
    engine.run_until_done([h])
    final = h.final
    assert final.finish_reason == "length" and final.grammar is GrammarOutcome.CUT_OFF
    assert "max_tokens ended the answer before it was complete" in final.error
    [record] = final.tool_calls
    assert record.error == final.error  # the open call names why it is unfinished


@pytest.mark.parametrize("where, request_fields, text", [
    ("tools[0].parameters", {"tools": [tool("act", {"type": "object", "properties": {
        "xs": {"type": "array", "uniqueItems": True}}})]}, "uniqueItems"),
    ("tools[0].parameters", {"tools": [tool("act", {"type": "string"})]}, "JSON object"),
    ("response_format.json_schema", {"response_format": ResponseFormat(FormatKind.JSON_SCHEMA, {"not": {"type": "null"}})},
     "not"),
    ("response_format.regex", {"response_format": ResponseFormat(FormatKind.REGEX, "(unclosed")}, "unclosed"),
    ("response_format.lark", {"response_format": ResponseFormat(FormatKind.LARK, "start: missing")}, "missing"),
    ("tool_choice", {"tool_choice": "required"}, "needs tools"),
    ("tool_choice", {"tools": [tool("act", {})], "tool_choice": "fly"}, "fly"),
])
def test_what_the_grammar_cannot_enforce_is_refused_by_name(chat, where, request_fields, text):
    with pytest.raises(RequestError) as e:
        chat.prepare(ChatRequest([{"role": "user", "content": "hi"}], **request_fields))
    assert e.value.field == where and text in str(e.value), str(e.value)


def test_a_close_text_the_grammar_refuses_is_refused(chat):
    with pytest.raises(RequestError) as e:
        chat.submit(ChatRequest([{"role": "user", "content": "hi"}], thinking_close_text="</think>Answer: ",
                                response_format=ResponseFormat(FormatKind.JSON_OBJECT)))
    assert e.value.field == "thinking_close_text"


def test_a_complete_answer_with_no_stop_token_ends_with_an_error_not_a_hang(engine, chat):
    h = chat.submit(ChatRequest([{"role": "user", "content": "yes?"}], reasoning=False, ignore_eos=True,
                                response_format=ResponseFormat(FormatKind.LARK, 'start: "yes"'), max_tokens=50))
    engine.run_until_done([h])
    assert h.final.finish_reason == "error" and h.final.grammar is GrammarOutcome.FAILED
    assert "no stop token" in h.final.error


def test_a_repeated_answer_format_reuses_its_compiled_grammar(engine):
    fmt = lambda: AnswerFormat([tool("act", {"type": "object", "properties": {"n": {"type": "integer"}}})], "required")
    first = engine.grammars.compile(fmt())
    assert engine.grammars.compile(fmt()) is first
    assert engine.grammars.compile(AnswerFormat([tool("act", {})], "required")) is not first


def test_free_text_requests_get_no_grammar(chat):
    assert chat.prepare(ChatRequest([{"role": "user", "content": "hi"}])).grammar is None
    assert chat.prepare(ChatRequest([{"role": "user", "content": "hi"}], tools=[tool("act", {})])).grammar is not None


def test_tool_names_and_tags_are_written_as_the_template_writes_them():
    """Names are JSON-quoted inside a Lark string; tags are token references when the tokenizer has them."""
    checked = []
    fmt = AnswerFormat([tool('say "hi"\\', {})], "required")
    tags = ToolTags.for_tokenizer({"<TOOLCALL>": 7, "</TOOLCALL>": 8}.get)
    grammar = json.loads(fmt.grammar(tags, lambda where, g: checked.append(where)))
    lark = grammar["grammars"][0]["lark_grammar"]
    assert '<[7]> "[" call "]" <[8]>' not in lark and '<[7]> "[" call (", " call)* "]" <[8]>' in lark
    assert json.dumps('{"name": ' + json.dumps('say "hi"\\') + ', "arguments": ') in lark
    assert checked == ["tools[0].parameters"]
    assert ToolTags.for_tokenizer(lambda text: None) == ToolTags()  # no such tokens: the tags as text
