"""Chat on top of the engine: render the bundle's chat template, tokenize, attach reasoning control.

A `ChatRequest` is what the CLI and the gRPC service accept. `Chat.prepare()` turns it into the engine's
`GenerationRequest`, once: the prompt rendered exactly as transformers would, sampling from the model
card's defaults for the reasoning mode (on: temperature 0.6, top-p 0.95; off: greedy) with the request's
own settings on top, and the thinking budgets that the sampler chain's thinking stage enforces inside the
decode loop. Its two steps, `render()` and `request()` (which tokenizes), can also be run apart, so that a
caller can stop between them. Rendering is bounded by `RequestLimits.render` (bundle/chat_template.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from edge_runtime.bundle.chat_template import ChatTemplate, RenderLimits, RenderStopped, TemplateLimitError, thinking_enabled
from edge_runtime.engine.engine import Engine
from edge_runtime.engine.limits import RequestLimits
from edge_runtime.engine.records import (DEFAULT_CLOSE_TEXT, Event, GenerationRequest, Priority, RequestError,
                                         SamplingParams, ThinkingConfig, new_request_id)
from edge_runtime.engine.sequence import Sequence
from edge_runtime.engine.token_ids import encode


@dataclass
class ThinkingDefaults:
    """Service-wide defaults for requests that set no budget of their own."""

    max_thinking_tokens: int | None = None
    thinking_grace_tokens: int = 0
    thinking_deadline_ms: float | None = None
    max_answer_tokens: int | None = None


@dataclass
class ChatRequest:
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str = "auto"  # auto | none | a tool's name
    reasoning: bool | None = None  # None: the template decides (/think, /no_think; on by default)
    max_thinking_tokens: int | None = None
    thinking_grace_tokens: int | None = None
    thinking_deadline_ms: float | None = None
    max_answer_tokens: int | None = None
    thinking_close_text: str | None = None
    # SamplingParams fields set on top of the model card's defaults for the reasoning mode ({"seed": 7} makes
    # a sampled chat reproducible); an explicit temperature decides greediness.
    sampling: dict[str, Any] = field(default_factory=dict)
    max_tokens: int | None = 1024  # None: up to the context limit
    stop_strings: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    priority: Priority = Priority.NORMAL
    deadline: float | None = None  # engine-clock seconds
    request_id: str | None = None


def tool_name(tool: dict[str, Any]) -> str:
    return (tool.get("function") or tool).get("name", "")


class Chat:
    def __init__(self, engine: Engine, defaults: ThinkingDefaults | None = None, limits: RenderLimits | None = None):
        """`limits`: what one render may cost; default: the limits derived from the engine's context."""
        if engine.tokenizer is None or engine.bundle.chat_template is None:
            raise RequestError("bundle", "has no tokenizer or chat template; it serves token-id requests only")
        self.engine = engine
        self.defaults = defaults or ThinkingDefaults()
        self.limits = limits or RequestLimits.for_context(engine.max_context).render
        self.template = ChatTemplate(engine.bundle.chat_template, engine.bundle.special_tokens)

    def render(self, chat: ChatRequest, stop: threading.Event | None = None) -> str:
        """The prompt text of `chat`. A set `stop` ends rendering at its next step (RenderStopped)."""
        if not chat.messages:
            raise RequestError("messages", "is empty")
        names = [tool_name(t) for t in chat.tools or []]
        if chat.tool_choice not in ("auto", "none") and chat.tool_choice not in names:
            raise RequestError("tool_choice", f"names unknown tool {chat.tool_choice!r}; tools: {names}")
        tools = chat.tools if chat.tool_choice != "none" else None
        try:
            return self.template.render(chat.messages, tools=tools, add_generation_prompt=True, reasoning=chat.reasoning,
                                        limits=self.limits, stop=stop)
        except TemplateLimitError as e:
            raise RequestError("messages", f"the chat template cannot render this conversation within its "
                                           f"limits ([limits] template_max_steps, max_text_chars): {e}") from None
        except (RequestError, RenderStopped):
            raise
        except Exception as e:  # template errors are the request's fault (bad roles, missing content, ...)
            raise RequestError("messages", f"cannot render the chat template: {e}") from None

    def count_tokens(self, chat: ChatRequest) -> int:
        return len(encode(self.engine.tokenizer, self.render(chat)))

    def prepare(self, chat: ChatRequest) -> GenerationRequest:
        """The engine request for `chat`."""
        return self.request(chat, self.render(chat))

    def request(self, chat: ChatRequest, prompt: str) -> GenerationRequest:
        """The engine request for `chat` rendered as `prompt` (tokenized here)."""
        names = [tool_name(t) for t in chat.tools or []]
        reasoning = thinking_enabled(prompt)
        d = self.defaults
        pick = lambda v, default: default if v is None else v
        try:
            thinking = ThinkingConfig(
                max_thinking_tokens=pick(chat.max_thinking_tokens, d.max_thinking_tokens),
                thinking_grace_tokens=pick(chat.thinking_grace_tokens, d.thinking_grace_tokens),
                thinking_deadline_ms=pick(chat.thinking_deadline_ms, d.thinking_deadline_ms),
                max_answer_tokens=pick(chat.max_answer_tokens, d.max_answer_tokens),
                close_text=chat.thinking_close_text or DEFAULT_CLOSE_TEXT,
                enabled=reasoning,
            )
        except ValueError as e:
            raise RequestError(str(e).split(" ")[0], str(e)) from None
        return GenerationRequest(
            prompt_ids=encode(self.engine.tokenizer, prompt),
            sampling=SamplingParams.model_card_default(reasoning).override(chat.sampling),
            max_tokens=chat.max_tokens,
            stop_strings=list(chat.stop_strings),
            stop_token_ids=list(chat.stop_token_ids),
            ignore_eos=chat.ignore_eos,
            priority=chat.priority,
            deadline=chat.deadline,
            thinking=thinking,
            tool_names=names if chat.tools and chat.tool_choice != "none" else None,
            request_id=chat.request_id or new_request_id(),
        )

    def submit(self, chat: ChatRequest, on_event: Callable[[Event], None] | None = None) -> Sequence:
        return self.engine.submit(self.prepare(chat), on_event)
