"""The state pool on the `tiny` bundle: every call updates its slots' state in place, bound by address; a
batch of slots that are not consecutive runs as several calls and must give what one call over consecutive
slots gives; a reused slot starts from zero state without being cleared."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.bundle.reader import open_bundle
from edge_runtime.engine.runner import OrtModelRunner, prefill_calls
from edge_runtime.engine.state_pool import PoolFullError, StatePool, runs

PROMPTS = [[5, 9, 2, 7, 11, 3, 8], [4, 4, 6, 1]]


def run(runner: OrtModelRunner, pool: StatePool, slots: list[int], steps: int) -> list[np.ndarray]:
    """Prefill PROMPTS into `slots` (the first in two chunks), then greedy decode steps; logits of every call,
    then the final states (K/V up to each row's length)."""
    runner.prefill(slots, [PROMPTS[0][:3], PROMPTS[1]], [0, 0])
    out = [runner.prefill(slots[:1], [PROMPTS[0][3:]], [3]).copy()]
    past = [len(p) for p in PROMPTS]
    tokens = [int(out[0][0].argmax()), int(runner.prefill(slots[1:], [[9]], [len(PROMPTS[1])])[0].argmax())]
    past[1] += 1
    for _ in range(steps):
        out.append(runner.decode(slots, tokens, past).copy())
        tokens = [int(t) for t in out[-1].argmax(-1)]
        past = [n + 1 for n in past]
    for slot, n in zip(slots, past):
        state = pool.read(slot)
        out += [state[s.name][:, :n] if s.per_token else state[s.name] for s in pool.specs]
    return out


def test_split_and_whole_calls_agree(tiny_bundle):
    bundle = open_bundle(tiny_bundle, verify=False)
    pool = StatePool(bundle.state_layout, 4, 64)
    runner = OrtModelRunner(bundle, pool)
    for _ in range(4):
        pool.allocate()
    assert runs([1, 2]) == [(0, 2)] and runs([3, 0]) == [(0, 1), (1, 1)] and runs([0, 2, 3]) == [(0, 1), (1, 2)]
    # Starting rows share a call; a continuing row (past > 0) has its own.
    assert prefill_calls([(0, 4), (4, 1)], [0, 0, 5, 0, 0]) == [(0, 2), (2, 1), (3, 1), (4, 1)]
    before = dict(runner.calls)
    whole = run(runner, pool, [1, 2], 6)
    assert runner.calls["decode"] - before["decode"] == 6  # one call a step
    split = run(runner, pool, [3, 0], 6)
    assert len(whole) == len(split)
    for k, (a, b) in enumerate(zip(whole, split)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"output {k}")


def test_a_reused_slot_starts_from_zero_state(tiny_bundle):
    """The graph ignores a starting row's past state: a slot full of another sequence's state (or of
    NaN) gives the logits of a fresh one."""
    bundle = open_bundle(tiny_bundle, verify=False)
    pool = StatePool(bundle.state_layout, 1, 64)
    runner = OrtModelRunner(bundle, pool)
    slot = pool.allocate()
    fresh = runner.prefill([slot], PROMPTS[:1], [0]).copy()
    runner.decode([slot], [3], [len(PROMPTS[0])])
    with pytest.raises(PoolFullError):
        pool.allocate()
    pool.release(slot)
    again = pool.allocate()
    assert again == slot and any(np.abs(a).max() > 0 for a in pool.read(again).values())
    np.testing.assert_array_equal(runner.prefill([again], PROMPTS[:1], [0]), fresh)
    for name, value in pool.buffers.items():
        value.update_inplace(np.full(value.shape(), np.nan, dtype=value.numpy().dtype))
    np.testing.assert_array_equal(runner.prefill([again], PROMPTS[:1], [0]), fresh)


def test_decode_needs_a_prefilled_past(tiny_bundle):
    bundle = open_bundle(tiny_bundle, verify=False)
    pool = StatePool(bundle.state_layout, 1, 64)
    runner = OrtModelRunner(bundle, pool)
    with pytest.raises(ValueError, match="past length"):
        runner.decode([pool.allocate()], [3], [0])


def test_the_pool_holds_the_planned_context_and_counts_the_bytes_of_each_step(tiny_bundle):
    bundle = open_bundle(tiny_bundle, verify=False)
    pool = StatePool(bundle.state_layout, 2, 48)
    assert pool.nbytes == StatePool.planned_bytes(bundle.state_layout, 2, 48)
    kv = [s for s in bundle.state_layout if s.per_token]
    assert kv and all(pool.buffers[s.name].shape()[2] == 48 for s in kv)
    runner = OrtModelRunner(bundle, pool)
    slots = [pool.allocate(), pool.allocate()]
    runner.prefill(slots, PROMPTS, [0, 0])
    counted = runner.host_bytes["decode"]
    runner.decode(slots, [1, 2], [len(p) for p in PROMPTS])
    vocab = bundle.config.vocab_size
    # The CPU pool is host memory: each row's state is bound there, as input and output (in place).
    assert (counted.inputs, counted.logits, counted.state) == (2 * 2 * 8, 2 * vocab * 4, 2 * pool.nbytes)
