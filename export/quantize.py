"""Weight-only block quantization in the layout of ONNX Runtime's MatMulNBits (com.microsoft).

A weight W [N, K] (out, in) is cut along K into blocks of `block_size`; each block gets one scale,
scale = max|w| / (2^(bits-1) - 1), and its values are stored as unsigned ints q = round(w / scale) + 2^(bits-1),
which is MatMulNBits' default zero point, so no zero-point tensor is stored (symmetric quantization).
Layout: B uint8 [N, n_blocks, block_size * bits / 8], 4-bit values packed two per byte, low nibble first;
scales [N * n_blocks] in the activation dtype. K is zero-padded to a whole number of blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QuantizedWeight:
    packed: np.ndarray  # uint8 [N, n_blocks, blob]
    scales: np.ndarray  # [N * n_blocks]
    bits: int
    block_size: int
    n: int
    k: int

    def dequantize(self) -> np.ndarray:
        """The float32 weight [N, K] this encodes (for tests and error measurement)."""
        q = unpack(self.packed, self.bits).reshape(self.n, -1, self.block_size).astype(np.float32)
        w = (q - 2 ** (self.bits - 1)) * self.scales.astype(np.float32).reshape(self.n, -1, 1)
        return w.reshape(self.n, -1)[:, : self.k]


def quantize(w: np.ndarray, bits: int, block_size: int, scale_dtype: np.dtype = np.float32) -> QuantizedWeight:
    """w [N, K] float -> MatMulNBits blocks. bits is 4 or 8; block_size a power of two >= 16."""
    if bits not in (4, 8):
        raise ValueError(f"bits: must be 4 or 8, got {bits}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"group size: must be a power of two >= 16, got {block_size}")
    n, k = w.shape
    pad = (-k) % block_size
    wb = np.pad(w.astype(np.float32), ((0, 0), (0, pad))).reshape(n, -1, block_size)  # [N, blocks, block]
    qmax = 2 ** (bits - 1) - 1
    scales = np.abs(wb).max(axis=-1, keepdims=True) / qmax  # [N, blocks, 1]
    scales = scales.astype(scale_dtype).astype(np.float32)  # quantize against the scale as stored
    safe = np.where(scales == 0, 1.0, scales)
    q = np.clip(np.rint(wb / safe), -qmax - 1, qmax).astype(np.int32) + 2 ** (bits - 1)
    return QuantizedWeight(pack(q.astype(np.uint8), bits), scales.reshape(-1).astype(scale_dtype), bits, block_size, n, k)


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """q uint8 [N, blocks, block] (values < 2^bits) -> [N, blocks, block * bits / 8]."""
    if bits == 8:
        return np.ascontiguousarray(q)
    return np.ascontiguousarray(q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return packed
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), dtype=np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out
