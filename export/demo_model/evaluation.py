"""How the demo model is asked and judged through the runtime: the settings of thinking (on, off, strict
budgets), the greedy chat request of a conversation in a setting, and whether a reply is correct
(`tasks.is_correct` on what the runtime returned). bench/demo_quality.py measures with these; the tests
hold the shipped bundle to them."""

from __future__ import annotations

from dataclasses import dataclass

from edge_runtime.engine.chat import ChatRequest
from edge_runtime.engine.records import Final
from nemotron_export.demo_model.tasks import Conversation, is_correct

BUDGETS = (0, 8, 16, 32, 64)
MAX_TOKENS = 256


@dataclass(frozen=True)
class Setting:
    name: str
    reasoning: bool
    budget: int | None = None


SETTINGS = (Setting("on", True), Setting("off", False)) + tuple(Setting(f"budget {b}", True, b) for b in BUDGETS)


def request(conv: Conversation, setting: Setting) -> ChatRequest:
    return ChatRequest(messages=conv.messages, tools=conv.tools, reasoning=setting.reasoning,
                       max_thinking_tokens=setting.budget, thinking_grace_tokens=0 if setting.budget is not None else None,
                       sampling={"temperature": 0.0}, max_tokens=MAX_TOKENS)


def correct(conv: Conversation, final: Final) -> bool:
    return is_correct(conv, final.answer_text, [(t.name, t.arguments_json) for t in final.tool_calls])
