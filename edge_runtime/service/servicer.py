"""The EdgeLM gRPC servicer: Chat, Generate, CountTokens, GetModelInfo, GetStatus over one `Engine`.

Streams: the engine delivers events on its own thread into the RPC's `EventInbox`, and the RPC yields them
as ChatEvent protos paced by `stream_interval_s` (edge_runtime.service.event_stream): what has queued goes out at
most once per interval, the deltas of one channel merged into one message, so fewer messages cost the
server and the client less CPU, never tokens. When the call ends
early (the client cancels, its deadline passes, the connection drops) grpc.aio cancels the handler
coroutine, and its `finally` cancels the engine request: the engine frees the slot at the start of its
next step, i.e. within one decode step.

Before the engine: a call is first checked against its RequestLimits (edge_runtime.engine.limits: counts
and characters, on the event loop, cheap; its size was checked before it was even parsed,
service/request_bytes.py), then prepared in stages, each on a worker thread: render (the chat template; JSON
of tools and tool calls), tokenize, then submit to the engine. Before each stage the call's deadline is
checked, and a call that ends meanwhile (cancelled, deadline, connection lost: grpc.aio cancels the handler)
starts no later stage; a render in progress stops at its next step. Tokenizing releases the GIL
(edge_runtime.engine.token_ids), so neither stage holds up the event loop or the engine: a small call sent while a
large one is being prepared is answered first. Each stage is counted and timed in the metrics.

Deadlines: a call's remaining time (`context.time_remaining()`) becomes the engine request's deadline on
the engine's clock (time.monotonic), so the scheduler orders by it and the engine ends the request when it
passes (the call then ends DEADLINE_EXCEEDED). A chat request that sets no thinking deadline of its own
gets half the remaining time as its thinking deadline (or the server's default, if that is shorter): the
model then closes its reasoning with half the time left for the answer, instead of thinking until the
deadline kills the call with no answer at all.

Status codes (messages name the field):
  INVALID_ARGUMENT    bad request: empty messages, prompt too long, sampling out of range, unknown tool in
                      tool_choice, token ids outside the vocabulary, malformed JSON, more text, messages or
                      tools than [limits] allow, a conversation the chat template cannot render within its
                      step budget, ...
  RESOURCE_EXHAUSTED  the waiting queue is full (ServiceConfig.max_queue); retry with backoff. Or the request is
                      larger than [limits] max_request_bytes (the message says so): do not retry it
  UNAVAILABLE         the model is loading, or the server is draining for shutdown
  DEADLINE_EXCEEDED   the call's deadline passed before the reply was complete
  CANCELLED           the client cancelled (seen by the client only)
  FAILED_PRECONDITION the bundle lacks what the request needs (a tokenizer or chat template)
  UNAUTHENTICATED     missing or wrong bearer token (service/auth.py)
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Protocol, TypeVar

import grpc
import psutil

from edge_runtime.api import edge_pb2 as pb
from edge_runtime.api import edge_pb2_grpc as pb_grpc
from edge_runtime.engine.chat import Chat, ChatRequest
from edge_runtime.engine.engine import Engine
from edge_runtime.engine.limits import MAX_MESSAGE_BYTES, RequestLimits
from edge_runtime.engine.loading import LoadedEngine
from edge_runtime.engine.records import (EngineUnavailableError, Final, FinishReason, GenerationRequest,
                                         QueueFullError, RequestError, SamplingParams, new_request_id)
from edge_runtime.engine.token_ids import encode
from edge_runtime.service.convert import (check_bounds, event_to_proto, messages_from_proto, output_limits,
                                          priority_from_proto, request_id_from_proto, response_format_from_proto,
                                          sampling_overrides, tools_from_proto)
from edge_runtime.service.event_stream import EventInbox, paced_events
from edge_runtime.service.metrics import ServiceMetrics

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EdgeLM"].full_name
# Text of tokens the template and the output processor treat specially (reported by GetModelInfo).
_SPECIAL_TEXTS = ("<think>", "</think>", "<TOOLCALL>", "</TOOLCALL>", "<TOOL_RESPONSE>", "</TOOL_RESPONSE>",
                  "<SPECIAL_10>", "<SPECIAL_11>", "<SPECIAL_12>")
# A time_remaining beyond this is "no deadline" (some gRPC versions report a huge number, not None).
_NO_DEADLINE_S = 1e8
T = TypeVar("T")


class Stage(enum.Enum):
    """The work a call needs before the engine takes it, in order."""

    RENDER = "render"
    TOKENIZE = "tokenize"
    SUBMIT = "submit"


class ServingState(enum.Enum):
    LOADING = "loading"
    SERVING = "serving"
    DRAINING = "draining"


class TelemetryReader(Protocol):
    """What GetStatus reads board figures from (nemotron_jetson.telemetry.TelemetrySource fits)."""

    def latest(self) -> Any: ...


class _Abort(Exception):
    """Raised inside the servicer to end the call with `code`; turned into context.abort at the RPC's edge."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class EdgeService(pb_grpc.EdgeLMServicer):
    def __init__(self, metrics: ServiceMetrics | None = None, telemetry: TelemetryReader | None = None,
                 stream_interval_s: float = 0.0):
        self.metrics = metrics
        self.telemetry = telemetry
        self.stream_interval_s = stream_interval_s
        self.state = ServingState.LOADING
        self.engine: Engine | None = None
        self.chat: Chat | None = None
        self.limits: RequestLimits | None = None
        self.started = time.monotonic()
        self.active_streams = 0
        self._idle: asyncio.Event | None = None
        self._model_info: pb.ModelInfo | None = None

    # ---- lifecycle (called by server.py) ----------------------------------------------------------------

    def attach(self, loaded: LoadedEngine) -> None:
        """The engine is loaded and warmed up: start serving it, requests bounded by its limits."""
        engine = loaded.engine
        self.engine, self.chat, self.limits = engine, loaded.chat, loaded.limits
        self._model_info = _model_info(engine)
        if self.metrics is not None:
            self.metrics.attach(engine.status, engine.plan.budget_bytes if engine.plan else 0)
        self.state = ServingState.SERVING

    def max_request_bytes(self) -> int:
        """The largest request accepted now: the limit for the model once loaded, gRPC's before."""
        return self.limits.max_request_bytes if self.limits is not None else MAX_MESSAGE_BYTES

    def begin_drain(self) -> None:
        self.state = ServingState.DRAINING
        if self.engine is not None:
            self.engine.stop_accepting()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no stream is running; False when `timeout` passed first."""
        if self.active_streams == 0:
            return True
        self._idle = self._idle or asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    @contextlib.contextmanager
    def streaming(self) -> Iterator[None]:
        """Count one running request of either front end (gRPC or HTTP): the drain waits for them."""
        self.active_streams += 1
        try:
            yield
        finally:
            self.active_streams -= 1
            if self.active_streams == 0 and self._idle is not None:
                self._idle.set()

    def status_line(self) -> str:
        """One line for systemd's STATUS=."""
        if self.state is not ServingState.SERVING or self.engine is None:
            extra = f", {self.active_streams} stream(s) left" if self.state is ServingState.DRAINING else ""
            return f"{self.state.value}{extra}"
        status = self.engine.status()
        return f"serving: {status.slots_busy}/{status.slots_total} slots busy, queue {status.queue_depth}"

    # ---- RPCs ---------------------------------------------------------------------------------------------

    def Chat(self, request: pb.ChatRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ChatEvent]:
        return self._stream("Chat", context, lambda: self._prepare_chat(request, context), chat=True)

    def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ChatEvent]:
        return self._stream("Generate", context, lambda: self._prepare_generate(request, context), chat=False)

    async def CountTokens(self, request: pb.CountTokensRequest,
                          context: grpc.aio.ServicerContext) -> pb.CountTokensResponse:
        try:
            self._require_serving()
            count = await self._count_tokens(request, context)
        except asyncio.CancelledError:
            self._ended_early("CountTokens", context)
            raise
        except _Abort as a:
            await self._abort(context, "CountTokens", a.code, a.message)
        except RequestError as e:
            await self._abort(context, "CountTokens", grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return pb.CountTokensResponse(count=count)

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        try:
            self._require_serving()
        except _Abort as a:
            await self._abort(context, "GetModelInfo", a.code, a.message)
        return self._model_info

    async def GetStatus(self, request: pb.GetStatusRequest, context: grpc.aio.ServicerContext) -> pb.ServiceStatus:
        try:
            self._require_serving()
        except _Abort as a:
            await self._abort(context, "GetStatus", a.code, a.message)
        return self._status()

    # ---- streaming ----------------------------------------------------------------------------------------

    async def _stream(self, rpc: str, context: grpc.aio.ServicerContext,
                      prepare: Callable[[], Awaitable[GenerationRequest]], chat: bool) -> AsyncIterator[pb.ChatEvent]:
        """One call's stream: prepare the engine request (stages on worker threads), submit it, and yield its
        events as protos, paced; a call that ends early cancels its request."""
        try:
            self._require_serving()
        except _Abort as a:
            await self._abort(context, rpc, a.code, a.message)
        engine, handle = self.engine, None
        with self.streaming():
            try:
                try:
                    request = await prepare()
                    self._check_deadline(context, Stage.SUBMIT)
                    with self.metrics.stage(Stage.SUBMIT.value) if self.metrics is not None else contextlib.nullcontext():
                        inbox = EventInbox(asyncio.get_running_loop())
                        handle = engine.submit(request, inbox.put)
                except _Abort as a:
                    await self._abort(context, rpc, a.code, a.message)
                except QueueFullError as e:
                    await self._abort(context, rpc, grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
                except EngineUnavailableError as e:
                    await self._abort(context, rpc, grpc.StatusCode.UNAVAILABLE, str(e))
                except ValueError as e:  # RequestError, or a value the thinking stage cannot use
                    await self._abort(context, rpc, grpc.StatusCode.INVALID_ARGUMENT, str(e))
                except asyncio.CancelledError:  # the call ended while it was prepared; no later stage starts
                    self._ended_early(rpc, context)
                    raise
                async with contextlib.aclosing(paced_events(inbox, self.stream_interval_s)) as events:
                    async for event in events:  # ends after the Final
                        if isinstance(event, Final):
                            if event.finish_reason is FinishReason.DEADLINE:
                                await self._abort(context, rpc, grpc.StatusCode.DEADLINE_EXCEEDED,
                                                  "deadline exceeded before the reply was complete")
                            if self.metrics is not None:
                                self.metrics.finished(rpc, event)
                        yield event_to_proto(event, request.request_id, chat)
            finally:
                if handle is not None and not handle.done:
                    # The call ended early (cancelled, deadline, connection lost): free the slot.
                    handle.cancel()
                    engine.wake()
                    self._ended_early(rpc, context)

    def _ended_early(self, rpc: str, context: grpc.aio.ServicerContext) -> None:
        """Count a call that ended before its reply was complete: its deadline passed, or the client left."""
        if self.metrics is not None:
            left = _remaining(context)
            self.metrics.refused(rpc, "DEADLINE_EXCEEDED" if left is not None and left <= 0 else "CANCELLED")

    async def _stage(self, context: grpc.aio.ServicerContext, stage: Stage, work: Callable[[threading.Event], T]) -> T:
        """Run one stage of preparing a call on a worker thread, unless the call's deadline has passed. When the
        call ends meanwhile, grpc.aio cancels the handler at this await, so no later stage starts, and `work`
        sees its stop event set (a render stops at its next step)."""
        self._check_deadline(context, stage)
        stop = threading.Event()

        def run() -> T:
            if self.metrics is None:
                return work(stop)
            with self.metrics.stage(stage.value):
                return work(stop)

        try:
            return await asyncio.to_thread(run)
        except asyncio.CancelledError:
            stop.set()
            raise

    @staticmethod
    def _check_deadline(context: grpc.aio.ServicerContext, stage: Stage) -> None:
        left = _remaining(context)
        if left is not None and left <= 0:
            raise _Abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded before {stage.value}")

    async def _prepare_chat(self, r: pb.ChatRequest, context: grpc.aio.ServicerContext) -> GenerationRequest:
        chat = self._require_chat("bundle")
        check_bounds(r, self.limits)
        remaining = _remaining(context)
        chat_request, prompt = await self._stage(context, Stage.RENDER,
                                                 lambda stop: self._render_chat(r, remaining, stop))
        return await self._stage(context, Stage.TOKENIZE, lambda _: chat.request(chat_request, prompt))

    def _render_chat(self, r: pb.ChatRequest, remaining: float | None,
                     stop: threading.Event) -> tuple[ChatRequest, str]:
        chat_request = self._chat_request(r, remaining)
        return chat_request, self.chat.render(chat_request, stop)

    def _chat_request(self, r: pb.ChatRequest, remaining: float | None) -> ChatRequest:
        """The chat layer's request for `r`, whole: the call's deadline on the engine's clock, and unless the
        request sets its own, half the remaining time as its thinking deadline (see the module docstring)."""
        if not r.messages:
            raise RequestError("messages", "is empty")
        opt = lambda name: getattr(r, name) if r.HasField(name) else None
        limits = output_limits(r.sampling)
        thinking_deadline_ms = opt("thinking_deadline_ms")
        if thinking_deadline_ms is None and remaining is not None:
            thinking_deadline_ms = _thinking_deadline_ms(remaining, self.chat.defaults.thinking_deadline_ms)
        return ChatRequest(
            messages=messages_from_proto(r.messages),
            tools=tools_from_proto(r.tools),
            tool_choice=r.tool_choice or "auto",
            parallel_tool_calls=r.parallel_tool_calls if r.HasField("parallel_tool_calls") else True,
            response_format=response_format_from_proto(r.response_format),
            reasoning=opt("reasoning"),
            max_thinking_tokens=opt("max_thinking_tokens"),
            thinking_grace_tokens=opt("thinking_grace_tokens"),
            thinking_deadline_ms=thinking_deadline_ms,
            max_answer_tokens=opt("max_answer_tokens"),
            thinking_close_text=opt("thinking_close_text"),
            sampling=sampling_overrides(r.sampling),
            max_tokens=limits.max_tokens,
            stop_strings=limits.stop,
            stop_token_ids=limits.stop_token_ids,
            ignore_eos=limits.ignore_eos,
            priority=priority_from_proto(r.priority),
            deadline=self.engine.clock() + remaining if remaining is not None else None,
            request_id=request_id_from_proto(r.request_id),
            prefix_cache=not r.no_prefix_cache,
            capture_after=list(r.capture_after),
        )

    async def _prepare_generate(self, r: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> GenerationRequest:
        engine = self.engine
        kind = r.WhichOneof("input")
        if kind is None:
            raise RequestError("input", "set prompt (text) or token_ids")
        check_bounds(r, self.limits)
        limits = output_limits(r.sampling)
        if kind == "prompt" and engine.tokenizer is None:
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, "prompt: this bundle has no tokenizer; send token_ids")
        if limits.stop and engine.tokenizer is None:
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, "sampling.stop: this bundle has no tokenizer to match text")
        request_id = request_id_from_proto(r.request_id)
        remaining = _remaining(context)
        if kind == "prompt":
            # The text's own tokens, no BOS added: what the caller wrote is exactly what the model sees.
            ids = await self._stage(context, Stage.TOKENIZE, lambda _: encode(engine.tokenizer, r.prompt))
        else:
            ids = list(r.token_ids.ids)
        return GenerationRequest(
            prompt_ids=ids,
            # Reasoning is off for raw completion: the model card's reasoning-off default, greedy.
            sampling=SamplingParams.model_card_default(False).override(sampling_overrides(r.sampling)),
            max_tokens=limits.max_tokens,
            stop_strings=limits.stop,
            stop_token_ids=limits.stop_token_ids,
            ignore_eos=limits.ignore_eos,
            priority=priority_from_proto(r.priority),
            deadline=engine.clock() + remaining if remaining is not None else None,
            request_id=request_id or new_request_id(),
        )

    # ---- unary helpers ------------------------------------------------------------------------------------

    async def _count_tokens(self, r: pb.CountTokensRequest, context: grpc.aio.ServicerContext) -> int:
        kind = r.WhichOneof("input")
        if kind is None:
            raise RequestError("input", "set text or chat")
        if kind == "text":
            if self.engine.tokenizer is None:
                raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, "text: this bundle has no tokenizer")
            check_bounds(r, self.limits)
            text = r.text
        else:
            self._require_chat("chat")
            check_bounds(r, self.limits)
            if not r.chat.messages:
                raise RequestError("chat.messages", "is empty")
            text = await self._stage(context, Stage.RENDER, lambda stop: self._render_count(r.chat, stop))
        return len(await self._stage(context, Stage.TOKENIZE, lambda _: encode(self.engine.tokenizer, text)))

    def _render_count(self, r: pb.ChatInput, stop: threading.Event) -> str:
        try:
            request = ChatRequest(messages=messages_from_proto(r.messages), tools=tools_from_proto(r.tools),
                                  reasoning=r.reasoning if r.HasField("reasoning") else None)
            return self.chat.render(request, stop)
        except RequestError as e:
            raise RequestError(f"chat.{e.field}", str(e).split(": ", 1)[-1]) from None

    def _require_chat(self, field: str) -> Chat:
        if self.chat is None:
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION,
                         f"{field}: this bundle has no tokenizer or chat template; use Generate with token_ids")
        return self.chat

    def _status(self) -> pb.ServiceStatus:
        status = self.engine.status()
        plan = self.engine.plan
        memory = pb.MemoryStatus(
            state_bytes_in_use=status.state_bytes_per_slot * status.slots_busy,
            used_bytes=status.held_bytes,
            working_bytes=status.working_bytes,
            process_rss_bytes=psutil.Process().memory_info().rss,
            weight_bytes=status.weight_bytes,
        )
        if plan is not None:
            memory.budget_bytes = plan.budget_bytes
            memory.fixed_state_bytes_per_sequence = plan.fixed_state_bytes_per_sequence
            memory.kv_bytes_per_token = plan.kv_bytes_per_token
            memory.overhead_bytes = plan.overhead_bytes
            memory.planned_context = plan.context
            memory.planned_max_sequences = plan.max_sequences
        telemetry = {"engine_steps": float(status.steps), "tokens_generated": float(status.tokens_generated),
                     "active_streams": float(self.active_streams)}
        telemetry.update(_telemetry(self.telemetry))
        cache = status.prefix_cache
        return pb.ServiceStatus(
            memory=memory, slots_busy=status.slots_busy, slots_free=status.slots_total - status.slots_busy,
            queue_depth=status.queue_depth, decode_tokens_per_second=status.decode_tokens_per_second,
            uptime_s=time.monotonic() - self.started, telemetry=telemetry,
            prefix_cache=None if cache is None else pb.PrefixCacheStatus(
                budget_bytes=self.engine.cache.budget, bytes=cache.bytes, entries=cache.entries,
                hits=cache.hits, misses=cache.misses, tokens_saved=cache.tokens_saved, evictions=cache.evictions,
                skipped=cache.skipped),
        )

    def _require_serving(self) -> None:
        if self.state is ServingState.LOADING:
            raise _Abort(grpc.StatusCode.UNAVAILABLE, "the model is loading; retry when health reports SERVING")
        if self.state is ServingState.DRAINING:
            raise _Abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down and accepts no new calls")

    async def _abort(self, context: grpc.aio.ServicerContext, rpc: str, code: grpc.StatusCode, message: str):
        if self.metrics is not None:
            self.metrics.refused(rpc, code.name)
        await context.abort(code, message)


# ---- helpers ----------------------------------------------------------------------------------------------


def _remaining(context: grpc.aio.ServicerContext) -> float | None:
    left = context.time_remaining()
    if left is None or not math.isfinite(left) or left > _NO_DEADLINE_S:
        return None
    return max(0.0, left)


def _thinking_deadline_ms(remaining_s: float, default_ms: float | None) -> float:
    """The thinking deadline of a chat call that sets none: half its remaining time, in ms (or the server's
    default, if that is shorter), so the model closes its reasoning with half the time left for the answer."""
    half_ms = remaining_s / 2 * 1000
    return half_ms if default_ms is None else min(default_ms, half_ms)


def _telemetry(source: TelemetryReader | None) -> dict[str, float]:
    sample = source.latest() if source is not None else None
    if sample is None:
        return {}
    out: dict[str, float] = {}
    for name in ("ram_used_mb", "ram_total_mb", "swap_used_mb", "emc_load_pct", "emc_freq_mhz", "gpu_load_pct",
                 "gpu_freq_mhz"):
        value = getattr(sample, name, None)
        if value is not None:
            out[name] = float(value)
    out.update({f"temp_c.{k}": float(v) for k, v in sample.temperatures.items()})
    out.update({f"power_mw.{k}": float(v) for k, v in sample.power_mw.items()})
    return out


def _model_info(engine: Engine) -> pb.ModelInfo:
    bundle = engine.bundle
    weights = bundle.weights
    template = bundle.chat_template or ""
    specials: list[pb.SpecialToken] = []
    if engine.tokenizer is not None:
        for text in dict.fromkeys([*_SPECIAL_TEXTS, *bundle.special_tokens.values()]):  # de-duplicated, in order
            token_id = engine.tokenizer.token_to_id(text)
            if token_id is not None:
                specials.append(pb.SpecialToken(text=text, id=token_id))
    return pb.ModelInfo(
        config_json=json.dumps(bundle.manifest["config"], sort_keys=True),
        layer_pattern=engine.model_config.pattern,
        bundle_id=str(bundle.manifest.get("name") or bundle.path.name),
        bundle_hash=bundle.identity,
        exporter_version=str(bundle.manifest.get("exporter_version", "")),
        weight_format=str(weights.get("format", "")),
        weight_group_size=int(weights.get("group_size") or 0),
        max_context=engine.max_context,
        max_batch=engine.max_rows,
        has_tokenizer=engine.tokenizer is not None,
        chat_template=pb.ChatTemplateCapabilities(
            supports_tools="tools" in template, supports_reasoning_toggle="/no_think" in template,
            special_tokens=specials,
        ),
    )
