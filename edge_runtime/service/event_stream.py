"""Engine events to one streaming RPC: the hand-off from the engine thread, and the pacing of messages.

The engine calls `EventInbox.put` on its own thread for every event of a request; the RPC's coroutine
reads them with `paced_events`. The engine thread wakes the event loop only when the coroutine is waiting
for an event, so while a stream is busy sending, or pausing between messages, a token costs the engine
thread an append and nothing else.

Pacing (`stream_interval_s`): a stream sends what has queued at most once per interval, the deltas of one
channel merged into one message (their token ids and logprobs in order), so no token is ever lost or
reordered, and none waits longer than one interval. The first message of a stream, and the Final, go out
as soon as they exist. Why: every message costs the server's event loop, gRPC and the client a wake-up
and some CPU on the same cores as the model; a human or an agent does not read faster than a few tens of
messages a second (BENCHMARKS.md, service). Interval 0 sends each event as soon as the stream gets to it,
still merging what queued up while it was behind.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncIterator

from edge_runtime.engine.records import Delta, Event, Final


class EventInbox:
    """Events from the engine thread to one coroutine on `loop`."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._events: collections.deque[Event] = collections.deque()
        self._lock = threading.Lock()
        self._waiter: asyncio.Future | None = None
        self._waiting_for_final = False  # pausing: only a Final ends the wait

    def put(self, event: Event) -> None:
        """Engine thread: queue one event; wakes the coroutine if it waits for it. Never raises."""
        with self._lock:
            self._events.append(event)
            waiter = self._waiter if isinstance(event, Final) or not self._waiting_for_final else None
            if waiter is not None:
                self._waiter = None
        if waiter is not None:
            try:
                self._loop.call_soon_threadsafe(_wake, waiter)
            except RuntimeError:  # the event loop is closed (the server is exiting)
                pass

    def drain(self) -> list[Event]:
        """Every event queued so far, oldest first (none: an empty list)."""
        with self._lock:
            return self._pop_all()

    async def take(self) -> list[Event]:
        """Every event queued so far, oldest first; waits for one if there is none."""
        while True:
            with self._lock:
                if self._events:
                    return self._pop_all()
                self._waiter = waiter = self._loop.create_future()
            await waiter

    def _pop_all(self) -> list[Event]:  # with the lock held
        events = list(self._events)
        self._events.clear()
        return events

    async def pause(self, seconds: float) -> None:
        """Wait `seconds`, or until a Final is queued, whichever comes first."""
        with self._lock:
            if any(isinstance(e, Final) for e in self._events):
                return
            self._waiter = waiter = self._loop.create_future()
            self._waiting_for_final = True
        try:
            await asyncio.wait([waiter], timeout=seconds)
        finally:
            with self._lock:
                self._waiting_for_final = False
                if self._waiter is waiter:
                    self._waiter = None


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():  # the coroutine may have been cancelled meanwhile
        waiter.set_result(None)


def coalesce(pending: collections.deque[Event]) -> Event:
    """Pop the next event to send from `pending`; a Delta absorbs the deltas of its channel right behind it."""
    event = pending.popleft()
    while isinstance(event, Delta) and pending and isinstance(pending[0], Delta) and pending[0].channel == event.channel:
        following = pending.popleft()
        event = Delta(event.text + following.text, event.channel, event.token_ids + following.token_ids,
                      event.logprobs + following.logprobs)
    return event


async def paced_events(inbox: EventInbox, interval_s: float) -> AsyncIterator[Event]:
    """The events to send, merged, one batch per interval at most; ends after the Final."""
    loop = asyncio.get_running_loop()
    pending: collections.deque[Event] = collections.deque()
    while True:
        if not pending:
            pending.extend(await inbox.take())
        sent_at = loop.time()
        while pending:
            event = coalesce(pending)
            yield event
            if isinstance(event, Final):
                return
        wait_s = sent_at + interval_s - loop.time()
        if wait_s > 0:
            await inbox.pause(wait_s)
        pending.extend(inbox.drain())
