"""What an ONNX model file declares about itself: its graph's inputs and outputs, and its initializers (name,
element type, dims, where the data lives). Read with protobuf alone.

The device has no `onnx` package (it is export-only), and ONNX Runtime neither tells a session's
initializers nor checks the tensors handed to it with `add_initializer` against them (any name, shape or
element type is taken). So the runtime reads these few fields itself, to hold a bundle's manifest to its
graphs (edge_runtime.bundle.checks). The message types below are the subset of onnx.proto that carries
them, with onnx.proto's field numbers; the parser skips every other field (nodes, functions, opsets).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

# TensorProto.DataType of the element types a bundle may hold, and their sizes in bytes.
ONNX_TYPES = {"float32": 1, "uint8": 2, "int8": 3, "int64": 7, "float16": 10, "bfloat16": 16}
ITEM_BYTES = {"float32": 4, "uint8": 1, "int8": 1, "int64": 8, "float16": 2, "bfloat16": 2}
TYPE_NAMES = {v: k for k, v in ONNX_TYPES.items()}
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL

_F = descriptor_pb2.FieldDescriptorProto
# message -> (field, number, type, repeated, message type); numbers as in onnx.proto
_SUBSET = {
    "StringStringEntryProto": [("key", 1, _F.TYPE_STRING, False, None), ("value", 2, _F.TYPE_STRING, False, None)],
    "Dimension": [("dim_value", 1, _F.TYPE_INT64, False, None), ("dim_param", 2, _F.TYPE_STRING, False, None)],
    "TensorShapeProto": [("dim", 1, _F.TYPE_MESSAGE, True, "Dimension")],
    "TensorType": [("elem_type", 1, _F.TYPE_INT32, False, None), ("shape", 2, _F.TYPE_MESSAGE, False, "TensorShapeProto")],
    "TypeProto": [("tensor_type", 1, _F.TYPE_MESSAGE, False, "TensorType")],
    "ValueInfoProto": [("name", 1, _F.TYPE_STRING, False, None), ("type", 2, _F.TYPE_MESSAGE, False, "TypeProto")],
    "TensorProto": [("dims", 1, _F.TYPE_INT64, True, None), ("data_type", 2, _F.TYPE_INT32, False, None),
                    ("name", 8, _F.TYPE_STRING, False, None),
                    ("external_data", 13, _F.TYPE_MESSAGE, True, "StringStringEntryProto"),
                    ("data_location", 14, _F.TYPE_INT32, False, None)],
    "GraphProto": [("initializer", 5, _F.TYPE_MESSAGE, True, "TensorProto"),
                   ("input", 11, _F.TYPE_MESSAGE, True, "ValueInfoProto"),
                   ("output", 12, _F.TYPE_MESSAGE, True, "ValueInfoProto")],
    "ModelProto": [("graph", 7, _F.TYPE_MESSAGE, False, "GraphProto")],
}
_PACKAGE = "nemotron_edge.onnx_subset"


def _model_class() -> type[message.Message]:
    fdp = descriptor_pb2.FileDescriptorProto(name="nemotron_edge_onnx_subset.proto", package=_PACKAGE, syntax="proto2")
    for name, fields in _SUBSET.items():
        m = fdp.message_type.add(name=name)
        for field, number, kind, repeated, type_name in fields:
            f = m.field.add(name=field, number=number, type=kind,
                            label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if type_name:
                f.type_name = f".{_PACKAGE}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.ModelProto"))


_ModelProto = _model_class()


class OnnxHeaderError(ValueError):
    """A file that does not parse as an ONNX model."""


@dataclass(frozen=True)
class ValueDecl:
    """A graph input or output. A dim is an int (fixed), a str (symbolic, any extent) or None (undeclared)."""

    name: str
    elem_type: int
    dims: tuple[int | str | None, ...]


@dataclass(frozen=True)
class InitializerDecl:
    name: str
    elem_type: int
    dims: tuple[int, ...]
    external: dict[str, str] | None  # location/offset/length when the data lives outside the graph file


@dataclass(frozen=True)
class GraphHeader:
    inputs: list[ValueDecl]
    outputs: list[ValueDecl]
    initializers: list[InitializerDecl]


def read_header(path: Path, max_bytes: int) -> GraphHeader:
    """The declarations of the ONNX model at `path`; a file over `max_bytes` is refused unread."""
    size = path.stat().st_size
    if size > max_bytes:
        raise OnnxHeaderError(f"{size} bytes, more than the {max_bytes} a graph without its weights may have")
    model = _ModelProto()
    try:
        model.ParseFromString(path.read_bytes())
    except message.DecodeError as e:
        raise OnnxHeaderError(f"not an ONNX model ({e})") from None
    if not model.HasField("graph"):
        raise OnnxHeaderError("not an ONNX model (no graph)")
    g = model.graph
    return GraphHeader(
        inputs=[_value(v) for v in g.input], outputs=[_value(v) for v in g.output],
        initializers=[InitializerDecl(t.name, t.data_type, tuple(t.dims),
                                      {e.key: e.value for e in t.external_data} if t.data_location == EXTERNAL else None)
                      for t in g.initializer],
    )


def _value(v) -> ValueDecl:
    t = v.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param") else None
                 for d in t.shape.dim)
    return ValueDecl(v.name, t.elem_type, dims)
