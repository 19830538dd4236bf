"""The demo model's task generator: deterministic, held-out items apart from training ones, and right answers.

The generator decides what the demo model learns and what its accuracy is measured on, so a change to it
changes the shipped model's meaning: the first conversations of each split are pinned by a hash.
"""

from __future__ import annotations

import hashlib
import json
import random
import re

import pytest

from nemotron_export.demo_model.examples import PROMPT_WEIGHT, ExampleBuilder, Mode, prompt_text
from nemotron_export.demo_model.tasks import (Family, Reach, Split, Stack, Travel, conversations, is_correct,
                                              normalized, split_of)
from nemotron_export.tokenizer_synth import build_tokenizer


def _digest(split: Split) -> str:
    convs = [(c.family.value, c.messages, c.reasoning, c.answer, c.tool_call and c.tool_call.text())
             for c in conversations(split, 0, 40)]
    return hashlib.sha256(json.dumps(convs).encode()).hexdigest()[:16]


def test_the_same_seed_gives_the_same_conversations_on_every_machine():
    assert list(conversations(Split.TRAIN, 3, 20)) == list(conversations(Split.TRAIN, 3, 20))
    assert list(conversations(Split.TRAIN, 3, 20)) != list(conversations(Split.TRAIN, 4, 20))
    # random.Random's algorithm is specified; these pin it and the generator together.
    assert (_digest(Split.TRAIN), _digest(Split.HELD_OUT)) == ("d967df4009bd3993", "871761f4b6d438b1")


def test_held_out_items_differ_from_training_items_in_numbers_and_structure():
    train = list(conversations(Split.TRAIN, 0, 4000))
    held = list(conversations(Split.HELD_OUT, 0, 400))
    assert not {c.key for c in train} & {c.key for c in held}
    assert all(split_of(c.key) is Split.HELD_OUT for c in held)
    assert len({c.key for c in held}) > 240  # not a handful of items repeated
    # Read back from the text, names left out: the numbers of a held-out request never come with the same
    # numbers in training (a stack's numbers are its heights and where the box wanted stands, checked above).
    assert not {_numbers(c) for c in train} & {_numbers(c) for c in held if c.family is not Family.STACK}


def _numbers(conv) -> tuple:
    return conv.family, tuple(re.findall(r"\d+", conv.messages[1]["content"]))


def test_every_family_appears_in_turn_and_tool_conversations_declare_the_tools():
    convs = list(conversations(Split.HELD_OUT, 0, 200))
    assert [c.family for c in convs[:4]] == list(Family)
    assert {f: sum(c.family is f for c in convs) for f in Family} == {f: 50 for f in Family}
    mixed = list(conversations(Split.TRAIN, 0, 40, {Family.REACH: 1, Family.STACK: 3}))  # training's weighted stream
    assert [c.family for c in mixed[:8]] == [Family.REACH, Family.STACK, Family.STACK, Family.STACK] * 2
    assert sum(c.family is Family.STACK for c in mixed) == 30
    tool = [c for c in convs if c.family is Family.TOOL]
    assert all(c.tools for c in tool) and not any(c.tools for c in convs if c.family is not Family.TOOL)
    assert any(c.tool_call is None and c.messages[-1]["role"] == "tool" for c in tool)
    assert {c.tool_call.name for c in tool if c.tool_call} == {"navigate_to", "move_arm"}
    # The place a call names is read after the same words it followed before: "to the" in the request
    # and in the reasoning, "location" in the reasoning and in the call.
    for c in (c for c in tool if c.tool_call and c.tool_call.name == "navigate_to"):
        place, meters = c.tool_call.arguments["location"], c.tool_call.arguments["distance_m"]
        assert c.messages[-1]["content"].endswith(f"Go to the {place}.") and c.reasoning.startswith(f"Go to the {place}.")
        assert f"to the {place}: location {place}, distance_m {meters}." in c.reasoning
    for c in (c for c in tool if c.tool_call is None):  # the grasp report decides the reply
        held = json.loads(c.messages[-1]["content"])["holding"]
        assert c.reasoning.startswith(f"Holding {json.dumps(held)}:")
        assert c.answer == ("I picked it up." if held else "I could not pick it up.")


@pytest.mark.parametrize("seed", range(5))
def test_the_reasoning_derives_the_answer(seed):
    rng = random.Random(seed)
    r = Reach.draw(rng)
    left, right = r.distance(r.left), r.distance(r.right)
    assert left != right and r.arm() == ("left" if left < right else "right")
    assert f"= {left}." in r.reasoning() and f"= {right}." in r.reasoning()
    t = Travel.draw(rng)
    assert t.total() == t.seconds() * t.speed and min(t.first, t.second) >= 2
    s = Stack.draw(rng)
    lift, stack = s.to_lift(), s.stacks[s.index]
    assert lift and lift[0] == stack[-1] and s.wanted() not in lift and s.wanted() in stack
    assert " ".join(reversed(lift)) + " (top)" in s.question() and " ".join(reversed(lift)) + " (top)." in s.reasoning()
    stacks = s.question().split(". The robot needs")[0].split(";")
    assert sum(f" {s.wanted()} " in f" {part} " for part in stacks) == 1  # in one stack only


def test_a_reply_is_judged_on_its_answer_or_its_single_tool_call():
    convs = list(conversations(Split.HELD_OUT, 0, 8))
    text = next(c for c in convs if c.tool_call is None and c.family is not Family.TOOL)
    assert is_correct(text, "  " + text.answer.upper().replace(" ", "\n "), [])
    assert not is_correct(text, text.answer + " Or not.", [])
    assert not is_correct(text, text.answer, [("move_arm", "{}")])
    call = next(c for c in convs if c.tool_call)
    args = json.dumps(call.tool_call.arguments)
    assert is_correct(call, "", [(call.tool_call.name, args)])
    assert is_correct(call, "", [(call.tool_call.name, json.dumps(dict(reversed(call.tool_call.arguments.items()))))])
    assert not is_correct(call, "", [(call.tool_call.name, args[:-1])])
    assert not is_correct(call, "", [("other", args)])
    assert not is_correct(call, "", [(call.tool_call.name, args)] * 2)
    assert normalized(" A\tB \n") == "a b"


def test_examples_learn_the_reply_and_a_little_of_the_prompt_and_never_the_forced_close():
    tokenizer = build_tokenizer(1024)
    builder = ExampleBuilder(tokenizer)
    conv = next(iter(conversations(Split.TRAIN, 0, 1)))
    close = tokenizer.token_to_id("</think>")
    think = builder.build(conv, Mode.THINK, random.Random(0))
    prompt = tokenizer.encode(prompt_text(conv, reasoning=True), add_special_tokens=False).ids
    assert think.ids[:len(prompt)] == prompt and think.weights[:len(prompt)] == [PROMPT_WEIGHT] * len(prompt)
    assert 0.0 < PROMPT_WEIGHT < 1.0
    assert think.weights[think.ids.index(close)] == 1.0  # the model closes its own reasoning
    assert tokenizer.decode(think.ids[len(prompt):]).startswith(conv.reasoning)
    for seed in range(20):
        cut = builder.build(conv, Mode.CUT, random.Random(seed))
        assert cut.ids[:len(prompt)] == prompt and len(cut.ids) < len(think.ids)
        assert cut.weights[cut.ids.index(close)] == 0.0  # forced by the budget, not learned
        assert tokenizer.decode(cut.ids[cut.ids.index(close):]).endswith(conv.answer + "\n")
    off = builder.build(conv, Mode.NO_THINK, random.Random(0))
    assert prompt_text(conv, reasoning=False).endswith("<think></think>")
    assert tokenizer.decode(off.ids[off.weights.index(1.0):]) == conv.answer + "\n"
