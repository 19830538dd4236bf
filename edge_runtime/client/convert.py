"""The client's side of the wire: plain Python values (message dicts as OpenAI-style chat APIs write them)
become request protos, and `ChatEvent` protos become the same `Delta` / `ToolCallRecord` / `Final` records
the in-process engine emits, so one display function serves both."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edge_runtime.api import edge_pb2 as pb
from edge_runtime.api.mapping import (CHANNEL_FROM_PROTO, FINISH_FROM_PROTO, GRAMMAR_FROM_PROTO, PRIORITY_TO_PROTO,
                                      SAMPLING_FIELDS, THINKING_END_FROM_PROTO)
from edge_runtime.engine.answer_format import FormatKind, ResponseFormat
from edge_runtime.engine.records import (Channel, Delta, Event, Final, FinishReason, Priority, Timings, TokenLogprobs,
                                         ToolCallRecord, Usage)



def message_to_proto(m: dict[str, Any]) -> pb.Message:
    """An OpenAI-style message dict: role, content, optional tool_calls ({id, function: {name, arguments}}),
    tool_call_id and name."""
    calls = []
    for c in m.get("tool_calls") or []:
        fn = c.get("function", c)
        args = fn.get("arguments", {})
        calls.append(pb.ToolCall(id=c.get("id", ""), name=fn["name"],
                                 arguments_json=args if isinstance(args, str) else json.dumps(args)))
    msg = pb.Message(role=m["role"], content=m.get("content") or "", tool_calls=calls)
    if m.get("tool_call_id") is not None:
        msg.tool_call_id = m["tool_call_id"]
    if m.get("name") is not None:
        msg.name = m["name"]
    return msg


def tool_to_proto(t: dict[str, Any]) -> pb.Tool:
    """An OpenAI-style tool ({type: function, function: {...}}) or a bare {name, description, parameters}."""
    fn = t.get("function", t)
    params = fn.get("parameters", {})
    return pb.Tool(name=fn["name"], description=fn.get("description", ""),
                   parameters_json=params if isinstance(params, str) else json.dumps(params))


def response_format_to_proto(fmt: dict[str, Any] | None) -> pb.ResponseFormat:
    """OpenAI's `response_format` dict, or our regex and lark ones (ResponseFormat.from_openai)."""
    f = ResponseFormat.from_openai(fmt)
    if f.kind is FormatKind.TEXT:
        return pb.ResponseFormat()
    if f.kind is FormatKind.JSON_OBJECT:
        return pb.ResponseFormat(json_object=True)
    return pb.ResponseFormat(**{f.kind.value: json.dumps(f.spec) if f.kind is FormatKind.JSON_SCHEMA else f.spec})


def sampling_to_proto(values: dict[str, Any] | None = None, *, max_tokens: int | None = None,
                      stop: list[str] | None = None, stop_token_ids: list[int] | None = None,
                      ignore_eos: bool = False) -> pb.SamplingParams:
    s = pb.SamplingParams(stop=stop or [], stop_token_ids=stop_token_ids or [], ignore_eos=ignore_eos)
    for name, value in (values or {}).items():
        if name not in SAMPLING_FIELDS:
            raise ValueError(f"sampling: unknown field {name!r} (known: {', '.join(SAMPLING_FIELDS)})")
        if value is not None:
            setattr(s, name, value)
    if max_tokens is not None:
        s.max_tokens = max_tokens
    return s


def priority_to_proto(priority: Priority | str | None) -> int:
    if priority is None:
        return pb.PRIORITY_UNSPECIFIED
    if isinstance(priority, str):
        priority = Priority[priority.upper()]
    return PRIORITY_TO_PROTO[Priority(priority)]


@dataclass
class RemoteTimings(Timings):
    """The server's timing summary: per-token latencies arrive as mean/p50/p95, not one by one."""

    mean_token_latency_ms: float = 0.0
    p50_token_latency_ms: float = 0.0
    p95_token_latency_ms: float = 0.0


@dataclass
class RemoteToolCall(ToolCallRecord):
    """A tool call as the server reports it, with the id to answer it with."""

    id: str = ""


class EventAssembler:
    """Turns a stream's ChatEvent protos into Delta / RemoteToolCall / Final records, accumulating what the
    in-process Final carries but the wire's Final does not (texts, token ids, tool calls)."""

    def __init__(self) -> None:
        self.token_ids: list[int] = []
        self.reasoning_text = ""
        self.answer_text = ""
        self.tool_calls: list[ToolCallRecord] = []

    def __call__(self, e: pb.ChatEvent) -> Event:
        kind = e.WhichOneof("event")
        if kind == "delta":
            d = e.delta
            channel = CHANNEL_FROM_PROTO.get(d.channel, Channel.ANSWER)
            self.token_ids.extend(d.token_ids)
            if channel is Channel.REASONING:
                self.reasoning_text += d.text
            else:
                self.answer_text += d.text
            logprobs = [TokenLogprobs(lp.token_id, lp.logprob, [(t.token_id, t.logprob) for t in lp.top])
                        for lp in d.logprobs]
            return Delta(d.text, channel, list(d.token_ids), logprobs)
        if kind == "tool_call":
            c = e.tool_call
            record = RemoteToolCall(c.index, c.name, c.arguments_json, c.error or None, id=c.id)
            self.tool_calls.append(record)
            return record
        if kind == "final":
            f = e.final
            u, t = f.usage, f.timings
            return Final(
                finish_reason=FINISH_FROM_PROTO.get(f.finish_reason, FinishReason.ERROR),
                usage=Usage(u.prompt_tokens, u.reasoning_tokens, u.answer_tokens, u.forced_tokens, u.cached_prompt_tokens),
                timings=RemoteTimings(t.queue_wait_ms, t.time_to_first_token_ms, [], t.total_ms,
                                      t.mean_token_latency_ms, t.p50_token_latency_ms, t.p95_token_latency_ms),
                thinking_ended_by=THINKING_END_FROM_PROTO.get(f.thinking_ended_by),
                token_ids=list(self.token_ids), reasoning_text=self.reasoning_text, answer_text=self.answer_text,
                tool_calls=list(self.tool_calls), error=f.error_message or None,
                grammar=GRAMMAR_FROM_PROTO.get(f.grammar),
            )
        raise ValueError("ChatEvent: no event set (a server newer than this client?)")
