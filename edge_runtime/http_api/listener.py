"""uvicorn on the service's own event loop, over sockets the service bound (service/server.py), for the
OpenAI-compatible app (http_api/app.py). The service handles SIGTERM and the drain itself, so uvicorn's
own signal handlers are not installed; `stop()` closes the listeners after the drain."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the service owns SIGTERM and SIGINT
        yield


class HttpListener:
    def __init__(self, app: Starlette, sockets: list[socket.socket]):
        config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False,
                                timeout_graceful_shutdown=2)
        self._server = _EmbeddedServer(config)
        self._task = asyncio.ensure_future(self._server.serve(sockets=sockets))

    async def started(self) -> None:
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()  # raises what stopped it

    async def stop(self) -> None:
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
