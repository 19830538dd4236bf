"""Copies of state between memory on the state's own device, made by ONNX Runtime on that device: a graph of
Identity nodes, one per contiguous range, every range bound by address with IOBinding. The prefix cache's
snapshots are taken from and restored into pool slots this way, so on a GPU they stay in device memory and a
cache hit costs no host round trip; the CPU provider takes the same path.

The graph depends only on how many ranges a copy has and their element types (shapes are left open, each
bound per call), so one session serves every copy of a state layout. It is written here in protobuf's wire
format, a ModelProto of a few fields: the runtime does not depend on the `onnx` package.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

ONNX_ELEMENT_TYPE = {np.dtype(np.float32): 1, np.dtype(np.float16): 10}
IR_VERSION, OPSET = 8, 13


@dataclass(frozen=True)
class Range:
    """`count` elements of `dtype` at byte address `address` on the copier's device."""

    address: int
    count: int
    dtype: np.dtype


class DeviceCopier:
    def __init__(self, kind: str, device_id: int, dtypes: list[np.dtype]):
        """Copies of len(dtypes) ranges at a time, range i of dtypes[i], on device (`kind`, `device_id`)."""
        self.kind, self.device_id, self.dtypes = kind, device_id, [np.dtype(d) for d in dtypes]
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every Identity a copy
        so.intra_op_num_threads = 1
        provider = "CUDAExecutionProvider" if kind == "cuda" else "CPUExecutionProvider"
        options = {"device_id": str(device_id)} if kind == "cuda" else {}
        self.session = ort.InferenceSession(identity_model(self.dtypes), so, providers=[(provider, options)])

    def copy(self, sources: list[Range], targets: list[Range]) -> None:
        """targets[i] = sources[i], for every i, in one run."""
        if len(sources) != len(self.dtypes) or len(targets) != len(self.dtypes):
            raise ValueError(f"copy: {len(sources)} sources and {len(targets)} targets; this copier takes "
                             f"{len(self.dtypes)} ranges")
        binding = self.session.io_binding()
        for i, (src, dst, dtype) in enumerate(zip(sources, targets, self.dtypes)):
            if src.count != dst.count or src.dtype != dtype or dst.dtype != dtype:
                raise ValueError(f"copy: range {i} is {src.count} x {src.dtype} to {dst.count} x {dst.dtype}; "
                                 f"this copier's range {i} is {dtype}")
            binding.bind_input(f"x{i}", self.kind, self.device_id, dtype.type, [src.count], src.address)
            binding.bind_output(f"y{i}", self.kind, self.device_id, dtype.type, [dst.count], dst.address)
        self.session.run_with_iobinding(binding)


def identity_model(dtypes: list[np.dtype]) -> bytes:
    """A serialized ModelProto: inputs x0.., outputs y0.., yi = Identity(xi), 1-D of dtypes[i], sizes open."""
    def value(name: str, dtype: np.dtype) -> bytes:
        shape = _message(1, _string_field(2, f"n{name[1:]}"))  # TensorShapeProto: one dim, its size open
        tensor_type = _message(1, _varint_field(1, ONNX_ELEMENT_TYPE[np.dtype(dtype)]) + _message(2, shape))
        return _string_field(1, name) + _message(2, tensor_type)  # ValueInfoProto: name, type

    graph = b"".join(_message(1, _string_field(1, f"x{i}") + _string_field(2, f"y{i}") + _string_field(4, "Identity"))
                     for i in range(len(dtypes)))  # NodeProto: input, output, op_type
    graph += _string_field(2, "state_copy")
    graph += b"".join(_message(11, value(f"x{i}", d)) for i, d in enumerate(dtypes))
    graph += b"".join(_message(12, value(f"y{i}", d)) for i, d in enumerate(dtypes))
    opset = _string_field(1, "") + _varint_field(2, OPSET)  # OperatorSetIdProto: domain, version
    return _varint_field(1, IR_VERSION) + _message(7, graph) + _message(8, opset)  # ir_version, graph, opset_import


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _message(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _string_field(number: int, text: str) -> bytes:
    return _message(number, text.encode())
