"""The hand-off of engine events to a streaming RPC: merging, pacing, and no token lost or late.

Events are put from a real second thread, as the engine does, into a real asyncio loop.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time

from edge_runtime.event_stream import EventInbox, coalesce, paced_events
from edge_runtime.request import Delta, Final, Timings, Usage

FINAL = Final(finish_reason="length", usage=Usage(), timings=Timings())


def test_coalesce_merges_the_deltas_of_one_channel_in_order() -> None:
    pending = collections.deque([Delta("Hm", "reasoning", [1]), Delta("m.", "reasoning", [2]), Delta("Yes", "answer", [3]),
                                 Delta("!", "answer", [4]), Delta("", "answer", [5]), FINAL])
    sent = []
    while pending:
        sent.append(coalesce(pending))
    assert sent == [Delta("Hmm.", "reasoning", [1, 2]), Delta("Yes!", "answer", [3, 4, 5]), FINAL]


def _stream(interval_s: float, producer) -> list[tuple[float, object]]:
    """Run paced_events while `producer(inbox)` puts events from another thread; (time, event) per message."""

    async def main() -> list[tuple[float, object]]:
        inbox = EventInbox(asyncio.get_running_loop())
        thread = threading.Thread(target=producer, args=(inbox,))
        thread.start()
        sent = [(time.monotonic(), event) async for event in paced_events(inbox, interval_s)]
        thread.join()
        return sent

    return asyncio.run(main())


def _tokens(sent) -> list[int]:
    return [t for _, e in sent if isinstance(e, Delta) for t in e.token_ids]


def _steady(n: int, every_s: float):
    def produce(inbox: EventInbox) -> None:
        for i in range(n):
            inbox.put(Delta(f"t{i} ", "answer", [i]))
            time.sleep(every_s)
        inbox.put(FINAL)
    return produce


def test_paced_stream_sends_one_message_per_interval_with_every_token_in_order() -> None:
    start = time.monotonic()
    sent = _stream(0.05, _steady(60, 0.005))  # ~0.3 s of tokens, one every 5 ms
    elapsed = time.monotonic() - start
    assert _tokens(sent) == list(range(60))
    assert "".join(e.text for _, e in sent if isinstance(e, Delta)) == "".join(f"t{i} " for i in range(60))
    assert sent[-1][1] is FINAL
    deltas = [t for t, e in sent if isinstance(e, Delta)]
    assert len(deltas) <= elapsed / 0.05 + 2, f"{len(deltas)} messages in {elapsed:.2f} s"
    # The last delta may follow sooner: the Final ends the pause, and what is pending goes out with it.
    assert all(b - a >= 0.045 for a, b in zip(deltas, deltas[1:-1])), "two messages within one interval"


def test_interval_zero_sends_each_token_when_the_stream_keeps_up() -> None:
    sent = _stream(0.0, _steady(20, 0.01))
    assert _tokens(sent) == list(range(20))
    assert len(sent) == 21  # one message per token, then the Final


def test_first_message_and_final_are_not_held_back_by_the_interval() -> None:
    put_at: dict[str, float] = {}

    def produce(inbox: EventInbox) -> None:
        put_at["first"] = time.monotonic()
        inbox.put(Delta("a", "answer", [1]))
        time.sleep(0.05)
        inbox.put(Delta("b", "answer", [2]))  # held back by the interval
        put_at["final"] = time.monotonic()
        inbox.put(FINAL)

    sent = _stream(5.0, produce)
    assert _tokens(sent) == [1, 2]
    assert sent[0][0] - put_at["first"] < 1.0
    assert sent[-1][1] is FINAL and sent[-1][0] - put_at["final"] < 1.0, "the Final waited for the 5 s interval"
