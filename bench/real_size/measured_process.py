"""Run a command as a child process and measure it from outside: wall time and the child's own peak RSS.

The peak comes from the child's rusage (`wait4`): the kernel's high-water mark of the child and of the
children it waited for, exact however briefly the peak lasted, and not inflated by this process (a
child started by `posix_spawn` is a fresh image). `deadline_s` interrupts the child (SIGINT, as Ctrl-C
would) once it has run that long, so a resumable export stops cleanly at its journal; `poll` is called
about once a second while the child runs (the export stage samples the export's journal with it).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

POLL_S = 1.0


@dataclass(frozen=True)
class Measured:
    exit_code: int
    seconds: float
    peak_rss: int  # bytes
    interrupted: bool  # stopped by the deadline, or by a SIGINT from elsewhere (a Ctrl-C sent to the child)


def run_measured(args: list[str], log: Path, deadline_s: float | None = None,
                 poll: Callable[[float], None] | None = None) -> Measured:
    """Run `args` (args[0] a path) with stdout and stderr appended to `log`."""
    actions = [(os.POSIX_SPAWN_OPEN, fd, str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) for fd in (1, 2)]
    start = time.monotonic()
    # SIGINT back to its default in the child: a bench started in the background of a shell has it ignored,
    # and the child would inherit that and never stop at its deadline.
    pid = os.posix_spawn(args[0], args, {**os.environ, "PYTHONUNBUFFERED": "1"}, file_actions=actions,
                         setsigdef=(signal.SIGINT,))
    interrupted = False
    try:
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                break
            elapsed = time.monotonic() - start
            if poll is not None:
                poll(elapsed)
            if deadline_s is not None and elapsed > deadline_s and not interrupted:
                os.kill(pid, signal.SIGINT)
                interrupted = True
            time.sleep(POLL_S)
    except BaseException:
        os.kill(pid, signal.SIGINT)
        os.wait4(pid, 0)
        raise
    code = os.waitstatus_to_exitcode(status)
    interrupted = interrupted or code in (-signal.SIGINT, 128 + signal.SIGINT)
    return Measured(code, time.monotonic() - start, usage.ru_maxrss * 1024, interrupted)


def cli(*args: str) -> list[str]:
    """The `nemotron-edge` command line `args`, run by this interpreter."""
    return [sys.executable, "-m", "edge_runtime.cli", *args]
