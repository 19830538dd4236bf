"""A small Python client for the nemotron-edge service, for on-device agents, robots and the CLI.

    from edge_runtime.client import EdgeClient

    with EdgeClient("unix:/run/nemotron-edge/edge.sock") as client:
        for event in client.chat("Plan a path to the dock.", max_thinking_tokens=256):
            ...  # Delta(text, channel "reasoning" | "answer"), RemoteToolCall, then one Final

Streams yield the same record types the in-process engine emits (`edge_runtime.engine.records.Delta`,
`ToolCallRecord`, `Final`), so display code works for both; the Final is rebuilt with the full reasoning
and answer text, token ids and tool calls, and its timings are `RemoteTimings` (the server's per-token
latency summary instead of every latency). Failed calls raise `EdgeError` with the gRPC status code and
the server's message, which names the bad field.

Addresses: `unix:/path` (a bare absolute path works too), `HOST:PORT`. `token` sends
`authorization: Bearer <token>`; `root_certificates` (PEM bytes) turns on TLS, with `certificate_chain`
and `private_key` for mutual TLS. Keepalive settings (service/options.py) keep long silent streams alive.
Imports neither the engine nor ONNX Runtime.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge_runtime.api import edge_pb2 as pb
from edge_runtime.api import edge_pb2_grpc as pb_grpc
from edge_runtime.service.options import CLIENT_OPTIONS
from edge_runtime.client.convert import (EventAssembler, message_to_proto, priority_to_proto,
                                       response_format_to_proto, sampling_to_proto, tool_to_proto)
from edge_runtime.engine.records import Event, Final

DEFAULT_ADDRESS = "unix:/run/nemotron-edge/edge.sock"


class EdgeError(Exception):
    """A call the server (or the transport) ended with an error status."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> "EdgeError":
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        return cls(code, details or "")


class EventStream:
    """The events of one Chat or Generate call, in order; iterate once. `cancel()` ends the call (the server
    frees the request's slot within one decode step); `final` is set once the Final arrived."""

    def __init__(self, call: grpc.Call):
        self._call = call
        self._assemble = EventAssembler()
        self.final: Final | None = None

    def __iter__(self) -> Iterator[Event]:
        try:
            for message in self._call:
                event = self._assemble(message)
                if isinstance(event, Final):
                    self.final = event
                yield event
        except grpc.RpcError as e:
            raise EdgeError.from_rpc(e) from None

    def cancel(self) -> None:
        self._call.cancel()

    def result(self) -> Final:
        """Read the stream to its end; the Final."""
        for _ in self:
            pass
        if self.final is None:
            raise EdgeError(grpc.StatusCode.INTERNAL, "the stream ended without a Final event")
        return self.final


def channel_target(address: str) -> str:
    return f"unix:{address}" if address.startswith("/") else address


class EdgeClient:
    def __init__(self, address: str = DEFAULT_ADDRESS, token: str | None = None, *,
                 root_certificates: bytes | None = None, certificate_chain: bytes | None = None,
                 private_key: bytes | None = None, options: Sequence[tuple[str, Any]] = ()):
        target = channel_target(address)
        opts = [*CLIENT_OPTIONS, *options]
        if root_certificates is not None:
            creds = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
            self.channel = grpc.secure_channel(target, creds, opts)
        else:
            self.channel = grpc.insecure_channel(target, opts)
        self.stub = pb_grpc.EdgeLMStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()

    # ---- streams ------------------------------------------------------------------------------------------

    def chat(self, messages: str | Sequence[dict[str, Any]], *, timeout: float | None = None, **options: Any) -> EventStream:
        """Stream a chat reply. `messages`: a user message's text, or OpenAI-style message dicts. `options`
        are `chat_request`'s keyword arguments; `timeout` (seconds) becomes the call's deadline."""
        request = self.chat_request(messages, **options)
        return EventStream(self.stub.Chat(request, timeout=timeout, metadata=self.metadata))

    @staticmethod
    def chat_request(messages: str | Sequence[dict[str, Any]], *, system: str | None = None,
                     tools: Sequence[dict[str, Any]] | None = None, tool_choice: str | None = None,
                     reasoning: bool | None = None, max_thinking_tokens: int | None = None,
                     thinking_grace_tokens: int | None = None, thinking_deadline_ms: float | None = None,
                     max_answer_tokens: int | None = None, thinking_close_text: str | None = None,
                     sampling: dict[str, Any] | None = None, max_tokens: int | None = None,
                     stop: Sequence[str] | None = None, stop_token_ids: Sequence[int] | None = None,
                     ignore_eos: bool = False, priority: str | None = None, request_id: str = "",
                     prefix_cache: bool = True, capture_after: Sequence[int] = (),
                     parallel_tool_calls: bool | None = None,
                     response_format: dict[str, Any] | None = None) -> pb.ChatRequest:
        """The ChatRequest proto. `system` prepends a system message; `sampling` holds SamplingParams fields
        (temperature, top_p, top_k, min_p, repetition_penalty, presence_penalty, frequency_penalty, seed,
        logprobs); `priority` is "realtime", "normal" or "background". None leaves a field to the server.
        `prefix_cache` False keeps the request out of the server's prefix cache; `capture_after` asks for
        snapshots after so many messages. `tool_choice` ("auto", "required", "none" or a tool's name),
        `parallel_tool_calls` and `response_format` (OpenAI's shapes, plus {"type": "regex", "regex": ...} and
        {"type": "lark", "lark": ...}) constrain the answer while it is decoded."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        messages = list(messages)
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        r = pb.ChatRequest(
            request_id=request_id, messages=[message_to_proto(m) for m in messages],
            tools=[tool_to_proto(t) for t in tools or []], tool_choice=tool_choice or "",
            sampling=sampling_to_proto(sampling, max_tokens=max_tokens, stop=list(stop or []),
                                       stop_token_ids=list(stop_token_ids or []), ignore_eos=ignore_eos),
            priority=priority_to_proto(priority), no_prefix_cache=not prefix_cache, capture_after=list(capture_after),
            response_format=response_format_to_proto(response_format),
        )
        if parallel_tool_calls is not None:
            r.parallel_tool_calls = parallel_tool_calls
        if reasoning is not None:
            r.reasoning = reasoning
        if thinking_close_text is not None:
            r.thinking_close_text = thinking_close_text
        for name, value in (("max_thinking_tokens", max_thinking_tokens), ("thinking_grace_tokens", thinking_grace_tokens),
                            ("thinking_deadline_ms", thinking_deadline_ms), ("max_answer_tokens", max_answer_tokens)):
            if value is not None:
                # uint32 on the wire; a command line may hand over 1500.0 for a millisecond count.
                setattr(r, name, round(value))
        return r

    def generate(self, prompt: str | Sequence[int], *, sampling: dict[str, Any] | None = None,
                 max_tokens: int | None = None, stop: Sequence[str] | None = None,
                 stop_token_ids: Sequence[int] | None = None, ignore_eos: bool = False,
                 priority: str | None = None, request_id: str = "", timeout: float | None = None) -> EventStream:
        """Stream a raw completion of `prompt` text or token ids (no chat template, no reasoning control)."""
        r = pb.GenerateRequest(
            request_id=request_id, priority=priority_to_proto(priority),
            sampling=sampling_to_proto(sampling, max_tokens=max_tokens, stop=list(stop or []),
                                       stop_token_ids=list(stop_token_ids or []), ignore_eos=ignore_eos),
        )
        if isinstance(prompt, str):
            r.prompt = prompt
        else:
            r.token_ids.ids.extend(prompt)
        return EventStream(self.stub.Generate(r, timeout=timeout, metadata=self.metadata))

    # ---- unary calls --------------------------------------------------------------------------------------

    def count_tokens(self, text: str | None = None, *, messages: Sequence[dict[str, Any]] | None = None,
                     tools: Sequence[dict[str, Any]] | None = None, reasoning: bool | None = None,
                     timeout: float | None = None) -> int:
        """Tokens in `text` (no template), or in `messages` rendered as Chat renders them."""
        if (text is None) == (messages is None):
            raise ValueError("count_tokens: give exactly one of text or messages")
        if text is not None:
            r = pb.CountTokensRequest(text=text)
        else:
            chat = pb.ChatInput(messages=[message_to_proto(m) for m in messages],
                                tools=[tool_to_proto(t) for t in tools or []])
            if reasoning is not None:
                chat.reasoning = reasoning
            r = pb.CountTokensRequest(chat=chat)
        return self._unary(self.stub.CountTokens, r, timeout).count

    def model_info(self, timeout: float | None = None) -> pb.ModelInfo:
        return self._unary(self.stub.GetModelInfo, pb.GetModelInfoRequest(), timeout)

    def status(self, timeout: float | None = None) -> pb.ServiceStatus:
        return self._unary(self.stub.GetStatus, pb.GetStatusRequest(), timeout)

    def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        """The health service's answer for `service` ("" = the whole server): "SERVING", "NOT_SERVING", ..."""
        response = self._unary(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_until_serving(self, timeout: float = 60.0, interval: float = 0.1) -> None:
        """Block until health reports SERVING (the server is up, loaded and warmed up)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                last = self.health(timeout=max(0.1, min(2.0, deadline - time.monotonic())))
                if last == "SERVING":
                    return
            except EdgeError as e:
                last = str(e)
            time.sleep(interval)
        raise EdgeError(grpc.StatusCode.UNAVAILABLE, f"not serving after {timeout:.0f} s ({last})")

    def _unary(self, method, request, timeout: float | None):
        try:
            return method(request, timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as e:
            raise EdgeError.from_rpc(e) from None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "EdgeClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
