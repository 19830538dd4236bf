"""Conversations to training examples: token ids and a loss weight per token, as the runtime will see them.

The prompt is the chat template rendered exactly as the runtime renders it (edge_runtime's ChatTemplate,
generation prompt added), so the model learns on the bytes it is served. The reply is tokenized in pieces,
reasoning, close sequence, answer, end of turn, because that is how the runtime produces it: a thinking
budget forces the close sequence's own token ids after whatever the model wrote, so the close must be the
same ids in training. Three modes (`Mode`):
- THINK: the whole reasoning, the model's own `</think>`, the answer;
- NO_THINK: the template's `<think></think>` prompt (reasoning off), the answer directly;
- CUT: the reasoning cut after a random number of its tokens and closed as a budget closes it; the close
  is not learned (the runtime forces it), the answer after it is, so that the model answers as well as it
  can from what it had time to think.
The reply carries the loss; the prompt carries a quarter of it (`PROMPT_WEIGHT`). A request repeats its
own names and numbers (an object named, then asked for; a color on two facts; an arm in the call and in the
history), so predicting the prompt is practice at the copying the answers need, on tokens the forward pass
computes anyway; a quarter keeps its unpredictable draws from drowning the reply.
"""

from __future__ import annotations

import enum
import functools
import random
from dataclasses import dataclass

from tokenizers import Tokenizer

from edge_runtime.bundle.chat_template import ChatTemplate
from edge_runtime.engine.records import DEFAULT_CLOSE_TEXT
from nemotron_export.demo_model.tasks import Conversation
from nemotron_export.tokenizer_synth import EOS_TOKEN, load_chat_template

END_OF_TURN = "\n" + EOS_TOKEN
PROMPT_WEIGHT = 0.25


class Mode(enum.Enum):
    THINK = "think"
    NO_THINK = "no_think"
    CUT = "cut"


@dataclass(frozen=True)
class Example:
    ids: list[int]
    weights: list[float]  # 1 on the reply, PROMPT_WEIGHT on the prompt, 0 on forced tokens


@functools.cache
def _template() -> ChatTemplate:
    return ChatTemplate(load_chat_template(), {})


def prompt_text(conv: Conversation, reasoning: bool) -> str:
    """The prompt as the runtime renders it for this conversation, with reasoning on or off."""
    return _template().render(conv.messages, tools=conv.tools, add_generation_prompt=True, reasoning=reasoning)


class ExampleBuilder:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def build(self, conv: Conversation, mode: Mode, rng: random.Random) -> Example:
        prompt = self._ids(prompt_text(conv, reasoning=mode is not Mode.NO_THINK))
        answer = self._ids(conv.tool_call.text() if conv.tool_call else conv.answer) + self._ids(END_OF_TURN)
        if mode is Mode.NO_THINK:
            return Example(prompt + answer, [PROMPT_WEIGHT] * len(prompt) + [1.0] * len(answer))
        reasoning = self._ids(conv.reasoning)
        if mode is Mode.THINK:
            close = self._ids(DEFAULT_CLOSE_TEXT)
            return Example(prompt + reasoning + close + answer,
                           [PROMPT_WEIGHT] * len(prompt) + [1.0] * (len(reasoning) + len(close) + len(answer)))
        kept = reasoning[:rng.randrange(len(reasoning))]
        close_text = DEFAULT_CLOSE_TEXT
        if kept and self.tokenizer.decode([kept[-1]]).endswith("\n"):  # the runtime completes a begun close
            close_text = close_text.removeprefix("\n")
        close = self._ids(close_text)
        return Example(prompt + kept + close + answer,
                       [PROMPT_WEIGHT] * len(prompt) + [1.0] * len(kept) + [0.0] * len(close) + [1.0] * len(answer))
