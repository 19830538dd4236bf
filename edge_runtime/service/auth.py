"""Bearer-token authentication for the gRPC server: metadata `authorization: Bearer <token>`.

The token lives in a file (ServiceConfig.auth_token_file, root:nemotron-edge mode 0640), never on the
command line where `ps` would show it. When a token is configured every call must carry it, on every
listener, except the standard health service (grpc.health.v1.Health): probes and orchestrators check
liveness without secrets, and health reveals nothing but SERVING / NOT_SERVING. Tokens are compared in
constant time (hmac.compare_digest), so response timing does not leak how much of a guess was right.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import grpc

HEALTH_PREFIX = "/grpc.health.v1.Health/"
_SCHEME = "bearer "


class TokenFileError(ValueError):
    """The token file cannot be used; the message names the setting and the file."""


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise TokenFileError(f"auth_token_file: cannot read {path}: {e.strerror}") from None
    if not token:
        raise TokenFileError(f"auth_token_file: {path} is empty")
    if any(c.isspace() for c in token) or not token.isprintable():
        raise TokenFileError(f"auth_token_file: {path} must hold one token without spaces or control characters")
    return token


def token_matches(metadata, expected: bytes) -> bool:
    """Whether `metadata` (key, value pairs) carries `authorization: Bearer <expected>`."""
    for key, value in metadata or ():
        if key != "authorization":
            continue
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        if text[: len(_SCHEME)].lower() != _SCHEME:
            continue
        # compare_digest wants equal-type operands; bytes also avoids its ASCII-only rule for str.
        if hmac.compare_digest(text[len(_SCHEME):].strip().encode(), expected):
            return True
    return False


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without the right token with UNAUTHENTICATED, before the handler runs."""

    def __init__(self, token: str):
        self._expected = token.encode()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_PREFIX):
            return handler
        if token_matches(handler_call_details.invocation_metadata, self._expected):
            return handler
        return _denying(handler)


_MESSAGE = "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'"


async def _deny(request, context: grpc.aio.ServicerContext):
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE)


async def _deny_stream(request, context: grpc.aio.ServicerContext):
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE)
    yield  # an async generator, as a streaming handler must be


def _denying(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` (so the request is read as the client sends it) that aborts."""
    common = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_deny_stream, **common)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_deny, **common)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_deny_stream, **common)
    return grpc.unary_unary_rpc_method_handler(_deny, **common)
