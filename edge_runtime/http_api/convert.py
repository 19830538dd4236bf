"""OpenAI's shapes to the engine's and back: request bodies (http_api/schema.py) become `ChatRequest`s and
prompts, checked against the service's `RequestLimits` on the way; engine events become chat-completion
and completion objects, whole or as stream chunks.

Conventions: the reasoning is `reasoning_content` beside `content` (vLLM's), streamed as deltas of it; tool
calls have OpenAI's `tool_calls` shape, ids as the gRPC service gives them; `usage` carries
`completion_tokens_details.reasoning_tokens` and `prompt_tokens_details.cached_tokens` (prompt tokens the
prefix cache supplied). A reply that ends with tool calls has finish reason `tool_calls`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from tokenizers import Tokenizer

from edge_runtime.engine.answer_format import ResponseFormat
from edge_runtime.engine.chat import ChatRequest, function_tools
from edge_runtime.engine.limits import RequestLimits
from edge_runtime.engine.records import (Channel, Delta, Event, Final, FinishReason, Priority, RequestError,
                                         TokenLogprobs, ToolCallRecord, Usage)
from edge_runtime.http_api.schema import ChatCompletionRequest, CompletionRequest, NamedToolChoice
from edge_runtime.service.convert import tool_call_id

SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty",
            "seed")


# ---- requests -----------------------------------------------------------------------------------------------


def check_bounds(body: ChatCompletionRequest, limits: RequestLimits) -> None:
    """The gRPC service's bounds on what one request carries, each field named (its byte size was bounded
    before parsing)."""
    limits.check_counts(len(body.messages) + sum(len(m.tool_calls or []) for m in body.messages), len(body.tools or []))
    tally = limits.tally()
    for i, m in enumerate(body.messages):
        where = f"messages[{i}]"
        tally.add(f"{where}.content", m.text)
        for name in ("name", "tool_call_id"):
            tally.add(f"{where}.{name}", getattr(m, name) or "")
        for j, c in enumerate(m.tool_calls or []):
            tally.add(f"{where}.tool_calls[{j}].id", c.id)
            for name in ("name", "arguments"):
                tally.add(f"{where}.tool_calls[{j}].function.{name}", getattr(c.function, name))
    for i, t in enumerate(body.tools or []):
        tally.add(f"tools[{i}].function.name", t.function.name)
        tally.add(f"tools[{i}].function.description", t.function.description)
        tally.add(f"tools[{i}].function.parameters", json.dumps(t.function.parameters) if t.function.parameters else "")
    tally.add("response_format", json.dumps(body.response_format) if body.response_format else "")


def chat_request(body: ChatCompletionRequest, request_id: str) -> ChatRequest:
    """The chat layer's request for `body`."""
    tool_choice = body.tool_choice.function.name if isinstance(body.tool_choice, NamedToolChoice) \
        else body.tool_choice or "auto"
    sampling = {name: getattr(body, name) for name in SAMPLING if getattr(body, name) is not None}
    if body.logprobs:
        sampling["logprobs"] = body.top_logprobs or 0
    reasoning = body.reasoning
    if reasoning is None and body.chat_template_kwargs is not None:
        reasoning = body.chat_template_kwargs.enable_thinking
    return ChatRequest(
        messages=[_message(m, i) for i, m in enumerate(body.messages)],
        tools=_tools(body),
        tool_choice=tool_choice,
        parallel_tool_calls=True if body.parallel_tool_calls is None else body.parallel_tool_calls,
        response_format=ResponseFormat.from_openai(body.response_format),
        reasoning=reasoning,
        max_thinking_tokens=body.max_thinking_tokens,
        thinking_grace_tokens=body.thinking_grace_tokens,
        thinking_deadline_ms=body.thinking_deadline_ms,
        max_answer_tokens=body.max_answer_tokens,
        sampling=sampling,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        stop_strings=body.stop_strings(),
        ignore_eos=body.ignore_eos,
        priority=priority(body),
        request_id=request_id,
    )


def priority(body: ChatCompletionRequest | CompletionRequest) -> Priority:
    return Priority[body.priority.upper()] if body.priority else Priority.NORMAL


def _message(m, i: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text}
    if m.tool_calls:
        if m.role != "assistant":
            raise RequestError(f"messages[{i}].tool_calls", "only assistant messages carry tool calls")
        message["tool_calls"] = [
            {"id": c.id, "type": "function",
             "function": {"name": c.function.name,
                          "arguments": _arguments(c.function.arguments, f"messages[{i}].tool_calls[{j}].function.arguments")}}
            for j, c in enumerate(m.tool_calls)]
    if m.tool_call_id is not None:
        message["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        message["name"] = m.name
    return message


def _arguments(text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except (ValueError, RecursionError) as e:
        raise RequestError(where, f"is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(value, dict):
        raise RequestError(where, f"must be a JSON object, got {type(value).__name__}")
    return value


def _tools(body: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    return function_tools([(t.function.name, t.function.description, t.function.parameters) for t in body.tools or []],
                          name_field="tools[{i}].function.name")


def completion_sampling(body: CompletionRequest) -> dict[str, Any]:
    sampling = {name: getattr(body, name) for name in SAMPLING if getattr(body, name) is not None}
    if body.logprobs is not None:
        sampling["logprobs"] = body.logprobs
    return sampling


# ---- responses ----------------------------------------------------------------------------------------------


def usage(u: Usage) -> dict[str, Any]:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
            "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens}}


def finish_reason(final: Final) -> str:
    if final.finish_reason is FinishReason.LENGTH:
        return "length"
    return "tool_calls" if final.tool_calls else "stop"


def failed(final: Final) -> bool:
    """The request did not end with an answer (ERROR, CANCELLED, DEADLINE): an error object, not a reply."""
    return final.finish_reason not in (FinishReason.STOP, FinishReason.STOP_SEQUENCE, FinishReason.LENGTH)


def tool_calls(calls: list[ToolCallRecord], request_id: str, streaming: bool = False) -> list[dict[str, Any]]:
    return [{**({"index": c.index} if streaming else {}), "id": tool_call_id(request_id, c.index), "type": "function",
             "function": {"name": c.name, "arguments": c.arguments_json}} for c in calls]


@dataclass
class Reply:
    """One request's OpenAI objects: `chunks(event)` while it streams, `whole(final)` when it is done."""

    request_id: str
    model: str
    tokenizer: Tokenizer | None
    chat: bool = True  # False: a text completion
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    _logprobs: list[TokenLogprobs] = field(default_factory=list)
    _started: bool = False

    @property
    def object_id(self) -> str:
        return f"{'chatcmpl' if self.chat else 'cmpl'}-{self.request_id}"

    def chunks(self, event: Event) -> list[dict[str, Any]]:
        """The stream chunks for one (merged) engine event."""
        out = []
        if self.chat and not self._started:
            out.append(self._chunk({"role": "assistant", "content": ""}))
        self._started = True
        if isinstance(event, Delta):
            logprobs = self._logprobs_of(event)
            if event.text or logprobs:
                key = "reasoning_content" if event.channel is Channel.REASONING else "content"
                out.append(self._chunk({key: event.text} if self.chat else event.text, logprobs=logprobs))
        elif isinstance(event, ToolCallRecord):
            out.append(self._chunk({"tool_calls": tool_calls([event], self.request_id, streaming=True)}))
        elif isinstance(event, Final):
            out.append(self._chunk({} if self.chat else "", finish=finish_reason(event)))
            if self.include_usage:
                out.append({**self._head("chunk"), "choices": [], "usage": usage(event.usage)})
        return out

    def whole(self, events: list[Event]) -> dict[str, Any]:
        """The whole reply (non-streaming) from all of a request's events, its Final last."""
        final = events[-1]
        for e in events:
            if isinstance(e, Delta):
                self._logprobs_of(e)
        logprobs = self._logprob_entries(self._logprobs) if self._logprobs else None
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": final.answer_text or None,
                                       "reasoning_content": final.reasoning_text or None}
            if final.tool_calls:
                message["tool_calls"] = tool_calls(final.tool_calls, self.request_id)
            choice = {"index": 0, "message": message, "logprobs": {"content": logprobs} if logprobs else None,
                      "finish_reason": finish_reason(final)}
        else:
            choice = {"index": 0, "text": final.answer_text, "logprobs": None, "finish_reason": finish_reason(final)}
        return {**self._head(""), "choices": [choice], "usage": usage(final.usage)}

    def _head(self, suffix: str) -> dict[str, Any]:
        kind = ("chat.completion" if self.chat else "text_completion") + (f".{suffix}" if suffix and self.chat else "")
        return {"id": self.object_id, "object": kind, "created": self.created, "model": self.model}

    def _chunk(self, delta: dict[str, Any] | str, finish: str | None = None,
               logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if self.chat:
            choice["delta"] = delta
            choice["logprobs"] = {"content": logprobs} if logprobs else None
        else:
            choice["text"] = delta
            choice["logprobs"] = None
        return {**self._head("chunk"), "choices": [choice]}

    def _logprobs_of(self, delta: Delta) -> list[dict[str, Any]]:
        """The delta's answer-token logprobs as OpenAI entries (kept for the whole reply too)."""
        if delta.channel is not Channel.ANSWER or not delta.logprobs:
            return []
        self._logprobs.extend(delta.logprobs)
        return self._logprob_entries(delta.logprobs)

    def _logprob_entries(self, logprobs: list[TokenLogprobs]) -> list[dict[str, Any]]:
        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False) if self.tokenizer else str(token_id)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}
        return [{**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, p) for t, p in lp.top]} for lp in logprobs]
