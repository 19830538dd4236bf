"""Between the wire and the engine: protobuf messages of edge.proto <-> the runtime's records.

Server side: request protos become engine values (messages, tools, sampling, limits), checked on the way (every problem is a `RequestError` naming the field, which the servicer answers with
INVALID_ARGUMENT); engine events (`Delta`, `ToolCallRecord`, `Final`) become `ChatEvent` protos.
Client side: plain Python values (message dicts as OpenAI-style chat APIs write them) become protos, and
`ChatEvent` protos become the same `Delta` / `ToolCallRecord` / `Final` records the in-process engine
emits, so one display function serves both. Nothing here imports the engine or ONNX Runtime: the client
uses this module too.

Limits checked here (the engine checks context length, vocabulary and sampling ranges itself):
  - `check_bounds`: a request's counts and characters against its RequestLimits (edge_runtime.engine.limits),
    before anything of it is parsed, rendered or tokenized;
  - roles are system, user, assistant, tool; only assistant messages carry tool calls;
  - JSON fields (tool parameters, tool-call arguments) must hold a JSON object;
  - at most MAX_STOP_STRINGS stop strings of 1..MAX_STOP_CHARS characters each (every generated token is
    matched against all of them, so their total size is a per-token cost), and a thinking close text of at
    most MAX_STOP_CHARS;
  - request_id is at most MAX_REQUEST_ID_CHARS printable characters (it is written to logs);
  - a temperature in (0, MIN_TEMPERATURE) samples greedily; repetition_penalty is in REPETITION_PENALTY_RANGE.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field, replace
from typing import Any

from edge_runtime.api import edge_pb2 as pb
from edge_runtime.engine.records import Delta, Event, Final, Priority, RequestError, Timings, ToolCallRecord, Usage
from edge_runtime.engine.limits import RequestLimits
from edge_runtime.engine.sampler import SamplingParams, TokenLogprobs

ROLES = ("system", "user", "assistant", "tool")
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1000
MAX_REQUEST_ID_CHARS = 128
# Sampling values the engine's validation accepts but its float arithmetic does not survive: logits divided
# by a temperature of 1e-310 overflow float64, a repetition penalty of 1e-40 overflows float32, and the NaNs
# that follow crash the sampler. A positive temperature below MIN_TEMPERATURE is greedy (its limit, and
# vLLM's cut-off); repetition penalties outside the range are refused.
MIN_TEMPERATURE = 1e-5
REPETITION_PENALTY_RANGE = (0.01, 100.0)

_PRIORITY = {
    pb.PRIORITY_UNSPECIFIED: Priority.NORMAL,
    pb.PRIORITY_REALTIME: Priority.REALTIME,
    pb.PRIORITY_NORMAL: Priority.NORMAL,
    pb.PRIORITY_BACKGROUND: Priority.BACKGROUND,
}
_PRIORITY_TO_PROTO = {Priority.REALTIME: pb.PRIORITY_REALTIME, Priority.NORMAL: pb.PRIORITY_NORMAL,
                      Priority.BACKGROUND: pb.PRIORITY_BACKGROUND}
_CHANNEL = {"reasoning": pb.CHANNEL_REASONING, "answer": pb.CHANNEL_ANSWER, "tool_call": pb.CHANNEL_TOOL_CALL}
_CHANNEL_NAME = {v: k for k, v in _CHANNEL.items()}
_FINISH = {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH,
           "stop_sequence": pb.FINISH_REASON_STOP_SEQUENCE, "cancelled": pb.FINISH_REASON_CANCELLED,
           "deadline": pb.FINISH_REASON_CANCELLED, "error": pb.FINISH_REASON_ERROR}
_FINISH_NAME = {pb.FINISH_REASON_STOP: "stop", pb.FINISH_REASON_LENGTH: "length",
                pb.FINISH_REASON_STOP_SEQUENCE: "stop_sequence", pb.FINISH_REASON_CANCELLED: "cancelled",
                pb.FINISH_REASON_ERROR: "error"}
_ENDED_BY = {"model": pb.THINKING_ENDED_BY_MODEL, "token_budget": pb.THINKING_ENDED_BY_TOKEN_BUDGET,
             "deadline": pb.THINKING_ENDED_BY_DEADLINE, "disabled": pb.THINKING_ENDED_BY_DISABLED}
_ENDED_BY_NAME = {v: k for k, v in _ENDED_BY.items()}

# proto SamplingParams field -> engine SamplingParams field, for the optional scalars.
_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                    "frequency_penalty", "seed", "logprobs")


# ---- server side: requests ---------------------------------------------------------------------------------


def priority_from_proto(value: int) -> Priority:
    try:
        return _PRIORITY[value]
    except KeyError:
        raise RequestError("priority", f"unknown value {value}; use PRIORITY_REALTIME, _NORMAL or _BACKGROUND") from None


def request_id_from_proto(value: str) -> str | None:
    if not value:
        return None
    if len(value) > MAX_REQUEST_ID_CHARS or not value.isprintable():
        raise RequestError("request_id", f"must be at most {MAX_REQUEST_ID_CHARS} printable characters")
    return value


class _TextTally:
    """The characters of a request's text fields, added up field by field against max_text_chars."""

    def __init__(self, limits: RequestLimits):
        self.limit, self.total = limits.max_text_chars, 0

    def add(self, where: str, text: str) -> None:
        self.total += len(text)
        if self.total > self.limit:
            raise RequestError(where, f"the request's text reaches {self.total} characters here; at most "
                                      f"{self.limit} in all ([limits] max_text_chars)")


def check_bounds(r: pb.ChatRequest | pb.GenerateRequest | pb.CountTokensRequest, limits: RequestLimits) -> None:
    """Refuse a request that carries more than `limits` allow, naming the field: cheap (counts and lengths),
    run before anything of it is parsed, rendered or tokenized."""
    tally = _TextTally(limits)
    if isinstance(r, pb.ChatRequest):
        _check_chat_bounds(r, limits, tally, "")
        # Tokenized when the request is submitted, on the event loop: as short as a stop string.
        if len(r.thinking_close_text) > MAX_STOP_CHARS:
            raise RequestError("thinking_close_text", f"at most {MAX_STOP_CHARS} characters, got {len(r.thinking_close_text)}")
        tally.add("tool_choice", r.tool_choice)
    elif isinstance(r, pb.GenerateRequest):
        tally.add("prompt", r.prompt)
    elif r.WhichOneof("input") == "text":
        tally.add("text", r.text)
    else:
        _check_chat_bounds(r.chat, limits, tally, "chat.")


def _check_chat_bounds(r: pb.ChatRequest | pb.ChatInput, limits: RequestLimits, tally: _TextTally, prefix: str) -> None:
    items = len(r.messages) + sum(len(m.tool_calls) for m in r.messages)
    if items > limits.max_messages:
        raise RequestError(f"{prefix}messages", f"{items} messages and tool calls; at most {limits.max_messages} "
                                                "([limits] max_messages)")
    if len(r.tools) > limits.max_tools:
        raise RequestError(f"{prefix}tools", f"{len(r.tools)} tools; at most {limits.max_tools} ([limits] max_tools)")
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
    if not tools:
        return None
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, t in enumerate(tools):
        if not t.name:
            raise RequestError(f"tools[{i}].name", "is empty")
        if t.name in seen:
            raise RequestError(f"tools[{i}].name", f"{t.name[:40]!r} is given twice")
        seen.add(t.name)
        params = _json_object(t.parameters_json, f"tools[{i}].parameters_json", empty={"type": "object", "properties": {}})
        out.append({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": params}})
    return out


@dataclass
class OutputLimits:
    """The SamplingParams proto's fields that are not about picking a token."""

    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False


def sampling_overrides(s: pb.SamplingParams) -> dict[str, Any]:
    """The sampling fields the request set, as engine SamplingParams keyword arguments."""
    values = {name: getattr(s, name) for name in _SAMPLING_FIELDS if s.HasField(name)}
    if "temperature" in values:
        # The reasoning-off default is greedy=True; an explicit temperature decides greediness instead.
        values["greedy"] = False
    return values


def apply_sampling(base: SamplingParams, overrides: dict[str, Any]) -> SamplingParams:
    params = replace(base, **overrides)
    if 0.0 < params.temperature < MIN_TEMPERATURE:
        params = replace(params, temperature=0.0, greedy=True)
    try:
        params.validate()
    except ValueError as e:
        raise RequestError("sampling", str(e)) from None
    low, high = REPETITION_PENALTY_RANGE
    if not low <= params.repetition_penalty <= high:
        raise RequestError("sampling", f"repetition_penalty: must be in [{low}, {high}] (1 disables it), "
                                       f"got {params.repetition_penalty!r}")
    return params


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
    ended = _ENDED_BY.get(f.thinking_ended_by or "", pb.THINKING_ENDED_BY_UNSPECIFIED if chat else pb.THINKING_ENDED_BY_DISABLED)
    return pb.Final(
        usage=pb.Usage(prompt_tokens=u.prompt_tokens, reasoning_tokens=u.reasoning_tokens,
                       answer_tokens=u.answer_tokens, forced_tokens=u.forced_tokens,
                       completion_tokens=u.completion_tokens),
        thinking_ended_by=ended,
        finish_reason=_FINISH.get(f.finish_reason, pb.FINISH_REASON_ERROR),
        error_message=f.error or "",
        timings=timings_to_proto(f.timings),
    )


def event_to_proto(event: Event, request_id: str, chat: bool) -> pb.ChatEvent:
    if isinstance(event, Delta):
        return pb.ChatEvent(delta=pb.Delta(
            text=event.text, channel=_CHANNEL.get(event.channel, pb.CHANNEL_ANSWER), token_ids=event.token_ids,
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


# ---- client side ---------------------------------------------------------------------------------------------


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


def sampling_to_proto(values: dict[str, Any] | None = None, *, max_tokens: int | None = None,
                      stop: list[str] | None = None, stop_token_ids: list[int] | None = None,
                      ignore_eos: bool = False) -> pb.SamplingParams:
    s = pb.SamplingParams(stop=stop or [], stop_token_ids=stop_token_ids or [], ignore_eos=ignore_eos)
    for name, value in (values or {}).items():
        if name not in _SAMPLING_FIELDS:
            raise ValueError(f"sampling: unknown field {name!r} (known: {', '.join(_SAMPLING_FIELDS)})")
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
    return _PRIORITY_TO_PROTO[Priority(priority)]


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
            channel = _CHANNEL_NAME.get(d.channel, "answer")
            self.token_ids.extend(d.token_ids)
            if channel == "reasoning":
                self.reasoning_text += d.text
            elif channel == "answer":
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
                finish_reason=_FINISH_NAME.get(f.finish_reason, "error"),
                usage=Usage(u.prompt_tokens, u.reasoning_tokens, u.answer_tokens, u.forced_tokens),
                timings=RemoteTimings(t.queue_wait_ms, t.time_to_first_token_ms, [], t.total_ms,
                                      t.mean_token_latency_ms, t.p50_token_latency_ms, t.p95_token_latency_ms),
                thinking_ended_by=_ENDED_BY_NAME.get(f.thinking_ended_by),
                token_ids=list(self.token_ids), reasoning_text=self.reasoning_text, answer_text=self.answer_text,
                tool_calls=list(self.tool_calls), error=f.error_message or None,
            )
        raise ValueError("ChatEvent: no event set (a server newer than this client?)")
