"""Big, slow and hostile inputs against the real `nemotron-edge serve`: what the service accepts is bounded
before any work, refusals cost no tokenization or rendering, a large request never holds up a small one,
a call that is over starts no further work, chat templates cannot loop forever, and the memory the service
reports stays inside its budget.

Order of events, never wall-clock expectations: "answered before", "started no stage", read from the
server's own metrics (stage counters) and from the order in which calls return.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_runtime.bundle.reader import MANIFEST_FILE, manifest_digest, open_bundle
from edge_runtime.client import EdgeError
from edge_runtime.bundle.memory_plan import plan_for_bundle
from edge_runtime.engine.scheduler import SchedulerConfig
from edge_server_process import ServerProcess, free_port

INVALID, RESOURCE = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED


def test_status_never_reports_more_than_the_budget(tiny_bundle: Path, tmp_path: Path) -> None:
    """A budget that holds 2 sequences of the bundle's 8-row batch: the service reports what it holds, and
    that is inside the budget (the state pool used to stage all 8 rows, counted twice)."""
    bundle = open_bundle(tiny_bundle, verify=False)
    context = bundle.limits["max_context"]
    probe = plan_for_bundle(bundle, 10**12, context, bundle.limits["max_batch"],
                            prefill_chunk=SchedulerConfig().max_step_tokens)
    budget = probe.total_bytes(2, context) + 4096
    with ServerProcess(tmp_path, tiny_bundle, "--budget", str(budget), "--no-prefix-cache") as server:
        server.wait_serving()
        with server.client() as c:
            status = c.status()
    memory = status.memory
    assert status.slots_busy + status.slots_free == 2
    assert memory.budget_bytes == budget
    assert memory.used_bytes <= memory.budget_bytes, (memory.used_bytes, memory.budget_bytes)
    # What it reports adds up: weights + overhead + working memory + the slots' state.
    slots_state = 2 * probe.sequence_bytes(context)
    assert memory.used_bytes == memory.weight_bytes + memory.overhead_bytes + memory.working_bytes + slots_state


# ---- helpers ------------------------------------------------------------------------------------------------

BIG_SEND = [("grpc.max_send_message_length", 64 * 2**20)]  # so oversized requests reach the server
STAGES = ("render", "tokenize", "submit")
WAIT_S = 120.0  # how long a poll may wait for an event on a loaded 2-core machine: a ceiling, not an expectation


def _samples(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT_S).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _stages(port: int) -> dict[str, tuple[float, float]]:
    """Per stage: (started, running) as the server counts them."""
    samples = _samples(port)
    out = {}
    for stage in STAGES:
        running = samples.get(("nemotron_edge_stages_running", (("stage", stage),)), 0.0)
        ended = samples.get(("nemotron_edge_stage_seconds_count", (("stage", stage),)), 0.0)
        out[stage] = (running + ended, running)
    return out


def _wait_for(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def _outcomes(port: int, rpc: str) -> dict[str, float]:
    return {dict(labels)["outcome"]: v for (name, labels), v in _samples(port).items()
            if name == "nemotron_edge_requests_total" and ("rpc", rpc) in labels}


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except EdgeError as e:
        return e.code, e.details
    return grpc.StatusCode.OK, ""


def _bundle_with_template(source: Path, out: Path, template: str) -> Path:
    """A copy of `source` whose chat template is `template` (the manifest resealed)."""
    shutil.copytree(source, out)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    manifest["tokenizer"]["chat_template"] = template
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return out


# A template that never finishes on its own: the nested range(100000) loop, then the model's template.
LOOPING = "{%- for i in range(100000) -%}{%- for j in range(100000) -%}{%- endfor -%}{%- endfor -%}"


# ---- cheap bounds -------------------------------------------------------------------------------------------


def test_big_inputs_are_refused_before_any_stage(tiny_bundle: Path, tmp_path: Path) -> None:
    """The issue's inputs (10 MB prompt, chat message, CountTokens text; 14 MB tool schema) and inputs just
    past each per-field bound are refused naming the bound, and the server started no render, tokenize or
    submit stage for any of them; a normal chat still works afterwards. Tiny bundle: context 512 tokens, so
    8192 characters of text and 160 KiB a request."""
    port = free_port()
    with ServerProcess(tmp_path, tiny_bundle, "--metrics-port", str(port)) as server:
        server.wait_serving()
        with server.client(options=BIG_SEND) as c:
            ten_mb = "hello world " * (10_000_000 // 12)
            schema = json.dumps({"type": "object", "description": "x" * 14_000_000})
            many_tools = [{"name": f"t{i}"} for i in range(33)]
            before = _stages(port)
            cases = [
                ("10 MB Generate prompt", lambda: c.generate(ten_mb, max_tokens=2).result(), RESOURCE, "max_request_bytes"),
                ("10 MB Chat message", lambda: c.chat(ten_mb, max_tokens=2).result(), RESOURCE, "max_request_bytes"),
                ("10 MB CountTokens", lambda: c.count_tokens(ten_mb), RESOURCE, "max_request_bytes"),
                ("14 MB tool schema", lambda: c.chat("hi", tools=[{"name": "t", "parameters": schema}]).result(),
                 RESOURCE, "max_request_bytes"),
                ("prompt over the characters", lambda: c.generate("x" * 8193).result(), INVALID, "prompt: "),
                ("chat over the characters", lambda: c.chat([{"role": "system", "content": "x" * 5000},
                                                             {"role": "user", "content": "y" * 5000}]).result(),
                 INVALID, "messages[1].content: the request's text reaches 10000 characters"),
                ("count over the characters", lambda: c.count_tokens("x" * 8193), INVALID, "max_text_chars"),
                ("schema over the characters", lambda: c.chat("hi", tools=[{"name": "t", "parameters": {
                    "type": "object", "description": "x" * 9000}}]).result(), INVALID, "tools[0].parameters_json"),
                ("too many messages", lambda: c.chat([{"role": "user", "content": "hi"}] * 513).result(), INVALID,
                 "513 messages and tool calls; at most 512"),
                ("too many tools", lambda: c.chat("hi", tools=many_tools).result(), INVALID, "33 tools; at most 32"),
                ("thinking close text", lambda: c.chat("hi", thinking_close_text="x" * 1001).result(), INVALID,
                 "thinking_close_text: at most 1000 characters"),
            ]
            for what, call, code, named in cases:
                got, details = _code(call)
                assert (got, named in details) == (code, True), f"{what}: {got.name} {details}"
            assert _stages(port) == before, "a refused request started a stage"
            final = c.chat("still there?", max_tokens=4).result()
            assert final.finish_reason in ("length", "stop")
            assert _stages(port)["tokenize"][0] == before["tokenize"][0] + 1


# ---- a large call never holds up a small one ------------------------------------------------------------------


def test_a_small_chat_is_answered_while_a_large_text_is_tokenized(tiny_bundle: Path, tmp_path: Path) -> None:
    """Limits raised so that a 3.6-million-character CountTokens is accepted and tokenized: a tiny chat sent
    once that tokenization is under way completes before the large call is answered. (Tokenizing used to hold
    the GIL, which stopped the event loop and the engine thread until it was done.)"""
    port = free_port()
    with ServerProcess(tmp_path, tiny_bundle, "--metrics-port", str(port), "--max-request-bytes", "16MiB",
                       "--max-text-chars", "20000000") as server:
        server.wait_serving()
        with server.client(options=BIG_SEND) as big, server.client() as small:
            small.chat("warm up", max_tokens=2).result()
            answered: list[str] = []
            counted: list[int] = []

            def large() -> None:
                counted.append(big.count_tokens("hello world " * 300_000))
                answered.append("large")

            thread = threading.Thread(target=large)
            thread.start()
            try:
                _wait_for("the large text is being tokenized", lambda: _stages(port)["tokenize"][1] == 1)
                final = small.chat("hi", max_tokens=2).result()
                answered.append("small")
            finally:
                thread.join(WAIT_S)
    assert final.finish_reason in ("length", "stop")
    assert answered == ["small", "large"]
    assert counted and counted[0] > 500_000


# ---- a call that is over starts no further work ---------------------------------------------------------------


@pytest.fixture(scope="module")
def looping_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    template = open_bundle(tiny_bundle, verify=False).chat_template
    return _bundle_with_template(tiny_bundle, tmp_path_factory.mktemp("looping") / "bundle", LOOPING + template)


def test_a_call_that_ends_while_rendering_starts_no_further_stage(looping_bundle: Path, tmp_path: Path) -> None:
    """The template's step bound raised so that its loop would run for a long time: a chat cancelled by its
    client, and one whose deadline passes, while the template renders, stop the render and never start
    tokenizing or submitting; the server goes on serving."""
    port = free_port()
    with ServerProcess(tmp_path, looping_bundle, "--metrics-port", str(port),
                       "--template-max-steps", "1000000000") as server:
        server.wait_serving()
        with server.client() as c:
            before = _stages(port)
            stream = c.chat("hi", max_tokens=2)
            events = iter(stream)
            reader = threading.Thread(target=lambda: _code(lambda: next(events)))
            reader.start()
            _wait_for("the chat is rendering", lambda: _stages(port)["render"][1] == 1)
            stream.cancel()
            reader.join(WAIT_S)
            _wait_for("the cancelled render stopped", lambda: _stages(port)["render"] == (before["render"][0] + 1, 0))
            assert _outcomes(port, "Chat").get("cancelled") == 1

            code, _ = _code(lambda: c.chat("hi", max_tokens=2, timeout=1.0).result())
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            _wait_for("the expired render stopped", lambda: _stages(port)["render"] == (before["render"][0] + 2, 0))
            # The client ends the call at its deadline, which can reach the server before the server's own copy
            # of the deadline (set on arrival) passes: either way it is counted as ended early.
            outcomes = _outcomes(port, "Chat")
            assert outcomes.get("cancelled", 0) + outcomes.get("deadline_exceeded", 0) == 2, outcomes

            assert c.status().slots_busy == 0  # a round trip: whatever the event loop had queued has run
            after = _stages(port)
            assert (after["tokenize"], after["submit"]) == (before["tokenize"], before["submit"])
            assert c.count_tokens("still serving") > 0


def test_a_looping_template_is_refused_naming_its_bound(looping_bundle: Path, tmp_path: Path) -> None:
    """The issue's looping template, with the default limits: the service answers INVALID_ARGUMENT naming
    the template's step bound, and `nemotron-edge chat` on the bundle exits with that error, instead of
    both running forever."""
    with ServerProcess(tmp_path / "server", looping_bundle) as server:
        server.wait_serving()
        with server.client() as c:
            code, details = _code(lambda: c.chat("hi", max_tokens=2, timeout=WAIT_S).result())
            assert code == INVALID and "template_max_steps" in details, details
            code, details = _code(lambda: c.count_tokens(messages=[{"role": "user", "content": "hi"}], timeout=WAIT_S))
            assert code == INVALID and "template_max_steps" in details, details
    result = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "chat", "--bundle", str(looping_bundle), "hi"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=WAIT_S)
    assert result.returncode == 2, result.stderr
    assert "template_max_steps" in result.stderr and "steps" in result.stderr
