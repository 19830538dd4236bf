"""`nemotron-edge chat` with tools: the tools file is checked before anything loads, and a tool round trip
sends the model's call and the tool's response back in the template's format."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from edge_runtime.bundle.demo import DEMO_BUNDLE
from edge_runtime.bundle.chat_template import ChatTemplate
from edge_runtime.bundle.reader import open_bundle
from edge_runtime.cli import main
from edge_runtime.commands.chat import round_trip, tools_of
from edge_runtime.engine.records import Final, FinishReason, RequestError, Timings, ToolCallRecord, Usage
from nemotron_export.demo_model.tasks import SYSTEM_PROMPT, Split, conversations


def _args(tools: Path | None) -> argparse.Namespace:
    return argparse.Namespace(tools=tools)


def test_a_bad_tools_file_is_named(tmp_path: Path) -> None:
    assert tools_of(_args(None)) is None
    for text, match in (("{", "not JSON"), ('{"name": "x"}', "expected a JSON list")):
        (tmp_path / "t.json").write_text(text)
        with pytest.raises(RequestError, match=match):
            tools_of(_args(tmp_path / "t.json"))
    with pytest.raises(RequestError, match="cannot read"):
        tools_of(_args(tmp_path / "missing.json"))


def test_a_round_trip_appends_the_call_and_the_response_as_the_template_renders_them() -> None:
    messages = [{"role": "user", "content": "Pick up the cup."}]
    call = ToolCallRecord(0, "move_arm", json.dumps({"arm": "left", "x": 1, "y": 2}))
    final = Final(FinishReason.STOP, Usage(), Timings(), tool_calls=[call])
    then = round_trip(messages, final, '{"holding": true}')
    assert then[1] == {"role": "assistant", "content": "", "tool_calls": [{"name": "move_arm",
                                                                             "arguments": {"arm": "left", "x": 1, "y": 2}}]}
    assert then[2] == {"role": "tool", "content": '{"holding": true}'}
    bundle = open_bundle(DEMO_BUNDLE, verify=False)
    text = ChatTemplate(bundle.chat_template, bundle.special_tokens).render(then)
    assert '"name": "move_arm"' in text and '{"holding": true}' in text
    assert round_trip(messages, Final(FinishReason.STOP, Usage(), Timings()), "x") is None  # no call, no second turn


def test_greedy_chat_answers_as_the_demo_benchmark_measures(capsys: pytest.CaptureFixture[str]) -> None:
    # A held-out stack, answered greedily as bench.demo_quality measures (sampled at temperature 0.6, the
    # default with reasoning on, an earlier model got this kind wrong where greedy got it right).
    conv = list(conversations(Split.HELD_OUT, 0, 24))[22]
    assert main(["chat", "--greedy", "--json", "--system", SYSTEM_PROMPT, conv.messages[-1]["content"]]) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert final["answer_text"].strip() == conv.answer
    with pytest.raises(SystemExit):  # greedy has no seed
        main(["chat", "--greedy", "--seed", "1", "x"])
