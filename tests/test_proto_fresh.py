"""The committed gRPC code matches edge.proto, imports without grpcio-tools, and serves a call."""

from __future__ import annotations

import subprocess
import sys
from concurrent import futures
from importlib.metadata import version
from pathlib import Path

import grpc
import pytest

from edge_runtime.api import edge_pb2, edge_pb2_grpc
from edge_runtime.api.regen import API_DIR, GENERATED, regenerate


def test_committed_code_is_fresh(tmp_path):
    regenerate(tmp_path)
    stale = [n for n in GENERATED if (tmp_path / n).read_text() != (API_DIR / n).read_text()]
    # The generated text names protoc's version, so a different grpcio-tools also shows up here.
    assert not stale, (
        f"{stale} differ from what edge.proto generates with grpcio-tools {version('grpcio-tools')}: "
        "run `python -m edge_runtime.api.regen` and commit"
    )


def test_grpc_module_imports_the_package_not_the_proto_path():
    text = (API_DIR / "edge_pb2_grpc.py").read_text()
    assert "from edge_runtime.api import edge_pb2" in text
    assert "nemotron_edge.v1 import" not in text


def test_runtime_import_needs_no_grpc_tools():
    # A fresh interpreter with grpc_tools made unimportable: the generated code and regen's module import.
    code = (
        "import sys; sys.modules['grpc_tools'] = None\n"
        "from edge_runtime.api import edge_pb2, edge_pb2_grpc, regen\n"
        "print(edge_pb2.DESCRIPTOR.package)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "nemotron_edge.v1"


def test_optional_fields_distinguish_unset_from_zero():
    req = edge_pb2.ChatRequest(sampling=edge_pb2.SamplingParams(temperature=0.0))
    assert req.sampling.HasField("temperature") and not req.sampling.HasField("top_p")
    assert not req.HasField("reasoning")
    assert req.priority == edge_pb2.PRIORITY_UNSPECIFIED


class _Echo(edge_pb2_grpc.EdgeLMServicer):
    """A servicer that streams the last message back, to exercise the generated stubs end to end."""

    def Chat(self, request, context):
        text = request.messages[-1].content
        yield edge_pb2.ChatEvent(delta=edge_pb2.Delta(text=text, channel=edge_pb2.CHANNEL_ANSWER))
        yield edge_pb2.ChatEvent(final=edge_pb2.Final(finish_reason=edge_pb2.FINISH_REASON_STOP))

    def CountTokens(self, request, context):
        return edge_pb2.CountTokensResponse(count=len(request.text.split()))


def test_stub_and_servicer_talk_over_a_unix_socket(tmp_path: Path):
    socket = f"unix://{tmp_path / 'edge.sock'}"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    edge_pb2_grpc.add_EdgeLMServicer_to_server(_Echo(), server)
    server.add_insecure_port(socket)
    server.start()
    try:
        with grpc.insecure_channel(socket) as channel:
            stub = edge_pb2_grpc.EdgeLMStub(channel)
            events = list(stub.Chat(edge_pb2.ChatRequest(messages=[edge_pb2.Message(role="user", content="hello")])))
            assert [e.WhichOneof("event") for e in events] == ["delta", "final"]
            assert events[0].delta.text == "hello"
            assert stub.CountTokens(edge_pb2.CountTokensRequest(text="a b c")).count == 3
            with pytest.raises(grpc.RpcError) as err:
                stub.GetStatus(edge_pb2.GetStatusRequest())
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(None)
