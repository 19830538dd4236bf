"""The Python client of the nemotron-edge service: `EdgeClient` (chat, generate, count tokens, status) over
a Unix socket or TCP, streams of the same event records the in-process engine emits.

Imports: grpc, the generated `edge_runtime.api` and the engine's plain records; never the engine itself,
ONNX Runtime or torch.
"""

from edge_runtime.client.connection import EdgeClient, EdgeError, EventStream, channel_target

__all__ = ["EdgeClient", "EdgeError", "EventStream", "channel_target"]
