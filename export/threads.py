"""torch's thread count around the runs that need one thread: shared by the tests and `bench/gpu_check.py`.

The exporter itself never changes it; the callers here run the reference model (or an export) beside ONNX
Runtime's thread pool on a small, shared machine, or need the same arithmetic in every run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one thread inside the block, its previous count restored after. Why one: torch's threads spin
    at barriers, so beside ONNX Runtime's pool on a small machine they run the reference several times
    slower; and one thread sums in one order, so repeated runs (an export and its resume) give the same
    bytes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
