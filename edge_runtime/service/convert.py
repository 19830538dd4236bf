"""The server's side of the wire: request protos become engine values (messages, tools, sampling, limits),
checked on the way (every problem is a `RequestError` naming the field, which the servicer answers with
INVALID_ARGUMENT); engine events (`Delta`, `ToolCallRecord`, `Final`) become `ChatEvent` protos. The
client's side is edge_runtime/client/convert.py; the enum tables both use are edge_runtime/api/mapping.py.

Limits checked here (the engine checks context length, vocabulary and sampling ranges itself):
  - `check_bounds`: a request's counts and characters against its RequestLimits (edge_runtime.engine.limits),
    before anything of it is parsed, rendered or tokenized;
  - roles are system, user, assistant, tool; only assistant messages carry tool calls;
  - JSON fields (tool parameters, tool-call arguments) must hold a JSON object;
  - at most MAX_STOP_STRINGS stop strings of 1..MAX_STOP_CHARS characters each (every generated token is
    matched against all of them, so their total size is a per-token cost), and a thinking close text of at
    most MAX_STOP_CHARS;
  - request_id is at most MAX_REQUEST_ID_CHARS printable characters (it is written to logs).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.api import edge_pb2 as pb
from edge_runtime.api.mapping import (CHANNEL_TO_PROTO, FINISH_TO_PROTO, GRAMMAR_TO_PROTO, PRIORITY_FROM_PROTO,
                                      SAMPLING_FIELDS, THINKING_END_TO_PROTO)
from edge_runtime.engine.answer_format import FormatKind, ResponseFormat
from edge_runtime.engine.chat import function_tools
from edge_runtime.engine.limits import RequestLimits, TextTally
from edge_runtime.engine.records import Delta, Event, Final, Priority, RequestError, Timings, ToolCallRecord

ROLES = ("system", "user", "assistant", "tool")
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1000
MAX_REQUEST_ID_CHARS = 128


# ---- server side: requests ---------------------------------------------------------------------------------


def priority_from_proto(value: int) -> Priority:
    try:
        return PRIORITY_FROM_PROTO[value]
    except KeyError:
        raise RequestError("priority", f"unknown value {value}; use PRIORITY_REALTIME, _NORMAL or _BACKGROUND") from None


def request_id_from_proto(value: str) -> str | None:
    if not value:
        return None
    if len(value) > MAX_REQUEST_ID_CHARS or not value.isprintable():
        raise RequestError("request_id", f"must be at most {MAX_REQUEST_ID_CHARS} printable characters")
    return value


def check_bounds(r: pb.ChatRequest | pb.GenerateRequest | pb.CountTokensRequest, limits: RequestLimits) -> None:
    """Refuse a request that carries more than `limits` allow, naming the field: cheap (counts and lengths),
    run before anything of it is parsed, rendered or tokenized."""
    tally = limits.tally()
    if isinstance(r, pb.ChatRequest):
        _check_chat_bounds(r, limits, tally, "")
        # Tokenized when the request is submitted, on the event loop: as short as a stop string.
        if len(r.thinking_close_text) > MAX_STOP_CHARS:
            raise RequestError("thinking_close_text", f"at most {MAX_STOP_CHARS} characters, got {len(r.thinking_close_text)}")
        tally.add("tool_choice", r.tool_choice)
        kind = r.response_format.WhichOneof("format")
        if kind in ("json_schema", "regex", "lark"):
            tally.add(f"response_format.{kind}", getattr(r.response_format, kind))
    elif isinstance(r, pb.GenerateRequest):
        tally.add("prompt", r.prompt)
    elif r.WhichOneof("input") == "text":
        tally.add("text", r.text)
    else:
        _check_chat_bounds(r.chat, limits, tally, "chat.")


def _check_chat_bounds(r: pb.ChatRequest | pb.ChatInput, limits: RequestLimits, tally: TextTally, prefix: str) -> None:
    limits.check_counts(len(r.messages) + sum(len(m.tool_calls) for m in r.messages), len(r.tools), prefix)
    for i, m in enumerate(r.messages):
        where = f"{prefix}messages[{i}]"
        for name in ("content", "name", "tool_call_id"):
            tally.add(f"{where}.{name}", getattr(m, name))
        for j, c in enumerate(m.tool_calls):
            for name in ("id", "name", "arguments_json"):
                tally.add(f"{where}.tool_calls[{j}].{name}", getattr(c, name))
    for i, t in enumerate(r.tools):
        for name in ("name", "description", "parameters_json"):
            tally.add(f"{prefix}tools[{i}].{name}", getattr(t, name))


def _json_object(text: str, where: str, empty: dict | None = None) -> dict[str, Any]:
    if not text and empty is not None:
        return empty
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: "[[[[..." nested beyond the parser's stack
        raise RequestError(where, f"is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(value, dict):
        raise RequestError(where, f"must be a JSON object, got {type(value).__name__}")
    return value


def messages_from_proto(messages) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if m.role not in ROLES:
            raise RequestError(f"{where}.role", f"must be one of {', '.join(ROLES)}, got {m.role[:40]!r}")
        message: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            if m.role != "assistant":
                raise RequestError(f"{where}.tool_calls", "only assistant messages carry tool calls")
            calls = []
            for j, c in enumerate(m.tool_calls):
                if not c.name:
                    raise RequestError(f"{where}.tool_calls[{j}].name", "is empty")
                args = _json_object(c.arguments_json, f"{where}.tool_calls[{j}].arguments_json", empty={})
                calls.append({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": args}})
            message["tool_calls"] = calls
        if m.HasField("tool_call_id"):
            message["tool_call_id"] = m.tool_call_id
        if m.HasField("name"):
            message["name"] = m.name
        out.append(message)
    return out


def tools_from_proto(tools) -> list[dict[str, Any]] | None:
    return function_tools([(t.name, t.description,
                            _json_object(t.parameters_json, f"tools[{i}].parameters_json") if t.parameters_json else None)
                           for i, t in enumerate(tools)])


@dataclass
class OutputLimits:
    """The SamplingParams proto's fields that are not about picking a token."""

    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False


def response_format_from_proto(f: pb.ResponseFormat) -> ResponseFormat:
    kind = f.WhichOneof("format")
    if kind is None or (kind == "json_object" and not f.json_object):
        return ResponseFormat()
    if kind == "json_schema":
        return ResponseFormat(FormatKind.JSON_SCHEMA, _json_object(f.json_schema, "response_format.json_schema"))
    return ResponseFormat(FormatKind(kind), getattr(f, kind) if kind != "json_object" else None)


def sampling_overrides(s: pb.SamplingParams) -> dict[str, Any]:
    """The sampling fields the request set, as engine SamplingParams keyword arguments (the engine checks
    their ranges, SamplingParams.validate)."""
    return {name: getattr(s, name) for name in SAMPLING_FIELDS if s.HasField(name)}


def output_limits(s: pb.SamplingParams) -> OutputLimits:
    if len(s.stop) > MAX_STOP_STRINGS:
        raise RequestError("sampling.stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(s.stop)}")
    for i, stop in enumerate(s.stop):
        if not 1 <= len(stop) <= MAX_STOP_CHARS:
            raise RequestError(f"sampling.stop[{i}]", f"must have 1 to {MAX_STOP_CHARS} characters, got {len(stop)}")
    return OutputLimits(
        max_tokens=s.max_tokens if s.HasField("max_tokens") else None,
        stop=list(s.stop), stop_token_ids=list(s.stop_token_ids), ignore_eos=s.ignore_eos,
    )


# ---- server side: events -----------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timings_to_proto(t: Timings) -> pb.Timings:
    lat = t.token_latencies_ms
    return pb.Timings(
        queue_wait_ms=t.queue_wait_ms, time_to_first_token_ms=t.time_to_first_token_ms,
        mean_token_latency_ms=statistics.fmean(lat) if lat else 0.0,
        p50_token_latency_ms=statistics.median(lat) if lat else 0.0,
        p95_token_latency_ms=_percentile(lat, 0.95) if lat else 0.0,
        total_ms=t.total_ms,
    )


def final_to_proto(f: Final, chat: bool) -> pb.Final:
    """`chat`: False for Generate, where there is no thinking block (THINKING_ENDED_BY_DISABLED). A chat
    stream that ended while still thinking reports THINKING_ENDED_BY_UNSPECIFIED."""
    u = f.usage
    ended = THINKING_END_TO_PROTO.get(f.thinking_ended_by,
                                      pb.THINKING_ENDED_BY_UNSPECIFIED if chat else pb.THINKING_ENDED_BY_DISABLED)
    return pb.Final(
        usage=pb.Usage(prompt_tokens=u.prompt_tokens, reasoning_tokens=u.reasoning_tokens,
                       answer_tokens=u.answer_tokens, forced_tokens=u.forced_tokens,
                       completion_tokens=u.completion_tokens, cached_prompt_tokens=u.cached_prompt_tokens),
        thinking_ended_by=ended,
        finish_reason=FINISH_TO_PROTO[f.finish_reason],
        error_message=f.error or "",
        timings=timings_to_proto(f.timings),
        grammar=GRAMMAR_TO_PROTO.get(f.grammar, pb.GRAMMAR_OUTCOME_UNSPECIFIED),
    )


def event_to_proto(event: Event, request_id: str, chat: bool) -> pb.ChatEvent:
    if isinstance(event, Delta):
        return pb.ChatEvent(delta=pb.Delta(
            text=event.text, channel=CHANNEL_TO_PROTO[event.channel], token_ids=event.token_ids,
            logprobs=[pb.TokenLogprob(token_id=lp.token_id, logprob=lp.logprob,
                                      top=[pb.TopLogprob(token_id=t, logprob=p) for t, p in lp.top])
                      for lp in event.logprobs],
        ))
    if isinstance(event, ToolCallRecord):
        return pb.ChatEvent(tool_call=pb.ToolCallEvent(
            index=event.index, name=event.name, arguments_json=event.arguments_json, error=event.error or "",
            id=tool_call_id(request_id, event.index),
        ))
    return pb.ChatEvent(final=final_to_proto(event, chat))


def tool_call_id(request_id: str, index: int) -> str:
    return f"{request_id}-call{index}"
