"""Chat on top of the engine: render the bundle's chat template, tokenize, attach reasoning control.

A `ChatRequest` is what the CLI and the gRPC service accept. `Chat.prepare()` turns it into the engine's
`GenerationRequest`, once: the prompt rendered exactly as transformers would, sampling from the model
card's defaults for the reasoning mode (on: temperature 0.6, top-p 0.95; off: greedy) with the request's
own settings on top, the thinking budgets that the sampler chain's thinking stage enforces inside the
decode loop, and the answer's grammar (tool choice and response format, engine/answer_format.py) that its
grammar stage enforces. Its two steps, `render()` and `request()` (which tokenizes), can also be run apart, so that a
caller can stop between them. Rendering is bounded by `RequestLimits.render` (bundle/chat_template.py).

With the engine's prefix cache on, a request also says where its prompt is worth a snapshot
(`capture_points`): after the system prompt and tools, after every message, and after messages the caller
names, so that the next turn of the same conversation prefills only what is new.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from edge_runtime.bundle.chat_template import ChatTemplate, RenderLimits, RenderStopped, TemplateLimitError, thinking_enabled
from edge_runtime.bundle.checks import is_int
from edge_runtime.engine.answer_format import AnswerFormat, ResponseFormat
from edge_runtime.engine.engine import MAX_CAPTURES, Engine
from edge_runtime.engine.limits import RequestLimits
from edge_runtime.engine.records import (DEFAULT_CLOSE_TEXT, Event, Final, GenerationRequest, Priority,
                                         RequestError, SamplingParams, ThinkingConfig, new_request_id)
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
    tool_choice: str = "auto"  # auto | none | required | a tool's name
    parallel_tool_calls: bool = True  # False: a reply calls at most one tool
    response_format: ResponseFormat = field(default_factory=ResponseFormat)
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
    prefix_cache: bool = True  # False: neither start from nor add to the engine's prefix cache
    capture_after: list[int] = field(default_factory=list)  # also snapshot after these many messages


def tool_name(tool: dict[str, Any]) -> str:
    return (tool.get("function") or tool).get("name", "")


def function_tools(tools: list[tuple[str, str, dict[str, Any] | None]], name_field: str = "tools[{i}].name",
                   ) -> list[dict[str, Any]] | None:
    """(name, description, parameters schema or None) for each tool a caller declared -> the tools as the chat
    template takes them, in OpenAI's function shape; names must be given and distinct (`name_field`, with
    the tool's index as {i}, is the field an error names); no parameters is an object with no properties."""
    seen: set[str] = set()
    for i, (name, _, _) in enumerate(tools):
        if not name:
            raise RequestError(name_field.format(i=i), "is empty")
        if name in seen:
            raise RequestError(name_field.format(i=i), f"{name[:40]!r} is given twice")
        seen.add(name)
    return [{"type": "function", "function": {"name": name, "description": description,
                                              "parameters": parameters or {"type": "object", "properties": {}}}}
            for name, description, parameters in tools] or None


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
        self._answer_format(chat).check_choice()  # before rendering: the grammar is compiled after it
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

    @staticmethod
    def _answer_format(chat: ChatRequest) -> AnswerFormat:
        return AnswerFormat(chat.tools or [], chat.tool_choice, chat.parallel_tool_calls, chat.response_format)

    def count_tokens(self, chat: ChatRequest) -> int:
        return len(encode(self.engine.tokenizer, self.render(chat)))

    def prepare(self, chat: ChatRequest) -> GenerationRequest:
        """The engine request for `chat`."""
        return self.request(chat, self.render(chat))

    def request(self, chat: ChatRequest, prompt: str) -> GenerationRequest:
        """The engine request for `chat` rendered as `prompt` (tokenized here, and its grammar compiled)."""
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
        prompt_ids = encode(self.engine.tokenizer, prompt)
        grammar = self.engine.grammars.compile(self._answer_format(chat))
        return GenerationRequest(
            prompt_ids=prompt_ids,
            sampling=SamplingParams.model_card_default(reasoning).override(chat.sampling),
            max_tokens=chat.max_tokens,
            stop_strings=list(chat.stop_strings),
            stop_token_ids=list(chat.stop_token_ids),
            ignore_eos=chat.ignore_eos,
            priority=chat.priority,
            deadline=chat.deadline,
            thinking=thinking,
            tool_names=names if chat.tools and chat.tool_choice != "none" else None,
            grammar=grammar,
            request_id=chat.request_id or new_request_id(),
            prefix_cache=chat.prefix_cache,
            capture_at=self.capture_points(chat, prompt_ids),
        )

    def capture_points(self, chat: ChatRequest, prompt_ids: list[int]) -> tuple[int, ...]:
        """Prompt positions worth a prefix-cache snapshot: where the first user message's text begins (after
        the system prompt, the tools and the user header: what every conversation with them shares), after
        the messages `capture_after` names, and after all the messages, where the next turn (this one's
        answer and a new message appended) goes on. A position counts only where the text rendered up to it
        is a token prefix of the prompt: the template rewrites the system header for /think and /no_think
        and drops earlier turns' reasoning, so a shorter render need not be one."""
        n = len(chat.messages)
        bad = [k for k in chat.capture_after if not is_int(k) or not 1 <= k <= n]
        if bad or len(chat.capture_after) > MAX_CAPTURES:
            raise RequestError("capture_after", f"at most {MAX_CAPTURES} message counts in 1..{n}, got {chat.capture_after[:MAX_CAPTURES + 1]}")
        if self.engine.cache is None or not chat.prefix_cache:
            return ()
        tools = chat.tools if chat.tool_choice != "none" else None
        render = lambda messages: self.template.render(messages, tools=tools, add_generation_prompt=False,
                                                       reasoning=chat.reasoning, limits=self.limits)
        system = [m for m in chat.messages[:1] if m.get("role") == "system"]
        texts = [lambda: self._head(system, tools, chat.reasoning)] if system or tools else []
        texts += [lambda k=k: render(chat.messages[:k]) for k in sorted(set(chat.capture_after) | {n})]
        points = set()
        for text in texts:
            try:
                ids = encode(self.engine.tokenizer, text())
            except Exception:  # a part of a conversation whose whole renders: no snapshot there
                continue
            if 0 < len(ids) < len(prompt_ids) and prompt_ids[:len(ids)] == ids:
                points.add(len(ids))
        return tuple(sorted(points))[-MAX_CAPTURES:]

    def _head(self, system: list[dict[str, Any]], tools: list[dict[str, Any]] | None, reasoning: bool | None) -> str:
        """The text every conversation with this system message and tools begins with, up to where the
        first user message's own text starts: what two renders with different first questions share."""
        return os.path.commonprefix([self.template.render(system + [{"role": "user", "content": c}], tools=tools,
                                                          add_generation_prompt=False, reasoning=reasoning,
                                                          limits=self.limits) for c in "ab"])

    def pin(self, system_prompt: str) -> Final:
        """Prefill the head of every conversation with this system prompt (reasoning as the template decides)
        and keep its snapshot for good: `[cache] pinned_prompts` at start-up."""
        ids = encode(self.engine.tokenizer, self._head([{"role": "system", "content": system_prompt}], None, None))
        return self.engine.generate(GenerationRequest(ids, SamplingParams(greedy=True), max_tokens=1, ignore_eos=True,
                                                      capture_at=(len(ids),), pin_captures=True, request_id="pin"))

    def submit(self, chat: ChatRequest, on_event: Callable[[Event], None] | None = None) -> Sequence:
        return self.engine.submit(self.prepare(chat), on_event)
