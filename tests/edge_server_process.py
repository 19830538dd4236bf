"""Test helpers: the real `nemotron-edge serve` in a subprocess, on a Unix socket in a temp dir; and the
same service in this process, for tests that give its engine a clock.

`ServerProcess` is used by test_grpc_server.py, test_grpc_fuzz.py and test_sd_notify.py. The process runs
with the temp dir as its working directory (so nothing it writes lands in the repository) and its output
goes to a log file that failures print. `InProcessServer` serves the real EdgeService on a real grpc.aio
server and socket from a thread of the test process, over an engine the test built.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from edge_runtime.engine.chat import Chat
from edge_runtime.client import EdgeClient, EdgeError
from edge_runtime.engine.engine import Engine
from edge_runtime.engine.loading import LoadedEngine
from edge_runtime.service.server import build_server, check_listen
from edge_runtime.service.servicer import EdgeService
from edge_runtime.service.config import ServiceConfig

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge_runtime.cli", "serve", *args]


class ServerProcess:
    def __init__(self, workdir: Path, bundle: Path, *args: str, env: dict[str, str] | None = None,
                 listen: str | None = None):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.socket_path = workdir / "edge.sock"
        self.address = listen or f"unix:{self.socket_path}"
        self.log_path = workdir / "server.log"
        self._log = self.log_path.open("wb")
        # A test runner started by systemd must not have our server notify *its* manager.
        inherited = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        full_env = {**inherited, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            serve_command("--bundle", str(bundle), "--listen", self.address, "--log-level", "info", *args),
            cwd=workdir, stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
        )

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def client(self, token: str | None = None, **kwargs) -> EdgeClient:
        return EdgeClient(self.address, token=token, **kwargs)

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if c.health(timeout=1.0) == "SERVING":
                        return
                except EdgeError:
                    pass
                time.sleep(0.05)
        raise AssertionError(f"server not SERVING after {timeout} s:\n{self.log()}")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server still running after {timeout} s:\n{self.log()}") from None

    def stop(self) -> None:
        """Best-effort cleanup: SIGTERM, then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class InProcessServer:
    """EdgeService over `engine` (started here, shut down on exit) on a real Unix socket under `workdir`,
    wired as `serve` wires it from `config`; the event loop runs on a thread of its own."""

    def __init__(self, workdir: Path, engine: Engine, config: ServiceConfig | None = None):
        self.address = f"unix:{workdir / 'edge.sock'}"
        config = config or ServiceConfig()
        self.config = ServiceConfig(**{**config.__dict__, "listen": (self.address,)})
        self.engine = engine
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-grpc-loop", daemon=True)
        self._thread.start()
        engine.start()
        self._built = self._on_loop(self._start())

    async def _start(self):
        service = EdgeService(stream_interval_s=self.config.stream_interval_ms / 1000)
        limits = self.config.request_limits(self.engine.max_context)
        service.attach(LoadedEngine(self.engine, Chat(self.engine, self.config.thinking_defaults(), limits.render), limits))
        built = build_server(service, self.config, check_listen(self.config))
        await built.server.start()
        return built

    def _on_loop(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    def client(self, **kwargs) -> EdgeClient:
        return EdgeClient(self.address, **kwargs)

    def __enter__(self) -> "InProcessServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self._on_loop(self._built.server.stop(None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(60)
        self.loop.close()
        self.engine.shutdown()
