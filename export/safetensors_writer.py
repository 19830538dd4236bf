"""Write a Hugging Face checkpoint's tensors as safetensors files, streamed: one chunk in memory at a time.

safetensors' own `save_file` needs every tensor in memory at once; a 9B checkpoint (18 GB in bf16) does
not fit a small machine that way. Here every tensor's name, shape and dtype are known up front, so each
file's header is written first and the tensors' bytes are appended chunk by chunk as a producer yields
them. Checkpoints larger than `shard_bytes` are split the way the published ones are:
`model-0000k-of-0000n.safetensors` plus `model.safetensors.index.json`; smaller ones are one
`model.safetensors`.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHARD_BYTES = 5 * 10**9  # about what the published checkpoints hold per shard
ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2}
STORAGE = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}  # bf16 travels as its bit pattern
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # a safetensors dtype: F32, F16 or BF16

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype]


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, rounded to nearest even (as torch rounds); exact integer math."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def shard_plan(specs: list[TensorSpec], shard_bytes: int = SHARD_BYTES) -> list[list[TensorSpec]]:
    """Tensors in order, cut into consecutive shards of at most `shard_bytes` (a bigger tensor alone)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def _header(specs: list[TensorSpec]) -> bytes:
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        entries[spec.name] = {"dtype": spec.dtype, "shape": list(spec.shape), "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def write_checkpoint_tensors(out: Path, specs: list[TensorSpec],
                             chunks: Callable[[TensorSpec], Iterable[np.ndarray]],
                             shard_bytes: int = SHARD_BYTES,
                             on_bytes: Callable[[int], None] | None = None) -> list[Path]:
    """Write `specs` into `out` (a directory), each tensor's bytes from `chunks(spec)`: arrays of the
    storage type (STORAGE) whose sizes add up to the tensor's, in C order. Returns the files written."""
    shards = shard_plan(specs, shard_bytes)
    names = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    for name, shard in zip(names, shards):
        with (out / name).open("wb") as f:
            f.write(_header(shard))
            for spec in shard:
                written = 0
                for chunk in chunks(spec):
                    if chunk.dtype != STORAGE[spec.dtype]:
                        raise TypeError(f"{spec.name}: chunk of {chunk.dtype}, expected {np.dtype(STORAGE[spec.dtype])}")
                    f.write(np.ascontiguousarray(chunk).data)
                    written += chunk.nbytes
                    if on_bytes:
                        on_bytes(chunk.nbytes)
                if written != spec.nbytes:
                    raise ValueError(f"{spec.name}: {written} bytes produced, its shape {list(spec.shape)} needs {spec.nbytes}")
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(s.nbytes for s in specs)},
                 "weight_map": {s.name: name for name, shard in zip(names, shards) for s in shard}}
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        names.append(INDEX_FILE)
    return [out / n for n in names]
