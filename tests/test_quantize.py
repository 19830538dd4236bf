"""The int4 quantizers and the mixed plan on small synthetic matrices (no model, well under a second each).

- GPTQ with an identity Hessian (inputs uncorrelated, equal power) has no error to move between columns,
  so it stores exactly what round-to-nearest with the same clip search stores;
- on correlated inputs GPTQ's output error is below round-to-nearest's;
- the in-place blocked factorization GPTQ uses (U upper with U^T U = H^-1) agrees with torch's whole-matrix
  one, across block edges and a partial last block;
- round to nearest errs by at most half a step, also in a partial last block;
- the knapsack never exceeds its byte budget, gives the bytes to where the cost is, and says when no plan fits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nemotron_export.allocation import BlockFormat, allocate, budget_bytes, menu
from nemotron_export.quantize import _inverse_cholesky, gptq, quantize

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


@pytest.mark.parametrize("k,block", [(300, 64), (256, 128), (40, 512)])
def test_inverse_cholesky_in_place_matches_torch(k, block):
    x = RNG.normal(size=(3 * k, k)) @ RNG.normal(size=(k, k))
    h = x.T @ x / len(x) + 0.01 * np.eye(k)
    t = torch.from_numpy(h)
    expected = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(t)), upper=True).numpy()
    work = h.copy()
    assert _inverse_cholesky(work, block) is work  # in the Hessian's own memory
    u = np.triu(work)
    assert np.abs(u - expected).max() <= 1e-9 * np.abs(expected).max()
    assert np.abs(u.T @ u @ h - np.eye(k)).max() < 1e-9


def test_round_to_nearest_is_within_half_a_step():
    w = RNG.normal(0, 0.02, (8, 80)).astype(np.float32)  # K = 2.5 blocks
    d = quantize(w, 4, 32).dequantize()
    assert d.shape == w.shape
    step = np.abs(np.pad(w, ((0, 0), (0, 16)))).reshape(8, 3, 32).max(-1) / 7  # per block
    assert (np.abs(d - w) <= np.repeat(step, 32, axis=1)[:, :80] / 2 + 1e-7).all()


SHAPES = {"big": (512, 256), "mid": (256, 256), "small": (64, 256)}


def costs(sensitivity: dict[str, float]) -> dict[str, dict[BlockFormat, float]]:
    """Cost falling with bits per weight, scaled by each matrix's sensitivity."""
    bits_per_weight = {f: f.bits + 32 / f.block_size for f in menu(32)}
    return {n: {f: s * 2.0 ** -(2 * b) for f, b in bits_per_weight.items()} for n, s in sensitivity.items()}


def test_allocation_stays_within_budget_and_follows_sensitivity():
    budget = budget_bytes(SHAPES, 32, 4)
    plan = allocate(SHAPES, costs({"big": 1.0, "mid": 1.0, "small": 50.0}), budget, 4)
    spent = sum(f.bytes(*SHAPES[n], 4) for n, f in plan.items())
    assert spent <= budget
    assert plan["small"] == BlockFormat(8, 128), plan  # the sensitive matrix gets the bytes
    assert plan["big"].bits == plan["mid"].bits == 4, plan


def test_allocation_of_uniform_costs_is_the_budget_format_or_cheaper():
    budget = budget_bytes(SHAPES, 64, 4)
    plan = allocate(SHAPES, {n: {f: 1.0 for f in menu(64)} for n in SHAPES}, budget, 4)
    assert sum(f.bytes(*SHAPES[n], 4) for n, f in plan.items()) <= budget


def test_allocation_refuses_a_budget_nothing_fits():
    with pytest.raises(ValueError, match="int4 budget"):
        allocate(SHAPES, costs({n: 1.0 for n in SHAPES}), budget_bytes(SHAPES, 128, 4) - 1, 4)
