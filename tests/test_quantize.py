"""The block quantizers on small synthetic matrices (no model, well under a second each).

- GPTQ with an identity Hessian (inputs uncorrelated, equal power) has no error to move between columns,
  so it stores exactly what round-to-nearest with the same clip search stores;
- on correlated inputs GPTQ's output error is below round-to-nearest's;
- round to nearest errs by at most half a step, also in a partial last block.
"""

from __future__ import annotations

import numpy as np
import pytest

from nemotron_export.quantize import gptq, quantize

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("bits,block,k", [(4, 32, 256), (4, 128, 256), (8, 128, 256), (4, 32, 80)],
                         ids=["int4-g32", "int4-g128", "int8-g128", "int4-g32-partial-block"])
def test_gptq_with_identity_hessian_is_round_to_nearest(bits, block, k):
    w = RNG.normal(0, 0.02, (48, k)).astype(np.float32)
    a, b = gptq(w, np.eye(k), bits, block), quantize(w, bits, block, search_clip=True)
    assert np.array_equal(a.scales, b.scales)
    assert np.array_equal(a.packed, b.packed)
    assert a.dequantize().shape == w.shape


def test_gptq_beats_round_to_nearest_on_correlated_inputs():
    k = 128
    mix = RNG.normal(size=(k, k)) * np.linspace(1, 0.05, k)  # a few strong directions
    x = RNG.normal(size=(2048, k)) @ mix.T
    w = RNG.normal(0, 0.02, (64, k)).astype(np.float32)

    def output_err(d: np.ndarray) -> float:
        return float(np.linalg.norm(x @ (d - w).T))

    rtn = output_err(quantize(w, 4, 32, search_clip=True).dequantize())
    fitted = output_err(gptq(w, x.T @ x / len(x), 4, 32).dequantize())
    print(f"\noutput error: round to nearest {rtn:.4f}, GPTQ {fitted:.4f}")
    assert fitted < 0.8 * rtn


def test_round_to_nearest_is_within_half_a_step():
    w = RNG.normal(0, 0.02, (8, 80)).astype(np.float32)  # K = 2.5 blocks
    d = quantize(w, 4, 32).dequantize()
    assert d.shape == w.shape
    step = np.abs(np.pad(w, ((0, 0), (0, 16)))).reshape(8, 3, 32).max(-1) / 7  # per block
    assert (np.abs(d - w) <= np.repeat(step, 32, axis=1)[:, :80] / 2 + 1e-7).all()
