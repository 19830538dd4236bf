"""weights.bin: the bundle's tensors, converted from the checkpoint's and appended one export unit at a time.

An export writes its units in the order the graphs first use their tensors: the embedding table, each
layer, then the head (the final norm and lm_head). `WeightTable` appends tensors to the file, 64-byte
aligned, and indexes them (name -> offset, bytes, dtype, shape: the manifest's weight index, which both
graphs reference by offset); `WeightsWriter` turns one unit's float32 checkpoint tensors into what the
bundle stores in its WeightFormat: norms, biases, conv, A and D in the activation dtype (or float32 where
the graph computes in float32), projections transposed for MatMul or as MatMulNBits blocks, the embedding
table as float rows or int8 rows with a scale each. The embedding table and lm_head (each 587M parameters
at the real size) are read and converted in blocks of rows, so no unit holds more than about one layer's
float32 weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.bundle.model_config import ATTENTION, MAMBA, ModelConfig
from nemotron_export.checkpoint import EMBEDDING, LM_HEAD, NORM_F, Checkpoint
from nemotron_export.onnx_graph import WeightFormat
from nemotron_export.quantize import QuantizedWeight, quantize

ROW_BLOCK_ELEMENTS = 1 << 25  # a block of the embedding table or lm_head: 128 MiB of float32


@dataclass
class WeightTable:
    """Tensors appended to the open file `fd` (positional writes: lm_head's transpose lands block by
    block); `length` is where the next one goes. `blocks`: MatMulNBits weight name -> bits, block_size."""

    fd: int
    length: int = 0
    index: dict[str, dict] = field(default_factory=dict)  # name -> offset, nbytes, dtype, shape
    blocks: dict[str, dict] = field(default_factory=dict)
    align: int = 64

    def add(self, name: str, array: np.ndarray, bf16: bool = False) -> None:
        data = np.ascontiguousarray(array)
        self._write(self._reserve(name, data.dtype, data.shape, bf16), data)

    def add_rows(self, name: str, shape: tuple[int, ...], dtype: np.dtype, blocks: Iterable[np.ndarray]) -> None:
        """A tensor of `shape` from consecutive blocks of its rows."""
        offset = start = self._reserve(name, np.dtype(dtype), shape)
        for block in blocks:
            data = np.ascontiguousarray(block, dtype=dtype)
            self._write(offset, data)
            offset += data.nbytes
        if offset != self.length:
            raise ValueError(f"{name}: {offset - start} bytes written, its shape {list(shape)} needs {self.length - start}")

    def add_transposed(self, name: str, shape: tuple[int, int], dtype: np.dtype,
                       blocks: Iterable[tuple[int, np.ndarray]], bf16: bool = False) -> None:
        """A tensor [k, n] stored as the transpose of a source [n, k] given as blocks (first row, rows
        [r, k]): each block's columns go to their place in each of the k stored rows."""
        k, n = shape
        dtype = np.dtype(dtype)
        offset = self._reserve(name, dtype, shape, bf16)
        for first, block in blocks:
            t = np.ascontiguousarray(block.T, dtype=dtype)  # [k, r]
            r = t.shape[1]
            if r == n:
                self._write(offset, t)
                continue
            for j in range(k):
                self._write(offset + (j * n + first) * dtype.itemsize, t[j])

    def _reserve(self, name: str, dtype: np.dtype, shape: tuple[int, ...], bf16: bool = False) -> int:
        """Pad to the alignment and index `name` there; returns its offset."""
        if name in self.index:
            raise ValueError(f"{name}: written to weights.bin twice")
        pad = (-self.length) % self.align
        self._write(self.length, np.zeros(pad, np.uint8))
        offset = self.length + pad
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.index[name] = {"offset": offset, "nbytes": nbytes, "dtype": "bfloat16" if bf16 else dtype.name,
                            "shape": list(shape)}
        self.length = offset + nbytes
        return offset

    def _write(self, offset: int, data: np.ndarray) -> None:
        view = memoryview(np.ascontiguousarray(data)).cast("B")
        while view:
            n = os.pwrite(self.fd, view, offset)
            view, offset = view[n:], offset + n


class WeightsWriter:
    """Writes the export units into `table` in `fmt`; `on_params` hears of each block of checkpoint
    parameters done (progress)."""

    def __init__(self, cfg: ModelConfig, fmt: WeightFormat, table: WeightTable,
                 on_params: Callable[[int], None] = lambda n: None):
        self.cfg, self.fmt, self.table, self.on_params = cfg, fmt, table, on_params
        self.act = np.dtype(fmt.activation_dtype)
        self.scale_dtype = self.act  # of MatMulNBits blocks: the dtype the node computes in

    # ---- units -----------------------------------------------------------------------------------------

    def embedding(self, ckpt: Checkpoint) -> None:
        """The table as float rows (16-bit, or float32 in fp32 and bf16 bundles), or as int8 rows with one
        float32 scale per row, looked up with Gather."""
        n, d = ckpt.shape(EMBEDDING)
        if not self.fmt.embeddings_int8:
            dtype = self.fmt.storage_dtype if self.fmt.kind != "bf16" else np.dtype(np.float32)
            self.table.add_rows(EMBEDDING, (n, d), dtype, (w for _, w in self._row_blocks(ckpt, EMBEDDING)))
            return
        scales: list[np.ndarray] = []

        def codes() -> Iterator[np.ndarray]:
            for _, w in self._row_blocks(ckpt, EMBEDDING):
                scale = np.abs(w).max(axis=1, keepdims=True) / 127  # [r, 1]
                scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
                scales.append(scale)
                yield (np.clip(np.rint(w / scale), -127, 127) + 128).astype(np.uint8)

        self.table.add_rows(EMBEDDING + ".q8", (n, d), np.uint8, codes())
        self.table.add(EMBEDDING + ".row_scales", np.concatenate(scales))

    def layer(self, i: int, tensors: Mapping[str, np.ndarray], quantized: Mapping[str, QuantizedWeight]) -> None:
        """Layer i from its float32 checkpoint tensors (by checkpoint name); projections in `quantized`
        as they are there, the others rounded to nearest in the format's bits and group size."""
        c, p = self.cfg, f"backbone.layers.{i}."
        m = p + "mixer."
        self._param(tensors, p + "norm.weight", float32=True)
        kind = c.pattern[i]
        if kind == MAMBA:
            self._projection(tensors, quantized, m + "in_proj", c.mamba_proj_bias)
            self.table.add(m + "conv1d.weight", tensors[m + "conv1d.weight"][:, 0, :].astype(self.act))  # [c, 1, k] -> [c, k]
            bias = tensors.get(m + "conv1d.bias", np.zeros(c.conv_dim, np.float32))
            self.table.add(m + "conv1d.bias", bias.astype(self.act))
            self._param(tensors, m + "dt_bias", float32=True)
            self.table.add(m + "A", -np.exp(tensors[m + "A_log"].astype(np.float32)))  # folded at export
            self._param(tensors, m + "D")
            self._param(tensors, m + "norm.weight", float32=True)
            self._projection(tensors, quantized, m + "out_proj", c.mamba_proj_bias)
        elif kind == ATTENTION:
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                self._projection(tensors, quantized, m + proj, c.attention_bias)
        else:
            for proj in ("up_proj", "down_proj"):
                self._projection(tensors, quantized, m + proj, c.mlp_bias)
        self.on_params(sum(w.size for w in tensors.values()))

    def head(self, ckpt: Checkpoint) -> None:
        """The final norm and lm_head, lm_head in blocks of rows: MatMulNBits blocks are per row, and a
        transposed float head takes each block's columns."""
        self._param({NORM_F: ckpt.tensor(NORM_F).numpy()}, NORM_F, float32=True)
        self.on_params(ckpt.tensors[NORM_F].numel)
        n, d = ckpt.shape(LM_HEAD)
        bits = self.fmt.head_bits
        if bits is None:
            dtype = np.dtype(np.uint16) if self.fmt.kind == "bf16" else self._dense_dtype()
            self.table.add_transposed(LM_HEAD + ".T", (d, n), dtype,
                                      ((first, self._dense_values(w)) for first, w in self._row_blocks(ckpt, LM_HEAD)),
                                      bf16=self.fmt.kind == "bf16")
            return
        gs = self.fmt.group_size
        scales: list[np.ndarray] = []

        def packed() -> Iterator[np.ndarray]:
            for _, w in self._row_blocks(ckpt, LM_HEAD):
                q = quantize(w, bits, gs, self.scale_dtype)
                scales.append(q.scales)
                yield q.packed  # [r, blocks, blob]

        self.table.add_rows(LM_HEAD + ".qweight", (n, -(-d // gs), gs * bits // 8), np.uint8, packed())
        self.table.add(LM_HEAD + ".scales", np.concatenate(scales))
        self.table.blocks[LM_HEAD] = {"bits": bits, "block_size": gs}

    # ---- tensors ---------------------------------------------------------------------------------------

    def _row_blocks(self, ckpt: Checkpoint, name: str) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 rows [r, d]) of a 2-D checkpoint tensor, ROW_BLOCK_ELEMENTS at a time."""
        n, d = ckpt.shape(name)
        step = max(1, ROW_BLOCK_ELEMENTS // d)
        for first in range(0, n, step):
            stop = min(n, first + step)
            yield first, ckpt.rows(name, first, stop).numpy()
            self.on_params((stop - first) * d)

    def _param(self, tensors: Mapping[str, np.ndarray], name: str, float32: bool = False) -> None:
        """A weight used as it is, in the activation dtype, or float32 where the graph computes in float32."""
        self.table.add(name, tensors[name].astype(np.float32 if float32 else self.act))

    def _projection(self, tensors: Mapping[str, np.ndarray], quantized: Mapping[str, QuantizedWeight],
                    prefix: str, bias: bool) -> None:
        name = prefix + ".weight"
        w = tensors[name]  # [out, in]
        if self.fmt.bits is None:
            self.table.add(name + ".T", self._dense_values(w).T, bf16=self.fmt.kind == "bf16")
        else:
            q = quantized.get(name) or quantize(w, self.fmt.bits, self.fmt.group_size, self.scale_dtype)
            self.table.add(name + ".qweight", q.packed)
            self.table.add(name + ".scales", q.scales)
            self.table.blocks[name] = {"bits": q.bits, "block_size": q.block_size}
        if bias:
            self._param(tensors, prefix + ".bias")

    def _dense_dtype(self) -> np.dtype:
        return np.dtype(np.float16 if self.fmt.kind == "fp16" else np.float32)

    def _dense_values(self, w: np.ndarray) -> np.ndarray:
        """A float weight in its storage dtype; bf16 as its bit patterns (the graph casts it up), rounded
        half up."""
        if self.fmt.kind == "bf16":
            return (np.ascontiguousarray(w, dtype=np.float32).view(np.uint32) + 0x8000 >> 16).astype(np.uint16)
        return w.astype(self._dense_dtype())
