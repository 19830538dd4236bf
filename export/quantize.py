"""Weight-only block quantization in the layout of ONNX Runtime's MatMulNBits (com.microsoft).

A weight W [N, K] (out, in) is cut along K into blocks of `block_size`; each block gets one scale, at most
max|w| / (2^(bits-1) - 1), and its values are stored as unsigned ints q = round(w / scale) + 2^(bits-1),
which is MatMulNBits' default zero point, so no zero-point tensor is stored (symmetric quantization).
Layout: B uint8 [N, n_blocks, block_size * bits / 8], 4-bit values packed two per byte, low nibble first;
scales [N * n_blocks] in the activation dtype. K is zero-padded to a whole number of blocks.

Two ways to choose the codes, both returning what the bundle stores:
- `quantize`: round to nearest, with the scale max|w| / qmax or, with `search_clip`, the clipped scale
  (CLIP_RATIOS of it) with the least squared error per block;
- `gptq`: GPTQ (Frantar et al., 2022), which rounds one input column at a time and moves each column's
  error onto the columns not yet rounded, weighted by the Hessian of the layer's output error over
  calibration inputs; each block's scale is the searched clip of the weights as updated by then.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

CLIP_RATIOS = np.linspace(0.6, 1.0, 21)
GPTQ_DAMP = 0.01  # added to H's diagonal, times its mean: keeps H invertible where inputs are nearly collinear
FACTOR_BLOCK = 512  # rows of the Hessian's in-place factorization at a time: bounds its temporaries
GPTQ_BLOCK = 128  # columns updated eagerly before their error is pushed onto the rest in one matmul


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


def check_format(bits: int, block_size: int) -> None:
    """Raise ValueError unless MatMulNBits can hold `bits`-bit blocks of `block_size`."""
    if bits not in (4, 8):
        raise ValueError(f"bits: must be 4 or 8, got {bits}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"group size: must be a power of two >= 16, got {block_size}")


def quantize(w: np.ndarray, bits: int, block_size: int, scale_dtype: np.dtype = np.float32,
             search_clip: bool = False) -> QuantizedWeight:
    """w [N, K] float -> MatMulNBits blocks, rounded to nearest. bits is 4 or 8; block_size a power of two >= 16."""
    check_format(bits, block_size)
    n, k = w.shape
    wb = _blocks(w, block_size)  # [N, blocks, block]
    scales = _scales(wb, bits, scale_dtype, CLIP_RATIOS if search_clip else np.ones(1))
    return _stored(_codes(wb, scales, bits), scales, bits, block_size, n, k, scale_dtype)


def gptq(w: np.ndarray, hessian: np.ndarray, bits: int, block_size: int,
         scale_dtype: np.dtype = np.float32) -> QuantizedWeight:
    """w [N, K] float and the Hessian [K, K] of its layer's squared output error (X^T X over calibration
    inputs X [tokens, K], any positive scale) -> MatMulNBits blocks. A writable C-ordered float64
    `hessian` is worked on in place when K is a whole number of blocks (pass a copy to keep it): the 9B
    model's down_proj Hessian is 2 GB."""
    check_format(bits, block_size)
    n, k = w.shape
    pad = (-k) % block_size
    Wt = np.pad(w.T.astype(np.float64), ((0, pad), (0, 0)))  # [K, N]: an input column is a contiguous row here
    if pad == 0 and hessian.dtype == np.float64 and hessian.flags.c_contiguous and hessian.flags.writeable:
        H = hessian
    else:
        H = np.pad(hessian.astype(np.float64, copy=False), ((0, pad), (0, pad)))
    dead = np.diag(H) == 0  # inputs never seen (and the padding): nothing to fit, quantized as zero
    H[dead, dead] = 1.0
    Wt[dead] = 0.0
    H[np.diag_indices_from(H)] += GPTQ_DAMP * np.mean(np.diag(H))
    U = _inverse_cholesky(H)
    codes = np.empty(Wt.shape, dtype=np.uint8)  # [K, N]
    scales = np.empty((n, Wt.shape[0] // block_size, 1), dtype=np.float32)
    rest = torch.from_numpy(Wt)
    for start in range(0, Wt.shape[0], GPTQ_BLOCK):
        end = min(start + GPTQ_BLOCK, Wt.shape[0])
        errors = np.zeros((end - start, n))
        for i in range(start, end):
            if i % block_size == 0:
                b = i // block_size
                block = Wt[i:i + block_size].T.astype(np.float32)[:, None, :]  # [N, 1, block] as updated by now
                scales[:, b] = _scales(block, bits, scale_dtype, CLIP_RATIOS)[:, 0]
                scale = scales[:, b, 0]
            codes[i] = _codes(Wt[i], scale, bits)
            err = errors[i - start]
            np.subtract(Wt[i], (codes[i] - 2.0 ** (bits - 1)) * scale, out=err)
            err /= U[i, i]
            rest[i + 1:end].addr_(torch.from_numpy(U[i, i + 1:end]), torch.from_numpy(err), alpha=-1)
        rest[end:].addmm_(torch.from_numpy(U[start:end, end:]).T, torch.from_numpy(errors), alpha=-1)
    return _stored(np.ascontiguousarray(codes.T).reshape(n, -1, block_size), scales, bits, block_size, n, k,
                   scale_dtype)


def _inverse_cholesky(h: np.ndarray, block: int = FACTOR_BLOCK) -> np.ndarray:
    """The upper triangular U with U^T U = h^-1, in h's upper triangle (its strict lower triangle is left as
    scratch), with no temporary larger than a K x `block` panel: the 9B's down_proj Hessian is 2 GB, and
    torch's cholesky, cholesky_inverse and cholesky(upper) each allocate another K x K even with out=.
    h = R R^T with R upper (Cholesky from the last row up), then U = R^-1, since R^-T R^-1 = h^-1."""
    t = torch.from_numpy(h)
    edges = list(range(0, t.shape[0], block)) + [t.shape[0]]
    spans = list(zip(edges[:-1], edges[1:]))
    for a, b in reversed(spans):  # R, its last block column first; the block diagonal of t stays symmetric
        d = t[a:b, a:b]
        d.copy_(torch.linalg.cholesky(d.flip(0, 1)).flip(0, 1))  # J chol(J d J) J: upper, d's R R^T factor
        panel = torch.linalg.solve_triangular(d.T, t[:a, a:b], upper=False, left=False)  # [a, B]: H12 R22^-T
        t[:a, a:b] = panel
        for r0, r1 in spans:  # the rest's upper triangle -= panel panel^T, a block row at a time
            if r1 > a:
                break
            t[r0:r1, r0:a].addmm_(panel[r0:r1], panel[r0:a].T, alpha=-1)
    for a, b in spans:  # U = R^-1, a block column at a time: t[:a, :a] already holds the inverse's
        inv = torch.linalg.solve_triangular(t[a:b, a:b], torch.eye(b - a, dtype=t.dtype), upper=True)
        above = torch.empty(a, b - a, dtype=t.dtype)  # U00 R01, from U00's upper triangle only
        for r0, r1 in spans:
            if r1 > a:
                break
            above[r0:r1] = t[r0:r1, r0:r1].triu() @ t[r0:r1, a:b] + t[r0:r1, r1:a] @ t[r1:a, a:b]
        t[:a, a:b] = -(above @ inv)
        t[a:b, a:b] = inv
    return h


def _blocks(w: np.ndarray, block_size: int) -> np.ndarray:
    n, k = w.shape
    return np.pad(w.astype(np.float32), ((0, 0), (0, (-k) % block_size))).reshape(n, -1, block_size)


def _scales(wb: np.ndarray, bits: int, scale_dtype: np.dtype, ratios: np.ndarray) -> np.ndarray:
    """[..., blocks, 1] float32: per block, the scale among `ratios` x max|w| / qmax, as stored in
    `scale_dtype`, whose rounding has the least squared error."""
    qmax = 2 ** (bits - 1) - 1
    amax = np.abs(wb).max(axis=-1, keepdims=True)
    best, best_err = None, None
    for ratio in ratios:
        scale = (amax * ratio / qmax).astype(scale_dtype).astype(np.float32)  # the scale as stored
        if len(ratios) == 1:  # nothing to choose: no rounding to measure (it is most of rounding's time)
            return scale
        err = ((_rounded(wb, scale, bits) - wb) ** 2).sum(axis=-1, keepdims=True)
        if best is None:
            best, best_err = scale, err
        else:
            better = err < best_err
            best, best_err = np.where(better, scale, best), np.minimum(err, best_err)
    return best


def _codes(wb: np.ndarray, scales: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes (zero point 2^(bits-1)) of `wb` at `scales`; an all-zero block (scale 0) codes to zero."""
    qmax = 2 ** (bits - 1) - 1
    safe = np.where(scales == 0, 1.0, scales)
    return (np.clip(np.rint(wb / safe), -qmax - 1, qmax) + 2 ** (bits - 1)).astype(np.uint8)


def _rounded(wb: np.ndarray, scales: np.ndarray, bits: int) -> np.ndarray:
    return (_codes(wb, scales, bits).astype(np.float32) - 2 ** (bits - 1)) * scales


def _stored(codes: np.ndarray, scales: np.ndarray, bits: int, block_size: int, n: int, k: int,
            scale_dtype: np.dtype) -> QuantizedWeight:
    return QuantizedWeight(pack(codes, bits), scales.reshape(-1).astype(scale_dtype), bits, block_size, n, k)


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
