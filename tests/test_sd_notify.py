"""systemd notification: the real server reports READY=1 after warm-up, WATCHDOG=1 while the engine makes
progress, STOPPING=1 on drain, to a fake $NOTIFY_SOCKET (a datagram socket owned by the test). And the
watchdog's notion of progress: a hung model call withholds the pings, an idle engine does not."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path


from edge_runtime.engine.engine import Engine
from edge_runtime.engine.records import GenerationRequest
from edge_runtime.service.sd_notify import EngineProgress, Notifier, notify_address, run_watchdog, watchdog_period_s
from edge_server_process import ServerProcess


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET: collects datagrams as lists of KEY=VALUE lines."""

    def __init__(self, address: str):
        self.env_value = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.messages: list[list[str]] = []

    def receive(self, timeout: float) -> list[str] | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except (socket.timeout, BlockingIOError):
            return None
        lines = data.decode().split("\n")
        self.messages.append(lines)
        return lines

    def wait_for(self, key: str, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.receive(max(0.01, deadline - time.monotonic()))
            if lines and key in lines:
                return lines
        raise AssertionError(f"no {key} within {timeout} s; got {self.messages}")

    def wait_count(self, key: str, n: int, timeout: float = 60) -> None:
        """Wait for `n` more messages carrying `key` (the timeout only bounds a failure: no verdict here
        depends on how many fit into some seconds)."""
        for _ in range(n):
            self.wait_for(key, timeout)

    def close(self) -> None:
        self.sock.close()


def test_notify_address_and_watchdog_period_from_the_environment() -> None:
    assert notify_address({"NOTIFY_SOCKET": "@edge/notify"}) == b"\0edge/notify"
    assert notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert notify_address({}) is None
    assert notify_address({"NOTIFY_SOCKET": "vsock:2:1234"}) is None
    assert watchdog_period_s({"WATCHDOG_USEC": "400000"}) == 0.4
    assert watchdog_period_s({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}) == 0.4
    assert watchdog_period_s({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}, pid=2) is None  # someone else's
    assert watchdog_period_s({}) is None
    off = Notifier(env={})
    assert not off.enabled and off.ready() is False  # outside systemd every call is a harmless no-op


def test_notifier_sends_to_a_socket_path(tmp_path: Path) -> None:
    systemd = FakeSystemd(str(tmp_path / "notify"))
    try:
        notifier = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
        assert notifier.ready("serving: 0/8 slots busy\nqueue 0")
        assert systemd.receive(2.0) == ["READY=1", "STATUS=serving: 0/8 slots busy queue 0"]
        notifier.close()
    finally:
        systemd.close()


def test_server_notifies_ready_watchdog_and_stopping(tiny_bundle: Path, tmp_path: Path) -> None:
    systemd = FakeSystemd(f"@nemotron-edge-test-{uuid.uuid4().hex}")
    env = {"NOTIFY_SOCKET": systemd.env_value, "WATCHDOG_USEC": "400000"}
    try:
        with ServerProcess(tmp_path, tiny_bundle, env=env) as server:
            ready = systemd.wait_for("READY=1", timeout=60)
            # READY=1 comes after load and warm-up: the server is already serving when systemd hears it.
            with server.client() as client:
                assert client.health() == "SERVING"
                assert any(line.startswith("STATUS=serving: 0/8 slots busy") for line in ready)
                assert any(line.startswith("STATUS=loading") for m in systemd.messages for line in m)
                # Pings while idle...
                systemd.wait_count("WATCHDOG=1", 3)
                # ...and while generating (to the context limit, so it is still running when they come).
                stream = client.chat("keep going", max_tokens=100_000, ignore_eos=True)
                events = iter(stream)
                next(events)  # generating now
                systemd.wait_count("WATCHDOG=1", 2)
                stream.cancel()
            server.proc.send_signal(signal.SIGTERM)
            systemd.wait_for("STOPPING=1", timeout=30)
            assert server.wait(60) == 0, server.log()
    finally:
        systemd.close()


def test_watchdog_pings_stop_while_a_model_call_hangs(tiny_bundle: Path, tmp_path: Path) -> None:
    systemd = FakeSystemd(str(tmp_path / "notify"))
    notifier = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
    engine = Engine(tiny_bundle)
    engine.start()
    # A hung ONNX Runtime call, made real: the engine's decode blocks until the test releases it.
    release, entered = threading.Event(), threading.Event()
    decode = engine.runner.decode

    def hanging_decode(*args):
        entered.set()
        release.wait(300)
        return decode(*args)

    async def watch(ticks: int) -> None:
        """Run the watchdog for exactly `ticks` checks (never judged by how many fit in some seconds)."""
        checked, n = asyncio.Event(), 0

        def check() -> bool:
            nonlocal n
            n += 1
            if n == ticks:
                checked.set()
            return progress.check()

        task = asyncio.create_task(run_watchdog(notifier, 0.2, check))
        await asyncio.wait_for(checked.wait(), 60)  # the ping of the last check is sent before this wakes
        task.cancel()

    try:
        progress = EngineProgress.of(engine)
        asyncio.run(watch(3))
        assert sum("WATCHDOG=1" in m for m in _drain(systemd)) == 3  # an idle engine is healthy

        engine.runner.decode = hanging_decode
        handle = engine.submit(GenerationRequest(prompt_ids=[1, 2, 3], max_tokens=8, ignore_eos=True))
        assert entered.wait(60)
        progress = EngineProgress.of(engine)
        asyncio.run(watch(3))
        assert sum("WATCHDOG=1" in m for m in _drain(systemd)) == 0  # stuck: no pings

        release.set()
        assert handle.wait(60).finish_reason == "length"
        progress = EngineProgress.of(engine)
        asyncio.run(watch(2))
        assert sum("WATCHDOG=1" in m for m in _drain(systemd)) == 2  # progressing again
    finally:
        release.set()
        engine.shutdown()
        notifier.close()
        systemd.close()


def _drain(systemd: FakeSystemd) -> list[list[str]]:
    out = []
    while (lines := systemd.receive(0.01)) is not None:
        out.append(lines)
    return out
