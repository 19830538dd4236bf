"""systemd's notification protocol, without libsystemd: READY=1, WATCHDOG=1, STATUS=..., STOPPING=1.

systemd passes the address of a datagram socket in $NOTIFY_SOCKET (a path, or "@name" for the Linux
abstract namespace) and, when the unit sets WatchdogSec=, the watchdog period in $WATCHDOG_USEC (and the
pid it is meant for in $WATCHDOG_PID). Each notification is one datagram of newline-separated KEY=VALUE
lines. Outside systemd (no $NOTIFY_SOCKET) every call is a no-op, so the service runs the same by hand.

The service sends:
  - READY=1 once the bundle is loaded and one tiny generation has run (warm-up), so `systemctl start`
    returns only when requests will be served at full speed;
  - WATCHDOG=1 every half watchdog period, but only while the engine makes *progress* (see
    `EngineProgress`): a wedged model call stops the pings and systemd restarts the service;
  - STATUS=... lines that `systemctl status` shows ("serving: 3/8 slots busy, queue 0");
  - STOPPING=1 when a drain starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)


def notify_address(env: Mapping[str, str] | None = None) -> str | bytes | None:
    """The address to send to, as `socket.sendto` takes it; None outside systemd."""
    raw = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not raw:
        return None
    if raw.startswith("@"):
        # Abstract namespace: the name is the bytes after a leading NUL, not a file.
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    # systemd also allows vsock: addresses (VMs); a service on a Jetson never gets one.
    log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract socket; notifications are off", raw)
    return None


def watchdog_period_s(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog period in seconds, or None when no watchdog is armed for this process."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    # WATCHDOG_PID names the process the watchdog is for; a child that inherited the variable is not it.
    target = env.get("WATCHDOG_PID", "")
    if target.isdigit() and int(target) != (os.getpid() if pid is None else pid):
        return None
    return int(usec) / 1e6


class Notifier:
    """Sends notifications to systemd; every method is a no-op when there is no $NOTIFY_SOCKET."""

    def __init__(self, address: str | bytes | None = None, env: Mapping[str, str] | None = None):
        self.address = address if address is not None else notify_address(env)
        self._sock: socket.socket | None = None
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> bool:
        """One datagram with `lines`; False when off or when the send failed (never raises: a missing
        systemd must not take the service down)."""
        if self._sock is None or not lines:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as e:
            log.warning("sd_notify to %r failed: %s", self.address, e)
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more start-up time (a first TensorRT engine build can take many minutes)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    # A newline would start a new KEY=VALUE line in the datagram.
    return " ".join(text.splitlines())


@dataclass
class EngineProgress:
    """Whether the engine loop made progress between two checks.

    Progress means: the engine completed at least one step since the previous check (`steps` advanced),
    or it had no work at this check (an idle engine waits on its condition variable, which is healthy),
    and its thread is alive.
    A model call that hangs leaves `steps` frozen while requests are in flight, so two checks in a row
    report no progress. The scheduler chunks prefill (`prefill_chunk` tokens per step), so one step is
    bounded by one chunk plus one decode batch: far below a watchdog period of tens of seconds.

    `steps` and `has_work` are read without the engine's lock: a stale read can only report "no
    progress" for one check, which the caller tolerates (it pings twice per watchdog period).
    """

    steps: Callable[[], int]
    has_work: Callable[[], bool]
    alive: Callable[[], bool] = lambda: True
    _last: int | None = None

    @classmethod
    def of(cls, engine) -> "EngineProgress":
        probe = cls(steps=lambda: engine.steps, has_work=engine.has_work, alive=lambda: engine.alive)
        probe.check()  # the baseline, so the first real check can tell progress from a stall
        return probe

    def check(self) -> bool:
        steps, busy = self.steps(), self.has_work()
        progressed = self.alive() and (not busy or (self._last is not None and steps != self._last))
        self._last = steps
        return progressed


async def run_watchdog(notifier: Notifier, period_s: float, progress: Callable[[], bool],
                       status: Callable[[], str] | None = None) -> None:
    """Ping every half period while `progress()` says so; refresh STATUS on each tick. Runs on the
    server's event loop, so a wedged event loop stops the pings as well as a wedged engine."""
    interval = period_s / 2
    stalled = 0
    while True:
        await asyncio.sleep(interval)
        if progress():
            if stalled:
                log.warning("engine progressing again after %d missed watchdog tick(s)", stalled)
            stalled = 0
            notifier.send("WATCHDOG=1", *([f"STATUS={_one_line(status())}"] if status else []))
        else:
            stalled += 1
            log.error("engine made no progress for %.1f s; watchdog ping withheld", stalled * interval)
            if status:
                notifier.status(f"stalled: no engine progress for {stalled * interval:.1f} s")
