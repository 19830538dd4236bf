"""Answer undecodable request bytes with INVALID_ARGUMENT instead of gRPC's UNKNOWN.

grpc.aio deserializes a request before the handler runs; bytes that are not a valid message (corrupt wire
format, invalid UTF-8 in a string field) make it fail with UNKNOWN "Unexpected DecodeError" and log a
traceback per call, so any peer could fill the journal. This interceptor gives unary-request handlers a
deserializer that returns a marker instead of raising, and a behaviour that aborts on the marker with
INVALID_ARGUMENT naming the message type. Streaming-request handlers (reflection only) are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError


@dataclass(frozen=True)
class _Malformed:
    reason: str


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        deserialize = handler.request_deserializer
        method = handler_call_details.method

        def safe_deserialize(data: bytes):
            try:
                return deserialize(data)
            except (DecodeError, ValueError) as e:
                return _Malformed(str(e))

        def message(bad: _Malformed) -> str:
            return f"request: not a valid message for {method}: {bad.reason}"

        common = dict(request_deserializer=safe_deserialize, response_serializer=handler.response_serializer)
        if handler.response_streaming:
            inner_stream = handler.unary_stream

            async def stream(request, context):
                if isinstance(request, _Malformed):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message(request))
                async for response in inner_stream(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(stream, **common)
        inner_unary = handler.unary_unary

        async def unary(request, context):
            if isinstance(request, _Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message(request))
            return await inner_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(unary, **common)
