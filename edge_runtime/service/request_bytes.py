"""A request's bytes, before its handler runs: refused past the size limit, and decoded without raising.

grpc.aio deserializes a request on the event loop before the handler runs, so what happens there holds up
every other call. This interceptor gives unary-request handlers a deserializer that
  - refuses a request longer than `max_bytes()` (RequestLimits.max_request_bytes, derived from the model's
    context) before parsing it: the handler answers RESOURCE_EXHAUSTED naming the limit, having cost no
    more than receiving the bytes (gRPC's own max_receive_message_length, engine.limits.MAX_MESSAGE_BYTES, is
    the transport's ceiling above it);
  - turns bytes that are not a valid message (corrupt wire format, invalid UTF-8 in a string field) into
    INVALID_ARGUMENT naming the message type, instead of gRPC's UNKNOWN "Unexpected DecodeError" with a
    traceback logged per call, which would let any peer fill the journal.
Streaming-request handlers (reflection only) are left as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError


@dataclass(frozen=True)
class _Refused:
    code: grpc.StatusCode
    message: str


class RequestBytesInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, max_bytes: Callable[[], int]):
        """`max_bytes`: the current limit on a request's serialized size (read per call: it is known once
        the model has loaded)."""
        self.max_bytes = max_bytes

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        deserialize = handler.request_deserializer
        method = handler_call_details.method

        def bounded_deserialize(data: bytes):
            limit = self.max_bytes()
            if len(data) > limit:
                return _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"request: {len(data)} bytes; at most {limit} ([limits] max_request_bytes)")
            try:
                return deserialize(data)
            except (DecodeError, ValueError) as e:
                return _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"request: not a valid message for {method}: {e}")

        common = dict(request_deserializer=bounded_deserialize, response_serializer=handler.response_serializer)
        if handler.response_streaming:
            inner_stream = handler.unary_stream

            async def stream(request, context):
                if isinstance(request, _Refused):
                    await context.abort(request.code, request.message)
                async for response in inner_stream(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(stream, **common)
        inner_unary = handler.unary_unary

        async def unary(request, context):
            if isinstance(request, _Refused):
                await context.abort(request.code, request.message)
            return await inner_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(unary, **common)
