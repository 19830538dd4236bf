"""The OpenAI-compatible HTTP front end: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`,
a Starlette app served by uvicorn on the gRPC server's event loop, over the same engine (one model, one
memory budget, one scheduler) and the same serving state as the gRPC servicer (service/servicer.py).

A request goes: bearer token (when the service has one; `Authorization: Bearer <token>`) -> the body read
up to `[limits] max_request_bytes`, refused past it before anything is parsed -> pydantic validates it
(http_api/schema.py) -> the same bounds as gRPC on counts and characters -> render and tokenize on worker
threads (the grammar compiled there too) -> the engine. `stream: true` answers with server-sent events
(`data: {chunk}` ... `data: [DONE]`), paced like the gRPC streams; otherwise one JSON object. A client that
disconnects cancels its request (the engine frees the slot within a step); a running request counts
toward the drain like a gRPC stream.

Errors are OpenAI's error object, `{"error": {"message", "type", "param", "code"}}`: 400 a bad request (the
param names the field), 401 a missing or wrong token, 413 a body over the limit, 429 the queue is full, 503
loading or draining, 500 a request the engine failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from edge_runtime.engine.records import (EngineUnavailableError, Event, Final, GenerationRequest, QueueFullError,
                                         RequestError, SamplingParams, new_request_id)
from edge_runtime.engine.token_ids import encode
from edge_runtime.http_api.convert import Reply, chat_request, check_bounds, completion_sampling, failed, priority
from edge_runtime.http_api.schema import ChatCompletionRequest, CompletionRequest
from edge_runtime.service.auth import token_matches
from edge_runtime.service.event_stream import EventInbox, paced_events
from edge_runtime.service.servicer import EdgeService, ServingState

B = TypeVar("B", bound=BaseModel)


class HttpError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status)


class OpenAIFrontEnd:
    """The routes over one `EdgeService` (its engine, chat front end, limits, metrics and drain)."""

    def __init__(self, service: EdgeService, token: str | None = None):
        self.service = service
        self._token = token.encode() if token else None

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
        ])

    @property
    def model_id(self) -> str:
        bundle = self.service.engine.bundle
        return str(bundle.manifest.get("name") or bundle.path.name)

    # ---- routes -------------------------------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        return await self._answer("Models", request, self._models)

    async def chat_completions(self, request: Request) -> Response:
        return await self._answer("ChatCompletions", request, self._chat)

    async def completions(self, request: Request) -> Response:
        return await self._answer("Completions", request, self._complete)

    async def _answer(self, rpc: str, request: Request, handler: Callable[[str, Request], Awaitable[Response]]) -> Response:
        try:
            self._admit(request)
            return await handler(rpc, request)
        except HttpError as e:
            if self.service.metrics is not None:
                self.service.metrics.refused(rpc, f"http_{e.status}")
            return e.response()

    async def _models(self, rpc: str, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": self.model_id, "object": "model", "created": 0, "owned_by": "nemotron-edge"}]})

    async def _chat(self, rpc: str, request: Request) -> Response:
        body = await self._body(request, ChatCompletionRequest)
        chat = self.service.chat
        if chat is None:
            raise HttpError(400, "this bundle has no tokenizer or chat template; use /v1/completions with token ids")
        request_id = new_request_id()
        with _as_http_errors():
            check_bounds(body, self.service.limits)
            chat_req = chat_request(body, request_id)
            prompt = await self._stage("render", lambda: chat.render(chat_req))
            engine_request = await self._stage("tokenize", lambda: chat.request(chat_req, prompt))
        reply = Reply(request_id, self.model_id, self.service.engine.tokenizer, chat=True,
                      include_usage=bool(body.stream_options and body.stream_options.include_usage))
        return await self._run(rpc, request, engine_request, reply, body.stream)

    async def _complete(self, rpc: str, request: Request) -> Response:
        body = await self._body(request, CompletionRequest)
        engine = self.service.engine
        prompt = body.prompt[0] if isinstance(body.prompt, list) and isinstance(body.prompt[0], str) else body.prompt
        with _as_http_errors():
            if isinstance(prompt, str):
                if engine.tokenizer is None:
                    raise RequestError("prompt", "this bundle has no tokenizer; send token ids")
                if len(prompt) > self.service.limits.max_text_chars:
                    raise RequestError("prompt", f"{len(prompt)} characters; at most {self.service.limits.max_text_chars}")
                ids = await self._stage("tokenize", lambda: encode(engine.tokenizer, prompt))
            else:
                ids = list(prompt)
            engine_request = GenerationRequest(
                prompt_ids=ids,
                sampling=SamplingParams.model_card_default(False).override(completion_sampling(body)),
                max_tokens=body.max_tokens, stop_strings=body.stop_strings(), ignore_eos=body.ignore_eos,
                priority=priority(body), request_id=new_request_id())
        reply = Reply(engine_request.request_id, self.model_id, engine.tokenizer, chat=False,
                      include_usage=bool(body.stream_options and body.stream_options.include_usage))
        return await self._run(rpc, request, engine_request, reply, body.stream)

    # ---- the steps of a request ---------------------------------------------------------------------------

    def _admit(self, request: Request) -> None:
        if self._token is not None and not token_matches([("authorization", request.headers.get("authorization", ""))],
                                                         self._token):
            raise HttpError(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                            "authentication_error", code="invalid_api_key")
        state = self.service.state
        if state is ServingState.LOADING:
            raise HttpError(503, "the model is loading; retry shortly", "service_unavailable")
        if state is ServingState.DRAINING:
            raise HttpError(503, "the server is shutting down and accepts no new requests", "service_unavailable")

    async def _body(self, request: Request, model: type[B]) -> B:
        """The body, read no further than the request limit, validated as `model`."""
        limit = self.service.limits.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HttpError(413, f"the body is {declared} bytes; at most {limit} ([limits] max_request_bytes)")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"the body exceeds {limit} bytes ([limits] max_request_bytes)")
            chunks.append(chunk)
        try:
            return model.model_validate_json(b"".join(chunks))
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise HttpError(400, f"{where}: {first['msg']}" if where else first["msg"], param=where or None) from None

    async def _stage(self, name: str, work: Callable[[], Any]) -> Any:
        """One stage of preparing a request on a worker thread, counted and timed like gRPC's."""
        metrics = self.service.metrics

        def run() -> Any:
            with metrics.stage(name) if metrics is not None else contextlib.nullcontext():
                return work()

        return await asyncio.to_thread(run)

    async def _run(self, rpc: str, request: Request, engine_request: GenerationRequest, reply: Reply,
                   stream: bool) -> Response:
        engine = self.service.engine
        inbox = EventInbox(asyncio.get_running_loop())
        try:
            handle = engine.submit(engine_request, inbox.put)
        except QueueFullError as e:
            raise HttpError(429, str(e), "rate_limit_error", code="queue_full") from None
        except EngineUnavailableError as e:
            raise HttpError(503, str(e), "service_unavailable") from None
        except RequestError as e:
            raise HttpError(400, str(e), param=e.field) from None
        except ValueError as e:
            raise HttpError(400, str(e)) from None

        async def events() -> AsyncIterator[Event]:
            with self.service.streaming():
                try:
                    async with contextlib.aclosing(paced_events(inbox, self.service.stream_interval_s)) as paced:
                        async for event in paced:
                            if isinstance(event, Final) and self.service.metrics is not None:
                                self.service.metrics.finished(rpc, event)
                            yield event
                finally:
                    if not handle.done:  # the client left: free the slot
                        handle.cancel()
                        engine.wake()

        if stream:
            return EventStreamResponse(_sse(events(), reply))
        collected = await _until_disconnected(request.receive, _collect(events()))
        if collected is None:
            return Response(status_code=499)  # nobody is there to read it
        final = collected[-1]
        if failed(final):
            raise HttpError(500, final.error or f"the request ended: {final.finish_reason}", "server_error")
        return JSONResponse(reply.whole(collected))


async def _collect(events: AsyncIterator[Event]) -> list[Event]:
    async with contextlib.aclosing(events) as stream:
        return [e async for e in stream]


async def _sse(events: AsyncIterator[Event], reply: Reply) -> AsyncIterator[bytes]:
    async with contextlib.aclosing(events) as stream:
        async for event in stream:
            if isinstance(event, Final) and failed(event):
                error = {"message": event.error or f"the request ended: {event.finish_reason}", "type": "server_error",
                         "param": None, "code": None}
                yield _data({"error": error})
                break
            for chunk in reply.chunks(event):
                yield _data(chunk)
    yield b"data: [DONE]\n\n"


def _data(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _until_disconnected(receive: Receive, work: Awaitable[Any]) -> Any:
    """`work`'s result, or None (and `work` cancelled) when the client disconnects first."""
    task, gone = asyncio.ensure_future(work), asyncio.ensure_future(_disconnect(receive))
    try:
        done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    finally:
        gone.cancel()


class EventStreamResponse:
    """Server-sent events from an async iterator of encoded `data:` lines. A client that disconnects cancels
    the iteration (and so its request), whether or not a line was being sent."""

    def __init__(self, lines: AsyncIterator[bytes]):
        self.lines = lines

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stream() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]})
            async with contextlib.aclosing(self.lines) as lines:
                async for line in lines:
                    await send({"type": "http.response.body", "body": line, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        with contextlib.suppress(OSError):  # the client went away mid-send
            await _until_disconnected(receive, stream())


@contextlib.contextmanager
def _as_http_errors():
    try:
        yield
    except RequestError as e:
        raise HttpError(400, str(e), param=e.field) from None
