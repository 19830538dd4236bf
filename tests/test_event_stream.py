"""The hand-off of engine events to a streaming RPC: merging, pacing, and no token lost or late.

Events are put from a real second thread, as the engine does, into a real asyncio loop. No verdict depends
on how fast this machine runs: "not held back" is tested against an hour-long interval (a stream that
waited for it would run into `_stream`'s one-minute guard), pacing by counting messages against the time
the stream took.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time

from edge_runtime.service.event_stream import EventInbox, coalesce, paced_events
from edge_runtime.engine.records import Delta, Final, Timings, Usage

FINAL = Final(finish_reason="length", usage=Usage(), timings=Timings())
HOUR_S = 3600.0  # an interval no stream may wait for
GUARD_S = 60.0  # bounds a failure (a stream that waited an interval), never a verdict


def test_coalesce_merges_the_deltas_of_one_channel_in_order() -> None:
    pending = collections.deque([Delta("Hm", "reasoning", [1]), Delta("m.", "reasoning", [2]), Delta("Yes", "answer", [3]),
                                 Delta("!", "answer", [4]), Delta("", "answer", [5]), FINAL])
    sent = []
    while pending:
        sent.append(coalesce(pending))
    assert sent == [Delta("Hmm.", "reasoning", [1, 2]), Delta("Yes!", "answer", [3, 4, 5]), FINAL]


def _stream(interval_s: float, producer) -> list[tuple[float, object]]:
    """Run paced_events while `producer(inbox, sent)` puts events from another thread; (time, event) per
    message. `sent` is set each time a message has gone out (and cleared by the producer)."""

    async def main() -> list[tuple[float, object]]:
        inbox = EventInbox(asyncio.get_running_loop())
        sent_event = threading.Event()
        thread = threading.Thread(target=producer, args=(inbox, sent_event))
        thread.start()
        sent = []
        async for event in paced_events(inbox, interval_s):
            sent.append((time.monotonic(), event))
            sent_event.set()
        thread.join()
        return sent

    return asyncio.run(asyncio.wait_for(main(), GUARD_S))


def _tokens(sent) -> list[int]:
    return [t for _, e in sent if isinstance(e, Delta) for t in e.token_ids]


def _steady(n: int, every_s: float):
    def produce(inbox: EventInbox, sent: threading.Event) -> None:
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
    # At most one message per interval (the last may follow sooner: the Final ends the pause, and what is
    # pending goes out with it), however long the tokens took to come.
    assert len(deltas) <= elapsed / 0.05 + 2, f"{len(deltas)} messages in {elapsed:.2f} s"


def test_interval_zero_sends_each_token_when_the_stream_keeps_up() -> None:
    def produce(inbox: EventInbox, sent: threading.Event) -> None:
        for i in range(20):
            sent.clear()
            inbox.put(Delta(f"t{i} ", "answer", [i]))
            assert sent.wait(GUARD_S), "a token was not sent on its own"
        inbox.put(FINAL)

    sent = _stream(0.0, produce)
    assert [e.token_ids for _, e in sent[:-1]] == [[i] for i in range(20)]  # one message per token
    assert sent[-1][1] is FINAL


def test_first_message_and_final_are_not_held_back_by_the_interval() -> None:
    def produce(inbox: EventInbox, sent: threading.Event) -> None:
        inbox.put(Delta("a", "answer", [1]))
        assert sent.wait(GUARD_S), "the first message waited (for the interval, or for more events)"
        inbox.put(Delta("b", "answer", [2]))  # held back by the interval...
        inbox.put(FINAL)  # ...until the Final comes, which is not

    sent = _stream(HOUR_S, produce)  # a Final that waited for the interval fails the guard
    assert _tokens(sent) == [1, 2]
    assert sent[-1][1] is FINAL


def test_what_queued_behind_a_channel_switch_goes_out_with_it() -> None:
    """Reasoning, answer, a tool call and the Final queued at once all go out at once, interval or not."""
    from edge_runtime.engine.records import ToolCallRecord

    call = ToolCallRecord(0, "move", "{}", None)

    def produce(inbox: EventInbox, sent: threading.Event) -> None:
        inbox.put(Delta("a", "answer", [0]))
        assert sent.wait(GUARD_S)
        time.sleep(0.05)  # the stream is pausing now
        for event in (Delta("hm", "reasoning", [1]), Delta("ok", "answer", [2]), call, FINAL):
            inbox.put(event)

    sent = _stream(HOUR_S, produce)  # events that waited for another interval fail the guard
    assert [e for _, e in sent[1:]] == [Delta("hm", "reasoning", [1]), Delta("ok", "answer", [2]), call, FINAL]


def test_a_stream_cancelled_while_pausing_leaves_the_inbox_usable() -> None:
    """The RPC is cancelled mid-pause (the client went away): no error, and the engine thread's later puts
    neither raise nor wake anything."""

    async def main() -> None:
        inbox = EventInbox(asyncio.get_running_loop())
        got_first = asyncio.Event()

        async def consume() -> None:
            async for _ in paced_events(inbox, HOUR_S):
                got_first.set()

        task = asyncio.create_task(consume())
        inbox.put(Delta("a", "answer", [0]))
        await asyncio.wait_for(got_first.wait(), GUARD_S)
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()
        await asyncio.to_thread(inbox.put, Delta("b", "answer", [1]))
        await asyncio.to_thread(inbox.put, FINAL)
        assert inbox.drain() == [Delta("b", "answer", [1]), FINAL]

    asyncio.run(main())
