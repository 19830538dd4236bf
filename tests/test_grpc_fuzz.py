"""Fuzz the running server: random, oversized and malformed requests against one real `nemotron-edge serve`.

Every call must end with OK or a deliberate error code (never UNKNOWN, INTERNAL or UNAVAILABLE, which
would mean an unhandled exception or a dead server); a stream that ends OK must end with exactly one
Final. Afterwards the server is healthy, idle and still answers a normal chat. CI-sized: 200 examples.

The server runs with small thinking and answer caps so that valid chats end quickly; calls get a 1 s
deadline, so requests that would run to the context limit end DEADLINE_EXCEEDED (and their slots are
freed, which the final idle check verifies).
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edge_runtime.api import edge_pb2 as pb
from edge_runtime.client import EdgeClient
from edge_runtime.engine.limits import MAX_MESSAGE_BYTES
from edge_server_process import ServerProcess

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
           grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.FAILED_PRECONDITION}
CALL_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    with ServerProcess(tmp_path_factory.mktemp("fuzz"), tiny_bundle, "--max-thinking-tokens", "4",
                       "--thinking-grace-tokens", "0", "--max-answer-tokens", "4") as proc:
        proc.wait_serving()
        yield proc


@pytest.fixture(scope="module")
def client(server: ServerProcess):
    # Sends up to 4x the server's limit, so oversized messages reach the server instead of failing locally.
    with server.client(options=[("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES)]) as c:
        yield c


# ---- strategies ---------------------------------------------------------------------------------------------
# Requests are built valid, then 0-2 mutations put wild values (out of range, NaN, malformed JSON, unknown
# enum values, oversized text) into random fields: so about half the calls run a real generation and the
# rest probe one validation path each, instead of nearly every call failing the first check.

_TRICKY = ["", " ", "<think>", "</think>", "<TOOLCALL>[{\"name\": \"t\", \"arguments\": {}}]</TOOLCALL>",
           "{{ messages }}", "{% for x in range(10**9) %}", "\x00", "/no_think", "/think", "<SPECIAL_12>",
           "\U0001f916" * 5, "\u202e", "a" * 700]
text = st.one_of(st.text(st.characters(blacklist_categories=("Cs",)), max_size=40), st.sampled_from(_TRICKY))
nonempty_text = st.one_of(st.text(min_size=1, max_size=40), st.sampled_from([t for t in _TRICKY if t]))
name = st.text(st.characters(whitelist_categories=("Ll", "Lu", "Nd")), min_size=1, max_size=12)
json_text = st.one_of(st.sampled_from(["", "{}", "[]", "null", "{\"a\":", "{\"type\": \"object\"}", "NaN",
                                       "[" * 3000, "{\"a\": " * 3000, "\"str\""]), text)
wild_float = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                       st.sampled_from([-1.0, 2.0000001, 1e308, 1e-40, 1e-310, 5e-324]))  # tiny: overflow when divided
uint32 = st.integers(0, 2**32 - 1)
VOCAB = 1024  # the tiny bundle's

VALID_SAMPLING = {
    "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "top_k": st.integers(0, 100),
    "min_p": st.floats(0, 1), "repetition_penalty": st.floats(0.5, 2), "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2), "seed": st.integers(0, 2**64 - 1), "logprobs": st.integers(0, 20),
}
WILD_SAMPLING = {**{k: wild_float for k in ("temperature", "top_p", "min_p", "repetition_penalty",
                                            "presence_penalty", "frequency_penalty")},
                 "top_k": uint32, "logprobs": st.integers(21, 2**32 - 1), "max_tokens": st.sampled_from([0, 2**32 - 1])}


@st.composite
def valid_sampling(draw) -> pb.SamplingParams:
    s = pb.SamplingParams(max_tokens=draw(st.integers(1, 12)), ignore_eos=draw(st.booleans()))
    for field, values in VALID_SAMPLING.items():
        if draw(st.booleans()):
            setattr(s, field, draw(values))
    s.stop.extend(draw(st.lists(st.text(min_size=1, max_size=5), max_size=2)))
    s.stop_token_ids.extend(draw(st.lists(st.integers(0, VOCAB - 1), max_size=2)))
    return s


@st.composite
def valid_chat(draw) -> pb.ChatRequest:
    messages = [pb.Message(role="user", content=draw(text))]
    if draw(st.booleans()):
        messages.insert(0, pb.Message(role="system", content=draw(text)))
    if draw(st.booleans()):
        messages += [pb.Message(role="assistant", content=draw(text),
                                tool_calls=[pb.ToolCall(id="c0", name="dock", arguments_json="{\"at\": 1}")]),
                     pb.Message(role="tool", content=draw(text), tool_call_id="c0", name="dock")]
    r = pb.ChatRequest(messages=messages, sampling=draw(valid_sampling()), priority=draw(st.integers(0, 3)),
                       request_id=draw(name))
    for tool_name in draw(st.lists(name, max_size=2, unique=True)):
        r.tools.add(name=tool_name, description=draw(text), parameters_json="{\"type\": \"object\"}")
    r.tool_choice = draw(st.sampled_from(["", "auto", "none", *[t.name for t in r.tools]]))
    for field, values in (("reasoning", st.booleans()), ("max_thinking_tokens", st.integers(0, 8)),
                          ("thinking_grace_tokens", st.integers(0, 4)), ("thinking_deadline_ms", st.integers(1, 500)),
                          ("max_answer_tokens", st.integers(1, 8)), ("thinking_close_text", st.just("\n</think>\n"))):
        if draw(st.booleans()):
            setattr(r, field, draw(values))
    return r


def _wild_sampling(draw, s: pb.SamplingParams) -> None:
    field = draw(st.sampled_from(sorted(WILD_SAMPLING)))
    setattr(s, field, draw(WILD_SAMPLING[field]))


def _chat_mutations(draw, r: pb.ChatRequest) -> None:
    kind = draw(st.sampled_from(["sampling", "role", "content", "tool", "tool_choice", "thinking", "ids", "enum",
                                 "stop", "tool_call", "no_messages", "long_run"]))
    if not r.messages:  # an earlier mutation removed them; give the message mutations one to work on
        r.messages.add(role="user", content="again")
    if kind == "sampling":
        _wild_sampling(draw, r.sampling)
    elif kind == "role":
        r.messages[0].role = draw(st.sampled_from(["", "robot", "User", "tool"]))
    elif kind == "content":
        r.messages[-1].content = draw(st.one_of(text, st.integers(600, 3000).map(lambda n: "word " * n)))
    elif kind == "tool":
        r.tools.add(name=draw(st.one_of(text, st.just(""))), description=draw(text), parameters_json=draw(json_text))
    elif kind == "tool_choice":
        r.tool_choice = draw(text)
    elif kind == "thinking":
        field = draw(st.sampled_from(["max_thinking_tokens", "thinking_grace_tokens", "thinking_deadline_ms",
                                      "max_answer_tokens", "thinking_close_text"]))
        setattr(r, field, draw(text if field == "thinking_close_text" else uint32))
    elif kind == "ids":
        r.request_id = draw(text)
    elif kind == "enum":
        r.priority = draw(st.integers(4, 2**31 - 1))
    elif kind == "stop":
        r.sampling.stop.extend(draw(st.lists(text, min_size=1, max_size=20)))
        r.sampling.stop_token_ids.extend(draw(st.lists(uint32, min_size=1, max_size=3)))
    elif kind == "tool_call":
        r.messages[0].tool_calls.add(id=draw(text), name=draw(text), arguments_json=draw(json_text))
    elif kind == "no_messages":
        del r.messages[:]
    else:  # runs to the context limit: ends by the call's deadline, or by length
        r.sampling.ClearField("max_tokens")
        r.sampling.ignore_eos = True


@st.composite
def chat_request(draw) -> pb.ChatRequest:
    r = draw(valid_chat())
    for _ in range(draw(st.sampled_from([1, 2, 0, 1]))):
        _chat_mutations(draw, r)
    return r


@st.composite
def generate_request(draw) -> pb.GenerateRequest:
    r = pb.GenerateRequest(sampling=draw(valid_sampling()), priority=draw(st.integers(0, 3)))
    if draw(st.booleans()):
        r.prompt = draw(nonempty_text)
    else:
        r.token_ids.ids.extend(draw(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=20)))
    for _ in range(draw(st.sampled_from([1, 2, 0, 1]))):
        kind = draw(st.sampled_from(["sampling", "ids", "no_input", "long_prompt", "enum", "long_run"]))
        if kind == "sampling":
            _wild_sampling(draw, r.sampling)
        elif kind == "ids":
            r.token_ids.ids.extend(draw(st.lists(uint32, min_size=1, max_size=5)))
        elif kind == "no_input":
            r.ClearField("input")
        elif kind == "long_prompt":
            r.token_ids.ids.extend([7] * draw(st.integers(500, 700)))
        elif kind == "enum":
            r.priority = draw(st.integers(4, 2**31 - 1))
        else:
            r.sampling.ClearField("max_tokens")
            r.sampling.ignore_eos = True
    return r


@st.composite
def count_request(draw) -> pb.CountTokensRequest:
    kind = draw(st.sampled_from(["text", "chat", "chat", "none"]))
    if kind == "text":
        return pb.CountTokensRequest(text=draw(text))
    if kind == "chat":
        chat = draw(chat_request())
        counted = pb.ChatInput(messages=chat.messages, tools=chat.tools)
        if chat.HasField("reasoning"):
            counted.reasoning = chat.reasoning
        return pb.CountTokensRequest(chat=counted)
    return pb.CountTokensRequest()


_METHODS = ["Chat", "Generate", "CountTokens", "GetModelInfo", "GetStatus"]
calls = st.one_of(
    chat_request().map(lambda r: ("Chat", r)),
    chat_request().map(lambda r: ("Chat", r)),
    generate_request().map(lambda r: ("Generate", r)),
    count_request().map(lambda r: ("CountTokens", r)),
    # Malformed: arbitrary bytes to any method (most are not a valid message, some happen to be).
    st.tuples(st.sampled_from(_METHODS), st.binary(max_size=64)),
    # Oversized: just past the server's receive limit.
    st.sampled_from(_METHODS[:3]).map(lambda m: (m, b"\x0a" + b"\xff" * (MAX_MESSAGE_BYTES + 16))),
)


# ---- the test ---------------------------------------------------------------------------------------------


def _call(client: EdgeClient, method: str, request) -> grpc.StatusCode:
    """Send `request` (a proto, or raw bytes) and return the status code it ended with."""
    streaming = method in ("Chat", "Generate")
    path = f"/nemotron_edge.v1.EdgeLM/{method}"
    serialize = (lambda b: b) if isinstance(request, bytes) else (lambda m: m.SerializeToString())
    if streaming:
        call = client.channel.unary_stream(path, request_serializer=serialize,
                                           response_deserializer=pb.ChatEvent.FromString)
    else:
        call = client.channel.unary_unary(path, request_serializer=serialize)
    try:
        result = call(request, timeout=CALL_TIMEOUT_S)
        if streaming:
            events = list(result)
            kinds = [e.WhichOneof("event") for e in events]
            assert kinds and kinds[-1] == "final" and kinds.count("final") == 1, kinds
    except grpc.RpcError as e:
        assert e.code() in ALLOWED, f"{method}: {e.code()} {e.details()}"
        return e.code()
    return grpc.StatusCode.OK


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(call=calls)
def test_random_requests_get_a_status_code_and_the_server_survives(server: ServerProcess, client: EdgeClient,
                                                                    call) -> None:
    method, request = call
    code = _call(client, method, request)
    event(f"{method} {'bytes' if isinstance(request, bytes) else 'proto'}: {code.name}")  # --hypothesis-show-statistics
    assert code in ALLOWED
    assert server.proc.poll() is None, server.log()


def test_server_is_healthy_and_idle_after_the_fuzzing(server: ServerProcess, client: EdgeClient) -> None:
    # Runs after the fuzz test (file order). No exception escaped anywhere (an engine-thread crash would
    # otherwise only show as every later call running into its deadline)...
    assert "Traceback" not in server.log(), server.log()
    # ...and everything cancelled or expired has released its slot.
    assert client.health() == "SERVING"
    deadline = time.monotonic() + 60  # bounds a failure (slots never freed), not how fast they are
    while (status := client.status()).slots_busy or status.queue_depth:
        assert time.monotonic() < deadline, status
        time.sleep(0.02)
    final = client.chat("still here?", max_tokens=4).result()
    assert final.finish_reason in ("length", "stop")
