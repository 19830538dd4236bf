"""The gRPC service end to end: the real `nemotron-edge serve` in a subprocess on a Unix socket, driven by
the real client (edge_runtime.client). One shared server for the load, cancellation, deadline, error and
metrics tests; separate servers where a test ends the process (SIGTERM drain), refuses to start (TCP
without auth) or needs other settings (bearer token)."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import jsonschema
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from edge_runtime.api import edge_pb2 as pb
from edge_runtime.client import EdgeClient, EdgeError
from edge_runtime.engine.limits import MAX_MESSAGE_BYTES
from edge_runtime.engine.records import Delta, Final
from edge_server_process import ServerProcess, free_port, serve_command

MAX_QUEUE = 32  # with the tiny bundle's 8 slots: 40 requests fit, 41 do not
LONG = dict(max_tokens=100_000, ignore_eos=True)  # runs to the context limit unless stopped


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory, metrics_port: int):
    with ServerProcess(tmp_path_factory.mktemp("grpc"), tiny_bundle, "--max-queue", str(MAX_QUEUE),
                       "--metrics-port", str(metrics_port)) as proc:
        proc.wait_serving()
        yield proc


@pytest.fixture()
def client(server: ServerProcess):
    with server.client() as c:
        yield c


def _wait_idle(client: EdgeClient, timeout: float = 60.0) -> pb.ServiceStatus:
    """GetStatus until no slot is busy and nothing waits (or `timeout`: generous, since a loaded 2-core
    machine can take seconds to drain 40 streams); the last status."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.status()
        if (status.slots_busy == 0 and status.queue_depth == 0) or time.monotonic() > deadline:
            return status
        time.sleep(0.02)


def _check_stream(events: list, max_tokens: int) -> Final:
    """A complete stream: deltas, then exactly one Final, last, whose usage matches the streamed tokens."""
    assert events, "no events"
    final = events[-1]
    assert isinstance(final, Final), f"last event is {type(final).__name__}"
    assert sum(isinstance(e, Final) for e in events) == 1
    assert final.finish_reason in ("length", "stop", "stop_sequence"), final
    assert final.error is None
    streamed = [t for e in events if isinstance(e, Delta) for t in e.token_ids]
    assert final.token_ids == streamed
    assert final.usage.completion_tokens == len(streamed) <= max_tokens
    assert final.usage.prompt_tokens > 0
    assert 0 < final.timings.time_to_first_token_ms <= final.timings.total_ms
    return final


def test_health_reflection_and_socket_mode(server: ServerProcess, client: EdgeClient) -> None:
    assert client.health() == "SERVING"
    assert client.health("nemotron_edge.v1.EdgeLM") == "SERVING"
    assert stat.S_IMODE(server.socket_path.stat().st_mode) == 0o660
    assert stat.S_ISSOCK(server.socket_path.stat().st_mode)

    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="nemotron_edge.v1.EdgeLM")]
    responses = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    services = {s.name for s in responses[0].list_services_response.service}
    assert {"nemotron_edge.v1.EdgeLM", "grpc.health.v1.Health"} <= services
    assert responses[1].file_descriptor_response.file_descriptor_proto  # the proto itself is served


def test_model_info_count_tokens_and_status(client: EdgeClient) -> None:
    info = client.model_info()
    assert (info.max_batch, info.max_context, info.has_tokenizer) == (8, 512, True)
    assert info.layer_pattern and info.bundle_hash and info.chat_template.supports_reasoning_toggle
    assert "<think>" in {t.text for t in info.chat_template.special_tokens}
    messages = [{"role": "user", "content": "hello there"}]
    assert client.count_tokens("hello there") > 0
    assert client.count_tokens(messages=messages) > client.count_tokens("hello there")  # the template adds tokens
    status = client.status()
    assert status.slots_busy + status.slots_free == 8
    assert status.memory.process_rss_bytes > 0 and status.memory.used_bytes > 0
    assert status.uptime_s > 0 and "engine_steps" in status.telemetry


def test_32_concurrent_streaming_chats_complete(client: EdgeClient) -> None:
    def one(i: int) -> list:
        return list(client.chat(f"question {i}: where is the dock?", max_tokens=24, request_id=f"c{i}"))

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(32)))
    finals = [_check_stream(events, 24) for events in results]
    assert len(finals) == 32
    # More streams than slots: some of them must have waited in the queue.
    assert max(f.timings.queue_wait_ms for f in finals) > min(f.timings.queue_wait_ms for f in finals)
    status = _wait_idle(client)
    assert (status.slots_busy, status.queue_depth) == (0, 0)


def test_cancelling_10_of_40_streams_frees_every_slot(client: EdgeClient) -> None:
    cancelled_codes: list[grpc.StatusCode] = []
    lock = threading.Lock()

    def cancelled_mid_stream(i: int) -> None:
        stream = client.chat(f"long {i}", **LONG)
        try:
            for n, _event in enumerate(stream, 1):
                if n == 3:
                    stream.cancel()
        except EdgeError as e:
            with lock:
                cancelled_codes.append(e.code)

    def short(i: int) -> Final:
        return _check_stream(list(client.chat(f"short {i}", max_tokens=16)), 16)

    with ThreadPoolExecutor(40) as pool:
        long_runs = [pool.submit(cancelled_mid_stream, i) for i in range(10)]
        short_runs = [pool.submit(short, i) for i in range(30)]
        finals = [f.result(timeout=120) for f in short_runs]
        for f in long_runs:
            f.result(timeout=120)
    assert len(finals) == 30
    assert cancelled_codes == [grpc.StatusCode.CANCELLED] * 10
    status = _wait_idle(client)
    assert (status.slots_busy, status.queue_depth) == (0, 0)


def test_cancel_ends_the_generation_and_frees_the_slot(client: EdgeClient) -> None:
    before = client.status().telemetry["tokens_generated"]
    stream = client.chat("one long answer", **LONG)
    events = iter(stream)
    next(events)
    busy = client.status()
    assert busy.slots_busy == 1 and busy.memory.state_bytes_in_use > 0
    stream.cancel()
    status = _wait_idle(client)
    assert status.slots_busy == 0 and status.memory.state_bytes_in_use == 0
    # Uncancelled, the request could only end at the context limit (~490 tokens): far fewer were generated,
    # so the cancel ended it. (A wall-clock bound would be flaky on a loaded 2-core CI machine.)
    assert status.telemetry["tokens_generated"] - before < 400


def _bad_requests(client: EdgeClient, address: str):
    """(what, call, expected code, text the message must contain)."""
    INVALID = grpc.StatusCode.INVALID_ARGUMENT
    chat = lambda *a, **k: client.chat(*a, **k).result()
    gen = lambda *a, **k: client.generate(*a, **k).result()
    big = EdgeClient(address, options=[("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES)])
    return [
        ("no messages", lambda: chat([]), INVALID, "messages"),
        ("prompt too long", lambda: chat("word " * 1000), INVALID, "prompt"),  # 1000+ tokens, 5000 characters
        ("token prompt too long", lambda: gen([7] * 600), INVALID, "prompt"),
        ("negative temperature", lambda: chat("hi", sampling={"temperature": -1.0}), INVALID, "temperature"),
        ("top_p zero", lambda: chat("hi", sampling={"top_p": 0.0}), INVALID, "top_p"),
        ("NaN min_p", lambda: chat("hi", sampling={"min_p": float("nan")}), INVALID, "min_p"),
        ("overflowing repetition penalty", lambda: chat("hi", sampling={"repetition_penalty": 1e-40}), INVALID,
         "repetition_penalty"),
        ("too many logprobs", lambda: gen("hi", sampling={"logprobs": 50}), INVALID, "logprobs"),
        ("max_tokens zero", lambda: chat("hi", max_tokens=0), INVALID, "max_tokens"),
        ("unknown tool", lambda: chat("hi", tool_choice="launch", tools=[{"name": "dock"}]), INVALID, "tool_choice"),
        ("token id out of range", lambda: gen([1, 5000]), INVALID, "token_ids"),
        ("stop token id out of range", lambda: gen([1, 2], stop_token_ids=[99999]), INVALID, "stop_token_ids"),
        ("unknown role", lambda: chat([{"role": "robot", "content": "beep"}]), INVALID, "messages[0].role"),
        ("tool parameters not JSON", lambda: chat("hi", tools=[{"name": "t", "parameters": "{oops"}]), INVALID,
         "tools[0].parameters_json"),
        ("schema keyword the grammar cannot enforce", lambda: chat("hi", tools=[{"name": "t", "parameters": {
            "type": "object", "properties": {"xs": {"type": "array", "uniqueItems": True}}}}]), INVALID, "uniqueItems"),
        ("response format schema not JSON", lambda: client.stub.Chat(pb.ChatRequest(
            messages=[pb.Message(role="user", content="hi")],
            response_format=pb.ResponseFormat(json_schema="{oops"))).next(), INVALID, "response_format.json_schema"),
        ("bad response format regex", lambda: chat("hi", response_format={"type": "regex", "regex": "(open"}), INVALID,
         "response_format.regex"),
        ("empty stop string", lambda: chat("hi", stop=[""]), INVALID, "sampling.stop[0]"),
        ("no generate input", lambda: client.stub.Generate(pb.GenerateRequest()).next(), INVALID, "input"),
        ("no count input", lambda: client.stub.CountTokens(pb.CountTokensRequest()), INVALID, "input"),
        ("unknown priority", lambda: client.stub.Chat(pb.ChatRequest(
            messages=[pb.Message(role="user", content="hi")], priority=42)).next(), INVALID, "priority"),
        ("message over the size limit", lambda: big.chat("x" * (MAX_MESSAGE_BYTES + 1024)).result(),
         grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    ]


def test_every_kind_of_bad_request_gets_its_status_code(server: ServerProcess, client: EdgeClient) -> None:
    for what, call, code, text in _bad_requests(client, server.address):
        with pytest.raises((EdgeError, grpc.RpcError)) as e:
            call()
        got = e.value.code if isinstance(e.value, EdgeError) else e.value.code()
        details = e.value.details if isinstance(e.value, EdgeError) else e.value.details()
        assert got == code, f"{what}: {got} {details}"
        assert text in details, f"{what}: message {details!r} does not name {text!r}"
    assert client.health() == "SERVING"
    # A temperature too small for float arithmetic (found by the fuzz test: it crashed the engine) is greedy.
    tiny = [_check_stream(list(client.chat("same", max_tokens=8, sampling={"temperature": 1e-310})), 8)
            for _ in range(2)]
    assert tiny[0].token_ids == tiny[1].token_ids
    _check_stream(list(client.chat("still there?", max_tokens=8)), 8)


def test_a_full_queue_is_resource_exhausted(client: EdgeClient) -> None:
    streams = [client.chat(f"fill {i}", **LONG) for i in range(8 + MAX_QUEUE)]
    readers = [threading.Thread(target=_drain_quietly, args=(s,)) for s in streams]
    for r in readers:
        r.start()
    try:
        deadline = time.monotonic() + 30
        while client.status().queue_depth < MAX_QUEUE and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(EdgeError) as e:
            client.chat("one too many", max_tokens=4).result()
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue" in e.value.details
    finally:
        for s in streams:
            s.cancel()
        for r in readers:
            r.join(30)
    status = _wait_idle(client)
    assert (status.slots_busy, status.queue_depth) == (0, 0)


def _drain_quietly(stream) -> None:
    try:
        for _ in stream:
            pass
    except EdgeError:
        pass


def test_metrics_count_requests_tokens_and_latencies(client: EdgeClient, metrics_port: int) -> None:
    for i in range(2):
        client.chat(f"metrics {i}", max_tokens=8).result()
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    chat_ok = sum(v for (name, labels), v in samples.items()
                  if name == "nemotron_edge_requests_total" and ("rpc", "Chat") in labels
                  and dict(labels)["outcome"] in ("length", "stop"))
    assert chat_ok >= 2
    assert samples[("nemotron_edge_slots_total", ())] == 8
    assert samples[("nemotron_edge_queue_depth", ())] == 0
    assert samples[("nemotron_edge_memory_bytes", (("kind", "process_rss"),))] > 0
    assert samples[("nemotron_edge_time_to_first_token_seconds_count", ())] >= 2
    assert samples[("nemotron_edge_token_latency_seconds_count", ())] >= 2 * 7
    assert sum(v for (name, _), v in samples.items() if name == "nemotron_edge_generated_tokens_total") >= 16


def test_constrained_tool_calls_through_the_service_and_their_metrics(client: EdgeClient, metrics_port: int) -> None:
    schema = {"type": "object", "properties": {"arm": {"enum": ["left", "right"]},
                                               "cm": {"type": "integer", "minimum": 0, "maximum": 99}},
              "required": ["arm", "cm"], "additionalProperties": False}
    for seed in range(3):
        final = client.chat("Move.", tools=[{"name": "move_arm", "parameters": schema}], tool_choice="required",
                            parallel_tool_calls=False, reasoning=False, max_tokens=64,
                            sampling={"temperature": 1.0, "seed": seed}).result()
        assert final.finish_reason == "stop" and final.grammar == "complete", final
        [call] = final.tool_calls
        assert call.error is None and call.name == "move_arm"
        jsonschema.validate(json.loads(call.arguments_json), schema)
    # No string of 2000 characters fits in 8 tokens: the call is cut off, and says so.
    long = {"type": "object", "properties": {"text": {"type": "string", "minLength": 2000}}, "required": ["text"]}
    cut = client.chat("Note.", tools=[{"name": "note", "parameters": long}], tool_choice="required", reasoning=False,
                      max_tokens=8).result()
    assert cut.finish_reason == "length" and cut.grammar == "cut_off" and "max_tokens" in cut.error, cut
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    counted = {s.labels["outcome"]: s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "nemotron_edge_constrained_answers_total"}
    assert counted["complete"] >= 3 and counted["cut_off"] >= 1, counted


def test_sigterm_drains_running_streams_then_exits_zero(tiny_bundle: Path, tmp_path: Path) -> None:
    with ServerProcess(tmp_path, tiny_bundle, "--drain-grace", "60") as server:
        server.wait_serving()
        client = server.client()
        streams = [client.chat(f"drain {i}", max_tokens=450, ignore_eos=True) for i in range(8)]
        iterators = [iter(s) for s in streams]
        first = [next(it) for it in iterators]  # all 8 are generating
        assert client.status().slots_busy == 8
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while client.health() != "NOT_SERVING" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.health() == "NOT_SERVING"
        with pytest.raises(EdgeError) as refused:
            client.chat("too late", max_tokens=4).result()
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        finals = [_check_stream([f, *it], 450) for f, it in zip(first, iterators)]
        assert [f.finish_reason for f in finals] == ["length"] * 8
        assert all(f.usage.completion_tokens == 450 for f in finals)
        assert server.wait(60) == 0, server.log()
        assert not server.socket_path.exists()
        client.close()


def test_non_loopback_tcp_without_auth_is_refused_at_startup(tiny_bundle: Path, tmp_path: Path) -> None:
    result = subprocess.run(serve_command("--bundle", str(tiny_bundle), "--listen", f"0.0.0.0:{free_port()}"),
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "non-loopback" in result.stderr and "--auth-token-file" in result.stderr, result.stderr


def test_bearer_token_authenticates_calls(tiny_bundle: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    port = free_port()
    # A non-loopback TCP listener is allowed once clients must authenticate.
    with ServerProcess(tmp_path, tiny_bundle, "--listen", f"0.0.0.0:{port}",
                       "--auth-token-file", str(token_file)) as server:
        server.wait_serving()  # health needs no token
        for address in (server.address, f"127.0.0.1:{port}"):
            for token in (None, "wrong-token", "s3cret-token-and-more"):
                with EdgeClient(address, token=token) as c:
                    with pytest.raises(EdgeError) as e:
                        c.status()
                    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
                    with pytest.raises(EdgeError) as e:
                        c.chat("hi", max_tokens=4).result()
                    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
            with EdgeClient(address, token="s3cret-token") as c:
                assert c.status().slots_free == 8
                _check_stream(list(c.chat("hi", max_tokens=4)), 4)


def test_stream_interval_paces_messages_end_to_end(tiny_bundle: Path, tmp_path: Path) -> None:
    """`--stream-interval-ms` reaches the service: a stream sends what has queued at most once per interval,
    every token still arrives once and in order, and the first tokens are not held back."""
    interval_s, tokens = 1.0, 400  # the tiny bundle holds 512 tokens
    with ServerProcess(tmp_path, tiny_bundle, "--stream-interval-ms", str(int(interval_s * 1000))) as proc:
        proc.wait_serving()
        with proc.client() as c:
            start = time.monotonic()
            events = list(c.generate("the robot", max_tokens=tokens, ignore_eos=True))
            elapsed = time.monotonic() - start
    _check_stream(events, tokens)
    deltas = [e for e in events if isinstance(e, Delta)]
    assert len(events[-1].token_ids) == tokens
    # Counted against the time the stream took, so a slow machine sends more messages, never too many.
    assert len(deltas) <= elapsed / interval_s + 2, f"{len(deltas)} messages in {elapsed:.2f} s"
    # A first message held back for the interval would carry everything generated meanwhile.
    assert len(deltas[0].token_ids) < tokens, "the first message waited for the interval"


def test_native_kernels_given_to_serve_are_registered_and_named(kernel_lib: str, tmp_path: Path) -> None:
    """`serve --custom-op-library`, as scripts/demo.sh starts it once the kernels are built: its sessions
    register the library (one that does not load stops the start), the log names it, and chats complete."""
    from edge_runtime.bundle.demo import DEMO_BUNDLE

    with ServerProcess(tmp_path / "with", DEMO_BUNDLE, "--custom-op-library", kernel_lib) as server:
        server.wait_serving()
        with server.client() as client:
            _check_stream(list(client.chat("Hello", max_tokens=8)), 8)
        assert f"native kernels {kernel_lib}" in server.log()
    broken = tmp_path / "broken.so"
    broken.touch()
    with ServerProcess(tmp_path / "broken", DEMO_BUNDLE, "--custom-op-library", str(broken)) as server:
        assert server.wait(60) == 1 and f"Failed to load library {broken}" in server.log(), server.log()


def test_a_pinned_prompt_and_the_next_turn_come_from_the_prefix_cache(tiny_bundle: Path, tmp_path: Path) -> None:
    system = "You are the robot's assistant."
    with ServerProcess(tmp_path, tiny_bundle, "--pinned-prompt", system, "--prefix-cache-budget", "64MiB") as proc:
        proc.wait_serving()
        with proc.client() as client:
            status = client.status().prefix_cache
            assert (status.entries, status.budget_bytes) == (1, 64 << 20) and status.bytes > 0
            first = list(client.chat("where is the dock?", system=system, max_tokens=8))[-1]
            head = first.usage.cached_prompt_tokens
            assert 0 < head < first.usage.prompt_tokens  # the pinned system part
            history = [{"role": "system", "content": system}, {"role": "user", "content": "where is the dock?"},
                       {"role": "assistant", "content": first.answer_text}, {"role": "user", "content": "and then?"}]
            second = list(client.chat(history, max_tokens=8))[-1]
            assert second.usage.cached_prompt_tokens > first.usage.prompt_tokens - 8  # up to the first turn's end
            assert list(client.chat(history, max_tokens=8, prefix_cache=False))[-1].usage.cached_prompt_tokens == 0
            status = client.status().prefix_cache
            assert status.hits == 2 and status.tokens_saved == head + second.usage.cached_prompt_tokens
            with pytest.raises(EdgeError, match="capture_after"):
                list(client.chat("hi", capture_after=[5], max_tokens=4))
