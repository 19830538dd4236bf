"""The OpenAI-compatible HTTP API end to end: the real `nemotron-edge serve` with `--http-listen` on a Unix
socket, driven by the official `openai` package (a client we did not write) over an httpx transport for
that socket, beside the gRPC client on the same process and engine."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import httpx2
import jsonschema
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_server_process import ServerProcess, free_port

TOKEN = "s3cret-token"
MOVE_ARM = {"type": "function", "function": {
    "name": "move_arm", "description": "Move an arm to a point.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["arm", "x"],
                   "properties": {"arm": {"enum": ["left", "right"]}, "x": {"type": "integer", "minimum": 0, "maximum": 9}}}}}


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(tiny_long_bundle: Path, tmp_path_factory: pytest.TempPathFactory, metrics_port: int):
    workdir = tmp_path_factory.mktemp("http")
    (workdir / "token").write_text(TOKEN + "\n")
    with ServerProcess(workdir, tiny_long_bundle, "--http-listen", f"unix:{workdir / 'openai.sock'}",
                       "--auth-token-file", str(workdir / "token"), "--metrics-port", str(metrics_port)) as proc:
        proc.wait_serving()
        yield proc


def openai_client(server: ServerProcess, token: str = TOKEN) -> openai.OpenAI:
    transport = httpx2.HTTPTransport(uds=str(server.workdir / "openai.sock"))
    return openai.OpenAI(base_url="http://localhost/v1", api_key=token, max_retries=0,
                         http_client=httpx2.Client(transport=transport))


@pytest.fixture()
def client(server: ServerProcess) -> openai.OpenAI:
    return openai_client(server)


def test_models_and_a_non_streaming_chat_with_reasoning_apart(client):
    [model] = client.models.list().data
    reply = client.chat.completions.create(model=model.id, messages=[{"role": "user", "content": "Which door?"}],
                                           max_tokens=40, seed=1, extra_body={"max_thinking_tokens": 12})
    choice = reply.choices[0]
    message = choice.message.model_dump()
    assert message["reasoning_content"], message  # the reasoning, apart from the answer
    assert "<think>" not in (message["content"] or "") + message["reasoning_content"]
    usage = reply.usage
    assert usage.completion_tokens_details.reasoning_tokens <= 12  # the budget, through extra_body
    assert usage.prompt_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens >= 0
    assert choice.finish_reason in ("stop", "length")


def test_cached_tokens_report_the_prefix_cache(client):
    messages = [{"role": "system", "content": "You steer a two-armed robot. " * 20},
                {"role": "user", "content": "Which arm?"}]
    first = client.chat.completions.create(model="any", messages=messages, max_tokens=4, extra_body={"reasoning": False})
    again = client.chat.completions.create(model="any", messages=messages, max_tokens=4, extra_body={"reasoning": False})
    assert first.usage.prompt_tokens == again.usage.prompt_tokens
    # The system prompt's head, snapshotted by the first request, starts the second.
    assert 0 < again.usage.prompt_tokens_details.cached_tokens < again.usage.prompt_tokens


def test_streaming_chat_sends_reasoning_then_answer_deltas_and_usage(client):
    stream = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Plan the path."}],
                                            max_tokens=48, stream=True, stream_options={"include_usage": True},
                                            extra_body={"max_thinking_tokens": 16, "max_answer_tokens": 16})
    reasoning, answer, finish, usage, order = "", "", None, None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta.model_dump()
            if delta.get("reasoning_content"):
                reasoning += delta["reasoning_content"]
                order.append("reasoning")
            if delta.get("content"):
                answer += delta["content"]
                order.append("answer")
            finish = choice.finish_reason or finish
    assert reasoning and order[0] == "reasoning"
    assert "answer" not in order or order.index("answer") > max(i for i, o in enumerate(order) if o == "reasoning")
    assert finish in ("stop", "length") and usage is not None
    assert usage.completion_tokens_details.reasoning_tokens <= 16


def test_a_tool_call_round_trip(client):
    messages = [{"role": "user", "content": "Move the left arm to 3."}]
    first = client.chat.completions.create(model="any", messages=messages, tools=[MOVE_ARM], tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=120, temperature=1.0, seed=4,
                                           extra_body={"max_thinking_tokens": 8})
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "move_arm" and call.id
    jsonschema.validate(json.loads(call.function.arguments), MOVE_ARM["function"]["parameters"])
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"done": true}'}]
    second = client.chat.completions.create(model="any", messages=messages, tools=[MOVE_ARM], max_tokens=60,
                                            extra_body={"max_thinking_tokens": 8})
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    for call in second.choices[0].message.tool_calls or []:  # `auto`: any call it makes is valid too
        jsonschema.validate(json.loads(call.function.arguments), MOVE_ARM["function"]["parameters"])
    assert second.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result are in the prompt


def test_structured_output_through_response_format(client):
    schema = {"type": "object", "additionalProperties": False, "required": ["arm", "steps"],
              "properties": {"arm": {"enum": ["left", "right"]}, "steps": {"type": "integer", "minimum": 1, "maximum": 9}}}
    reply = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Which arm, how many steps?"}], max_tokens=80, temperature=1.0,
        seed=2, response_format={"type": "json_schema", "json_schema": {"name": "plan", "schema": schema, "strict": True}},
        extra_body={"max_thinking_tokens": 8})
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_raw_completion(client):
    reply = client.completions.create(model="any", prompt="The robot", max_tokens=6, seed=0)
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens <= 6
    chunks = list(client.completions.create(model="any", prompt="The robot", max_tokens=6, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == reply.choices[0].text  # greedy: the same text


def test_errors_are_openai_error_objects_with_their_status(server, client):
    with pytest.raises(openai.AuthenticationError) as e:
        openai_client(server, token="wrong").models.list()
    assert e.value.status_code == 401
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="any", messages=[{"role": "user", "content": "hi"}], temperature=-1)
    assert "temperature" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="any", messages=[{"role": "user", "content": "hi"}],
                                       tools=[{"type": "function", "function": {"name": "t", "parameters": {
                                           "type": "object", "properties": {"xs": {"type": "array", "uniqueItems": True}}}}}])
    assert "uniqueItems" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="any", messages=[{"role": "user", "content": "word " * 3000}])
    assert "prompt" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:  # refused before rendering, naming the field (tiny: 32768 chars)
        client.chat.completions.create(model="any", messages=[{"role": "user", "content": "hi"},
                                                              {"role": "user", "content": "x" * 40_000}])
    assert "messages[1].content" in str(e.value) and "max_text_chars" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="any", messages=[{"role": "user", "content": "hi"}], tools=[MOVE_ARM, MOVE_ARM])
    assert "tools[1].function.name" in str(e.value) and "given twice" in str(e.value)


def test_a_disconnected_stream_frees_its_slot_and_both_front_ends_are_counted(server, client, metrics_port):
    with server.client(token=TOKEN) as grpc_client:
        before = grpc_client.status()
        busy_before, generated_before = before.slots_busy, before.telemetry["tokens_generated"]
        stream = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Go on."}],
                                                max_tokens=1900, stream=True, extra_body={"ignore_eos": True})
        next(iter(stream))
        assert grpc_client.status().slots_busy == busy_before + 1
        stream.close()  # the client goes away mid-stream
        deadline = time.monotonic() + 30
        while grpc_client.status().slots_busy > busy_before and time.monotonic() < deadline:
            time.sleep(0.05)
        status = grpc_client.status()
        assert status.slots_busy == busy_before
        # Fewer than its 1900 tokens were generated: the disconnect ended the request, not its limit.
        assert status.telemetry["tokens_generated"] - generated_before < 1900
        grpc_client.chat("and gRPC too", max_tokens=4).result()
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    rpcs = {s.labels["rpc"] for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "nemotron_edge_requests_total"}
    assert {"ChatCompletions", "Chat"} <= rpcs, rpcs


def test_a_full_queue_is_429_and_draining_is_503(tiny_long_bundle: Path, tmp_path: Path):
    """One slot and one place in the queue: a third request is refused with 429; after SIGTERM new requests
    get 503 while the running ones finish."""
    import signal

    with ServerProcess(tmp_path, tiny_long_bundle, "--http-listen", f"unix:{tmp_path / 'openai.sock'}",
                       "--max-sequences", "1", "--max-queue", "1", "--drain-grace", "60") as server:
        server.wait_serving()
        client = openai_client(server, token="unused")
        long = dict(model="any", messages=[{"role": "user", "content": "Go on."}], max_tokens=1500, stream=True,
                    extra_body={"ignore_eos": True})
        running = client.chat.completions.create(**long)
        first = next(iter(running))
        waiting = threading.Thread(target=lambda: list(client.chat.completions.create(**long)))
        waiting.start()
        with server.client() as grpc_client:
            deadline = time.monotonic() + 30
            while grpc_client.status().queue_depth < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(model="any", messages=[{"role": "user", "content": "me too"}], max_tokens=4)
        assert e.value.status_code == 429 and "queue" in str(e.value)
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.models.list()
            except openai.InternalServerError as refused:
                assert refused.status_code == 503 and "shutting down" in str(refused)
                break
            assert time.monotonic() < deadline, "no 503 while draining"
            time.sleep(0.02)
        chunks = [first, *running]
        assert chunks[-1].choices[0].finish_reason == "length"  # the running stream finished its 1500 tokens
        waiting.join(120)
        assert server.wait(60) == 0, server.log()
