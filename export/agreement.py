"""How closely a bundle follows a reference, the measure weight-only int8/int4 are judged by: a bundle's own
greedy continuation of prompts on ONNX Runtime, and a reference model's teacher-forced picks over it (one
forward pass over prompt + continuation). Shared by the quantization tests and `bench/int4_quantizers.py`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edge_runtime.bundle.reader import open_bundle
from edge_runtime.engine.runner import OrtModelRunner
from edge_runtime.engine.state_pool import StatePool

# The protocol: PROMPTS prompts in one batch, NEW_TOKENS greedy tokens each, bundles exported for MAX_CONTEXT.
PROMPTS, NEW_TOKENS, MAX_CONTEXT = 8, 64, 128


def make_pool(bundle, rows: int) -> StatePool:
    """`rows` slots of MAX_CONTEXT tokens."""
    return StatePool(bundle.state_layout, rows, MAX_CONTEXT)


def padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [len(r) for r in rows]
    ids = torch.zeros(len(rows), max(lengths), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
    return ids, torch.tensor(lengths)


def greedy_continuation(bundle_dir: Path, prompts: list[list[int]]) -> np.ndarray:
    """[prompts, NEW_TOKENS]: each prompt continued greedily by the bundle (batched, right-padded)."""
    bundle = open_bundle(bundle_dir, verify=False)
    pool = make_pool(bundle, len(prompts))
    runner = OrtModelRunner(bundle, pool)
    slots = [pool.allocate() for _ in prompts]
    logits = runner.prefill(slots, prompts, [0] * len(prompts))
    past = [len(p) for p in prompts]
    picked = [logits.argmax(-1)]
    for _ in range(NEW_TOKENS - 1):
        logits = runner.decode(slots, picked[-1].tolist(), past)
        past = [p + 1 for p in past]
        picked.append(logits.argmax(-1))
    return np.stack(picked, axis=1)


def teacher_forced_argmax(model, prompts: list[list[int]], continuation: np.ndarray) -> np.ndarray:
    """[prompts, NEW_TOKENS]: the model's argmax for token k after seeing prompt + continuation[:k], from
    one forward pass over the whole right-padded sequences."""
    ids, _ = padded([p + c.tolist() for p, c in zip(prompts, continuation)])
    with torch.no_grad():
        logits, _ = model(ids, model.empty_states(len(prompts)), all_logits=True)
    picks = logits.argmax(-1).numpy()
    return np.stack([picks[r, len(p) - 1:len(p) - 1 + NEW_TOKENS] for r, p in enumerate(prompts)])
