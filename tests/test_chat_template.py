"""Our jinja rendering of the real chat template is byte-identical to transformers' apply_chat_template."""

from __future__ import annotations

from typing import Any

import threading

import pytest

from edge_runtime.bundle.chat_template import ChatTemplate, RenderLimits, RenderStopped, TemplateLimitError, thinking_enabled
from nemotron_export.tokenizer_synth import load_chat_template, tokenizer_config

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather for a city <fast> & \"accurate\" — ünïcode",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
TIP_TOOL = {
    "name": "calculate_tip",
    "description": "Tip for a bill",
    "parameters": {
        "type": "object",
        "properties": {"bill_total": {"type": "number"}, "tip_percentage": {"type": "number"}},
        "required": ["bill_total", "tip_percentage"],
    },
}

SYS = {"role": "system", "content": "You are a helpful assistant."}
CALL_DICT = {
    "role": "assistant",
    "content": "",
    "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "unit": "celsius"}}},
        {"type": "function", "function": {"name": "calculate_tip", "arguments": {"bill_total": 100, "tip_percentage": 18}}},
    ],
}
CALL_STR = {
    "role": "assistant",
    "content": "<think>\nI should look it up.\n</think>\n\nLet me check.",
    "tool_calls": [{"name": "get_weather", "arguments": '{"city": "Lima"}'}],
}

# (name, messages, tools, add_generation_prompt, continue_final_message)
CASES: list[tuple[str, list[dict[str, Any]], list | None, bool, bool]] = [
    ("no_system", [{"role": "user", "content": "Hi there!"}], None, True, False),
    ("system", [SYS, {"role": "user", "content": "What is 2+2?"}], None, True, False),
    ("think_in_system", [{"role": "system", "content": "Be brief. /think"}, {"role": "user", "content": "Hi"}], None, True, False),
    ("no_think_in_system", [{"role": "system", "content": "/no_think"}, {"role": "user", "content": "Hi"}], None, True, False),
    ("no_think_in_user", [SYS, {"role": "user", "content": "Quick answer please /no_think"}], None, True, False),
    (
        "user_think_overrides_system",
        [{"role": "system", "content": "x /no_think"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
         {"role": "user", "content": "/think  deeper now "}],
        None, True, False,
    ),
    ("tools_no_system", [{"role": "user", "content": "Weather in Oslo?"}], [WEATHER_TOOL, TIP_TOOL], True, False),
    ("tools_with_system", [SYS, {"role": "user", "content": "Weather in Oslo?"}], [WEATHER_TOOL], True, False),
    (
        "tool_calls_dict_args_and_responses",
        [SYS, {"role": "user", "content": "Weather in Zürich and tip on 100?"}, CALL_DICT,
         {"role": "tool", "content": '{"temperature": 21}'}, {"role": "tool", "content": '{"tip": 18}'}],
        [WEATHER_TOOL, TIP_TOOL], True, False,
    ),
    (
        "tool_call_string_args_then_answer",
        [{"role": "user", "content": "Lima?"}, CALL_STR, {"role": "tool", "content": "sunny"},
         {"role": "assistant", "content": "<think>ok</think>It is sunny in Lima."}, {"role": "user", "content": "Thanks /no_think"}],
        [WEATHER_TOOL], True, False,
    ),
    (
        "three_tool_responses_mid_chat",
        [{"role": "user", "content": "go"}, CALL_DICT, {"role": "tool", "content": "r1"}, {"role": "tool", "content": "r2"},
         {"role": "tool", "content": "r3"}, {"role": "user", "content": "and?"}],
        [WEATHER_TOOL, TIP_TOOL], True, False,
    ),
    (
        "continue_final_message",
        [SYS, {"role": "user", "content": "Write a haiku"}, {"role": "assistant", "content": "Autumn moonlight —  "}],
        None, False, True,
    ),
    (
        "continue_final_message_no_think",
        [{"role": "user", "content": "Count /no_think"}, {"role": "assistant", "content": "1, 2,"}],
        None, False, True,
    ),
    (
        "no_generation_prompt",
        [SYS, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! 😀"}],
        None, False, False,
    ),
    (
        "no_generation_prompt_ends_with_user",
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": {}}]},
         {"role": "tool", "content": "{}"}],
        [WEATHER_TOOL], False, False,
    ),
    (
        "reasoning_content_field",
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning_content": "hidden"},
         {"role": "user", "content": "q2"}],
        None, True, False,
    ),
]


GENEROUS = RenderLimits(max_steps=100_000, max_chars=100_000)


@pytest.fixture(scope="module")
def template(hf_tokenizer) -> ChatTemplate:
    return ChatTemplate(load_chat_template(), hf_tokenizer.special_tokens_map)


def _reference(hf_tokenizer, messages, tools, add_generation_prompt, continue_final_message) -> str:
    return hf_tokenizer.apply_chat_template(
        messages,
        tools=tools,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message,
    )


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_transformers(template: ChatTemplate, hf_tokenizer, case) -> None:
    _, messages, tools, add_generation_prompt, continue_final_message = case
    expected = _reference(hf_tokenizer, messages, tools, add_generation_prompt, continue_final_message)
    for limits in (None, GENEROUS):  # bounded rendering renders the same
        ours = template.render(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                               continue_final_message=continue_final_message, limits=limits)
        assert ours == expected


def test_reference_renders_are_nontrivial(hf_tokenizer) -> None:
    # Guards the comparison above against both sides silently rendering the same empty string.
    _, messages, tools, _, _ = CASES[8]
    rendered = _reference(hf_tokenizer, messages, tools, True, False)
    assert '<TOOLCALL>[{"name": "get_weather", "arguments": {"city": "Zürich", "unit": "celsius"}}, ' in rendered
    assert "<TOOL_RESPONSE>[{\"temperature\": 21}, {\"tip\": 18}]</TOOL_RESPONSE>\n" in rendered
    assert '"description": "Get the weather for a city <fast> & \\"accurate\\" — ünïcode"' in rendered


def test_from_tokenizer_config_matches(hf_tokenizer) -> None:
    template = ChatTemplate.from_tokenizer_config(tokenizer_config(load_chat_template()))
    messages = [SYS, {"role": "user", "content": "Hi"}]
    assert template.render(messages) == _reference(hf_tokenizer, messages, None, True, False)


@pytest.mark.parametrize(
    "messages",
    [
        [SYS, {"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "Hi\n"}],
        [{"role": "system", "content": "/think"}, {"role": "user", "content": "Hi /think"}],
        [{"role": "user", "content": "a /no_think"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c /think"}],
    ],
)
def test_reasoning_off_renders_like_no_think(template: ChatTemplate, hf_tokenizer, messages) -> None:
    ours = template.render(messages, reasoning=False)
    assert ours.endswith("<SPECIAL_11>Assistant\n<think></think>")
    assert not thinking_enabled(ours)
    # Identical to what transformers renders when the user asked for no thinking and said nothing else.
    stripped = [
        {**m, "content": m["content"].replace("/think", "").replace("/no_think", "")} if m["role"] in ("user", "system") else m
        for m in messages
    ]
    if stripped[0]["role"] == "system":
        stripped[0] = {**stripped[0], "content": stripped[0]["content"] + " /no_think"}
    else:
        stripped.insert(0, {"role": "system", "content": "/no_think"})
    assert ours == _reference(hf_tokenizer, stripped, None, True, False)


def test_reasoning_on_overrides_no_think(template: ChatTemplate, hf_tokenizer) -> None:
    messages = [{"role": "system", "content": "Be brief /no_think"}, {"role": "user", "content": "Hi"}]
    ours = template.render(messages, reasoning=True)
    assert ours.endswith("<SPECIAL_11>Assistant\n<think>\n")
    assert thinking_enabled(ours)
    assert ours == _reference(hf_tokenizer, [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}], None, True, False)


def test_reasoning_none_keeps_template_default(template: ChatTemplate, hf_tokenizer) -> None:
    for messages in ([{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Hi /no_think"}]):
        assert template.render(messages, reasoning=None) == _reference(hf_tokenizer, messages, None, True, False)


def test_reasoning_off_without_user_or_system(template: ChatTemplate) -> None:
    ours = template.render([{"role": "tool", "content": "r"}], reasoning=False)
    assert ours == "<SPECIAL_10>System\n\n<SPECIAL_11>User\n<TOOL_RESPONSE>[r]</TOOL_RESPONSE>\n<SPECIAL_11>Assistant\n<think></think>"


def test_thinking_enabled() -> None:
    assert thinking_enabled("x<SPECIAL_11>Assistant\n<think>\n")
    assert thinking_enabled("<think>\npartial thought")
    assert not thinking_enabled("x<SPECIAL_11>Assistant\n<think></think>")
    assert not thinking_enabled("<think>a</think>answer so far")
    assert not thinking_enabled("no tags at all")


def test_input_messages_not_mutated(template: ChatTemplate) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}]
    template.render(messages, add_generation_prompt=False, continue_final_message=True, reasoning=False)
    assert messages == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}]


def test_none_content_fails_like_transformers(template: ChatTemplate, hf_tokenizer) -> None:
    # None-valued keys are dropped before rendering; this template then cannot read `content`.
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None, "tool_calls": []}]
    with pytest.raises(Exception) as theirs:
        _reference(hf_tokenizer, messages, None, False, False)
    with pytest.raises(type(theirs.value)):
        template.render(messages, add_generation_prompt=False)


def test_invalid_combinations_raise(template: ChatTemplate) -> None:
    with pytest.raises(ValueError):
        template.render([{"role": "user", "content": "x"}], add_generation_prompt=True, continue_final_message=True)
    with pytest.raises(ValueError):
        template.render([])


# ---- bounded rendering --------------------------------------------------------------------------------------

HI = [{"role": "user", "content": "hello there"}]
# (what, template, the error names)
RUNAWAY = [
    ("nested range loops", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "steps"),
    ("nested loops over the input", "{% for m in messages %}{% for a in m.content * 1000 %}{% for b in m.content * 1000 %}"
     "{% endfor %}{% endfor %}{% endfor %}", "steps"),
    ("a recursive loop", "{% for x in range(3) recursive %}{% if loop.depth < 12 %}{{ loop(range(3)) }}{% endif %}"
     "{% endfor %}", "steps"),
    ("a string multiplied", "{{ 'x' * 10 ** 9 }}", "would hold 1000000000"),
    ("a list multiplied", "{{ ([1] * 10 ** 9) | length }}", "would hold 1000000000"),
    ("a huge power", "{{ 2 ** (10 ** 10) }}", "bits"),
    ("a growing string", "{% set ns = namespace(s='') %}{% for i in range(100000) %}{% set ns.s = ns.s ~ 'abcdefgh' %}"
     "{% endfor %}{{ ns.s }}", "100000"),
    ("a %-format width", "{{ '%999999999d' % 1 }}", "width"),
    ("a format() width", "{{ '{:>999999999}'.format(1) }}", "width"),
    ("a format filter width", "{{ '%999999999d' | format(1) }}", "width"),
    ("a center() width", "{{ 'x'.center(10 ** 9) }}", "above 100000"),
    ("replace() with the empty string", "{{ (messages[0].content * 1000).replace('', 'y' * 20) }}", "replace"),
    ("the replace filter", "{{ (messages[0].content * 1000) | replace('e', 'y' * 50) }}", "replace"),
    ("join()", "{{ ('x' * 50000).join(messages[0].content * 1000) }}", "join"),
    ("the output", "{% for i in range(100000) %}{{ messages[0].content }}{% endfor %}", "the rendered prompt"),
    ("the output of constant text", "{% for i in range(100000) %}constant text{% endfor %}", "the rendered prompt"),
]


@pytest.mark.parametrize("case", RUNAWAY, ids=[c[0] for c in RUNAWAY])
def test_runaway_templates_stop_at_a_named_bound(case) -> None:
    _, text, named = case
    with pytest.raises(TemplateLimitError, match=named):
        ChatTemplate(text, {}).render(HI, limits=GENEROUS)


def test_the_step_bound_counts_what_the_template_does(template: ChatTemplate) -> None:
    """The real template's steps grow with the conversation; a bound just above one render's cost passes and
    one just below fails (found by bisection on the budget, which is deterministic)."""
    messages = [SYS] + [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(20)]
    expected = template.render(messages)
    low, high = 1, GENEROUS.max_steps
    while low < high:
        mid = (low + high) // 2
        try:
            assert template.render(messages, limits=RenderLimits(mid, GENEROUS.max_chars)) == expected
            high = mid
        except TemplateLimitError:
            low = mid + 1
    assert 20 < low < 2000, low  # at least one step a message; far below the nested loops above
    with pytest.raises(TemplateLimitError, match=f"more than {low - 1} steps"):
        template.render(messages, limits=RenderLimits(low - 1, GENEROUS.max_chars))


def test_a_set_stop_event_ends_rendering() -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(RenderStopped):
        ChatTemplate("{% for i in range(100000) %}{% endfor %}", {}).render(HI, limits=GENEROUS, stop=stop)
