"""Fixed slots of per-sequence state, allocated once: conv and float32 SSM states, K/V up to the context limit.

A slot is zeroed when it is handed out again, so no sequence ever sees another's state. When a model
call's slots are consecutive (always so at batch 1) the fixed-size states (conv, SSM) are updated in
place: the slots' own rows are bound as both the `past.*` input and the `present.*` output, which the
custom ops allow (each reads a state element before it writes it). Otherwise they go through staging
buffers and are copied back. K/V, cut to the call's past length, is always staged, and the call's new
K/V rows are copied into the slots. Every buffer is allocated once, here.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from edge_runtime.bundle.state_layout import NP_DTYPE, StateSpec

class PoolFullError(RuntimeError):
    pass


class StatePool:
    def __init__(self, specs: list[StateSpec], num_slots: int, max_context: int, max_rows: int,
                 max_call_tokens: int):
        """`max_rows`: sequences in one model call; `max_call_tokens`: the most new tokens one row brings to
        one call (the prefill chunk). Staging is sized by these, the slots by `num_slots`. A call never has
        more rows than there are slots, so the pool stages min(max_rows, num_slots) rows: what the memory
        plan counts (`MemoryPlan.rows`)."""
        self.specs = specs
        self.num_slots, self.max_context = num_slots, max_context
        self.max_rows = max_rows = min(max_rows, num_slots)
        self.arrays: dict[str, np.ndarray] = {}
        self._staging: dict[str, np.ndarray] = {}
        self._out: dict[str, np.ndarray] = {}
        for s in specs:
            shape, out_shape = _shapes(s, max_context, max_call_tokens)
            dtype = NP_DTYPE[s.dtype]
            self.arrays[s.name] = np.zeros((num_slots, *shape), dtype=dtype)
            # Staging buffers are flat: each call views a contiguous prefix of the shape it needs.
            self._staging[s.name] = np.zeros(max_rows * math.prod(shape), dtype=dtype)
            self._out[s.output_name] = np.zeros(max_rows * math.prod(out_shape), dtype=dtype)
        self._fixed = [s for s in specs if not s.per_token]
        self._kv = [s for s in specs if s.per_token]
        self._free = list(range(num_slots))  # a min-heap: the lowest free slot goes first, keeping busy slots dense

    @staticmethod
    def planned_bytes(specs: list[StateSpec], num_slots: int, max_context: int, max_rows: int,
                      max_call_tokens: int) -> int:
        """What a pool of these arguments allocates, before allocating it (its `nbytes` once made)."""
        total = 0
        for s in specs:
            shape, out_shape = _shapes(s, max_context, max_call_tokens)
            total += np.dtype(NP_DTYPE[s.dtype]).itemsize * (
                (num_slots + max_rows) * math.prod(shape) + max_rows * math.prod(out_shape))
        return total

    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def nbytes(self) -> int:
        return self.slot_nbytes + self.staging_nbytes

    @property
    def slot_nbytes(self) -> int:
        """The slots' own state."""
        return sum(a.nbytes for a in self.arrays.values())

    @property
    def staging_nbytes(self) -> int:
        """The per-call buffers: a state copy going into a call, and the new state coming out of it, per row."""
        return sum(a.nbytes for a in (*self._staging.values(), *self._out.values()))

    def allocate(self) -> int:
        if not self._free:
            raise PoolFullError("no free state slot")
        slot = heapq.heappop(self._free)
        for a in self.arrays.values():
            a[slot] = 0
        return slot

    def release(self, slot: int) -> None:
        if slot in self._free or not 0 <= slot < self.num_slots:
            raise ValueError(f"slot {slot} is not allocated")
        heapq.heappush(self._free, slot)

    def gather_states(self, slots: list[int]) -> dict[str, np.ndarray]:
        """The fixed-size (conv, SSM) `past.*` inputs: the slots' own rows when they are consecutive (no
        copy), else copies in staging buffers, which for the same number of rows are always the same memory."""
        run = consecutive(slots)
        if run is not None:
            return {s.name: self.arrays[s.name][run] for s in self._fixed}
        b = len(slots)
        feeds = {}
        for s in self._fixed:
            pool = self.arrays[s.name]
            view = self._staging[s.name][: b * pool[0].size].reshape(b, *pool.shape[1:])
            np.take(pool, slots, axis=0, out=view)
            feeds[s.name] = view
        return feeds

    def gather_kv(self, slots: list[int], past_tokens: int) -> dict[str, np.ndarray]:
        """The K/V `past.*` inputs, cut to the first `past_tokens` positions, copied into staging."""
        b = len(slots)
        run = consecutive(slots)
        feeds = {}
        for s in self._kv:
            pool = self.arrays[s.name]  # [slots, kv_heads, context, head_dim]
            view = self._staging[s.name][: b * pool.shape[1] * past_tokens * pool.shape[3]]
            view = view.reshape(b, pool.shape[1], past_tokens, pool.shape[3])
            # Row copies of a strided slice: np.take over the same slice is ~10x slower.
            if run is not None:
                np.copyto(view, pool[run, :, :past_tokens])
            else:
                for row, slot in enumerate(slots):
                    np.copyto(view[row], pool[slot, :, :past_tokens])
            feeds[s.name] = view
        return feeds

    def output_views(self, slots: list[int], tokens: int) -> dict[str, np.ndarray]:
        """Buffers for a call's `present.*` outputs (K/V: `tokens` new positions per row): the slots' own
        rows for conv/SSM when `slots` are consecutive (in place, as `gather_states` bound them), else staging."""
        b = len(slots)
        run = consecutive(slots)
        views = {}
        for s in self.specs:
            if run is not None and not s.per_token:
                views[s.output_name] = self.arrays[s.name][run]
                continue
            shape = [b, *s.shape]
            if s.per_token:
                shape[2] = tokens
            views[s.output_name] = self._out[s.output_name][: int(np.prod(shape))].reshape(shape)
        return views

    def scatter(self, slots: list[int], outputs: dict[str, np.ndarray], past_lengths: list[int],
                new_lengths: list[int]) -> None:
        """Write a call's `present.*` outputs back: conv/SSM replace the slot's state (unless it was updated
        in place); the new K/V rows of row i (its first new_lengths[i] tokens) land at positions
        past_lengths[i]...."""
        if consecutive(slots) is None:
            for s in self._fixed:
                self.arrays[s.name][slots] = outputs[s.output_name]
        for s in self._kv:
            out, pool = outputs[s.output_name], self.arrays[s.name]
            for row, (slot, start, n) in enumerate(zip(slots, past_lengths, new_lengths)):
                pool[slot, :, start:start + n] = out[row, :, :n]


def _shapes(spec: StateSpec, max_context: int, max_call_tokens: int) -> tuple[list[int], list[int]]:
    """A slot's shape of `spec` and a call's output shape of it: K/V [kv_heads, tokens, head_dim] holds
    `max_context` tokens in a slot, `max_call_tokens` in an output."""
    shape, out_shape = list(spec.shape), list(spec.shape)
    if spec.per_token:
        shape[1], out_shape[1] = max_context, max_call_tokens
    return shape, out_shape


def consecutive(slots: list[int]) -> slice | None:
    """slots as a slice when they are ascending and consecutive (then their rows form one array view)."""
    first, n = slots[0], len(slots)
    if n == 1 or slots == list(range(first, first + n)):
        return slice(first, first + n)
    return None
