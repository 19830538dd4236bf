"""The state pool's two paths through a model call, on the `tiny` bundle: consecutive slots are read and
updated in place (their rows bound as both past.* input and present.* output), other slot lists go
through staging buffers and are copied back. Both must give the same logits and the same states."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.bundle.reader import open_bundle
from edge_runtime.engine.runner import OrtModelRunner
from edge_runtime.engine.state_pool import PoolFullError, StatePool, consecutive

PROMPTS = [[5, 9, 2, 7, 11, 3, 8], [4, 4, 6, 1]]


def run(runner: OrtModelRunner, pool: StatePool, slots: list[int], steps: int) -> list[np.ndarray]:
    """Prefill PROMPTS into `slots`, then greedy decode steps; logits of every call, then the final states."""
    out = [runner.prefill(slots, PROMPTS, [0, 0]).copy()]
    past = [len(p) for p in PROMPTS]
    tokens = [int(t) for t in out[-1].argmax(-1)]
    for _ in range(steps):
        out.append(runner.decode(slots, tokens, past).copy())
        tokens = [int(t) for t in out[-1].argmax(-1)]
        past = [n + 1 for n in past]
    states = [pool.arrays[s.name][slots] for s in pool.specs if not s.per_token]
    kv = [pool.arrays[s.name][slot, :, :n] for s in pool.specs if s.per_token for slot, n in zip(slots, past)]
    return out + states + kv


def test_in_place_and_staged_calls_agree(tiny_bundle):
    bundle = open_bundle(tiny_bundle, verify=False)
    pool = StatePool(bundle.state_layout, 4, 64, 2, 16)
    runner = OrtModelRunner(bundle, pool)
    for _ in range(4):
        pool.allocate()
    assert consecutive([1, 2]) == slice(1, 3) and consecutive([3, 0]) is None
    in_place, staged = run(runner, pool, [1, 2], 6), run(runner, pool, [3, 0], 6)
    assert len(in_place) == len(staged)
    for k, (a, b) in enumerate(zip(in_place, staged)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"output {k}")


def test_slots_are_zeroed_when_handed_out_again(tiny_bundle):
    bundle = open_bundle(tiny_bundle, verify=False)
    pool = StatePool(bundle.state_layout, 1, 64, 1, 16)
    runner = OrtModelRunner(bundle, pool)
    slot = pool.allocate()
    runner.prefill([slot], PROMPTS[:1], [0])
    assert any(np.abs(a[slot]).max() > 0 for a in pool.arrays.values())
    with pytest.raises(PoolFullError):
        pool.allocate()
    pool.release(slot)
    again = pool.allocate()
    assert all(np.abs(a[again]).max() == 0 for a in pool.arrays.values())
