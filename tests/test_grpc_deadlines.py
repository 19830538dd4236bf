"""Call deadlines through the real service, judged on the engine's clock, never on this machine's speed.

The service turns a call's remaining time into the engine request's deadline and, for a chat, half of it
into the thinking deadline; both are read on the engine's clock. Here that clock is the engine's step
count (STEP_S seconds a step), so what a deadline allows is a number of model steps whatever the machine's
pace: the real EdgeService on a real grpc.aio server and Unix socket, in this process (InProcessServer), so
the test can give its engine that clock.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from edge_runtime.client import EdgeClient, EdgeError
from edge_runtime.engine.engine import Engine
from edge_runtime.service.config import ServiceConfig
from edge_server_process import InProcessServer

STEP_S = 0.3  # engine-clock seconds per engine step
LONG = dict(max_tokens=100_000, ignore_eos=True)  # runs to the context limit unless stopped


@pytest.fixture(scope="module")
def client(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    config = ServiceConfig()
    engine: Engine | None = None
    engine = Engine(tiny_bundle, config.engine_config(), clock=lambda: engine.steps * STEP_S)
    with InProcessServer(tmp_path_factory.mktemp("deadlines"), engine, config) as server:
        with server.client() as c:
            yield c


def test_a_deadline_is_deadline_exceeded_and_frees_the_slot(client: EdgeClient) -> None:
    with pytest.raises(EdgeError) as e:
        client.chat("hurry", max_tokens=16, timeout=0.001).result()
    assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    # A deadline that passes mid-generation (3 s: 10 engine steps, far short of the 512-token context) ends
    # the call the same way and frees the slot.
    with pytest.raises(EdgeError) as e:
        client.chat("hurry, but longer", timeout=3.0, **LONG).result()
    assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert client.chat("again", max_tokens=2, timeout=60).result().finish_reason in ("length", "stop")
    assert client.status().slots_busy == 0


def test_the_call_deadline_bounds_thinking_to_half_of_it(client: EdgeClient) -> None:
    # Seed 0 does not close its own thinking within 480 tokens, so the forced close can only come from the
    # thinking deadline derived from the call's 60 s: half of it, 30 s, is 100 engine steps of thinking;
    # then the close and 4 answer tokens, far inside the call's 200 steps.
    timeout_s = 60.0
    final = client.chat("Think for a long time.", max_tokens=480, ignore_eos=True, sampling={"seed": 0},
                        max_answer_tokens=4, timeout=timeout_s).result()
    assert final.thinking_ended_by == "deadline"
    assert final.usage.forced_tokens > 0 and final.usage.answer_tokens == 4
    own = final.usage.reasoning_tokens - final.usage.forced_tokens  # the forced close counts as reasoning
    assert own <= timeout_s / 2 / STEP_S + 1  # the first token at or after the thinking deadline, then the close
    assert own >= timeout_s / 2 / STEP_S * 0.9  # and the thinking ran until that deadline
