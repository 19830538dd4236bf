"""Fixed slots of per-sequence state on the execution provider's device: conv and float32 SSM states, K/V
up to the planned context, allocated once.

Each state is one ONNX Runtime OrtValue [slots, ...] in the memory of the device that runs the model (host
memory for the CPU provider, device memory for CUDA and TensorRT). It never travels to the host: a model call
binds its rows' state by address as both the `past.*` input and the `present.*` output, and the graphs update
it in place (conv and SSM by our ops, K/V by GroupQueryAttention). A call's rows are therefore consecutive
slots; the runner splits other batches into runs of them, and the engine keeps running sequences in slots
0..n-1 (the lowest free slot is handed out first, and `move` fills the hole a finished sequence leaves). A slot handed out again is not cleared: a prefill
row with past length 0 ignores its past state (export/onnx_graph.py), on any device.

A snapshot (the prefix cache's) is a slot's state after its first n tokens, in OrtValues of its own on the
same device, copied there and back by ONNX Runtime on that device (engine/state_copy.py).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from edge_runtime.bundle.state_layout import NP_DTYPE, StateSpec, bytes_per_sequence
from edge_runtime.engine.state_copy import DeviceCopier, Range


class PoolFullError(RuntimeError):
    pass


@dataclass(frozen=True)
class StateDevice:
    """Where the state lives, as ONNX Runtime names a device for OrtValues and IOBinding."""

    kind: str = "cpu"  # "cpu" | "cuda"
    id: int = 0

    @property
    def is_host(self) -> bool:
        return self.kind == "cpu"


@dataclass(frozen=True)
class StateRows:
    """Consecutive slots' rows of one state: what IOBinding binds by address."""

    address: int
    shape: list[int]
    dtype: type


@dataclass(frozen=True)
class StateSnapshot:
    """A slot's state after its first `length` tokens, as OrtValues on the pool's device by state name: conv and
    SSM states whole, K/V [kv_heads, length, head_dim]."""

    length: int
    values: dict[str, ort.OrtValue]
    nbytes: int


class StatePool:
    def __init__(self, specs: list[StateSpec], num_slots: int, max_context: int, device: StateDevice = StateDevice()):
        """K/V slots hold `max_context` tokens: the planned context, never the model's maximum."""
        self.specs, self.device = specs, device
        self.num_slots, self.max_context = num_slots, max_context
        self.buffers = {s.name: ort.OrtValue.ortvalue_from_shape_and_type(
            [num_slots, *slot_shape(s, max_context)], NP_DTYPE[s.dtype], device.kind, device.id) for s in specs}
        self._row_bytes = {s.name: s.bytes_per_sequence(max_context) for s in specs}
        self.slot_nbytes = sum(self._row_bytes.values())  # one sequence's state
        self._copier: DeviceCopier | None = None  # made at the first snapshot
        self._free = list(range(num_slots))  # a min-heap: the lowest free slot goes first, keeping busy slots dense

    @staticmethod
    def planned_bytes(specs: list[StateSpec], num_slots: int, max_context: int) -> int:
        """What a pool of these arguments allocates, before allocating it (its `nbytes` once made)."""
        return num_slots * bytes_per_sequence(specs, max_context)

    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def nbytes(self) -> int:
        return self.num_slots * self.slot_nbytes

    def allocate(self) -> int:
        if not self._free:
            raise PoolFullError("no free state slot")
        return heapq.heappop(self._free)

    def release(self, slot: int) -> None:
        if slot in self._free or not 0 <= slot < self.num_slots:
            raise ValueError(f"slot {slot} is not allocated")
        heapq.heappush(self._free, slot)

    def lowest_free(self) -> int | None:
        return self._free[0] if self._free else None

    def move(self, slot: int, length: int) -> int:
        """Move busy `slot`'s state after `length` tokens into the lowest free slot, which it occupies from
        then on (`slot` is freed); returns that slot."""
        target = self.allocate()
        if length:
            self._copy(self._slot_ranges(slot, length), self._slot_ranges(target, length))
        self.release(slot)
        return target

    def rows(self, first: int, count: int) -> dict[str, StateRows]:
        """Slots first..first+count-1 of every state, by address on the pool's device."""
        if not (0 <= first and count >= 1 and first + count <= self.num_slots):
            raise ValueError(f"slots {first}..{first + count - 1} are not in the pool's {self.num_slots}")
        out = {}
        for s in self.specs:
            value = self.buffers[s.name]
            out[s.name] = StateRows(value.data_ptr() + first * self._row_bytes[s.name],
                                    [count, *value.shape()[1:]], NP_DTYPE[s.dtype])
        return out

    def snapshot_nbytes(self, length: int) -> int:
        """The bytes of a snapshot after `length` tokens: conv and SSM whole, K/V of `length` tokens."""
        return sum(s.bytes_per_sequence(length) for s in self.specs)

    def snapshot(self, slot: int, length: int) -> StateSnapshot:
        """A copy of `slot`'s state after its first `length` tokens, on the pool's device."""
        if not 1 <= length <= self.max_context:
            raise ValueError(f"snapshot: {length} tokens is not within the pool's context of {self.max_context}")
        values = {s.name: ort.OrtValue.ortvalue_from_shape_and_type(
            slot_shape(s, length), NP_DTYPE[s.dtype], self.device.kind, self.device.id) for s in self.specs}
        snap = StateSnapshot(length, values, self.snapshot_nbytes(length))
        self._copy(self._slot_ranges(slot, length), self._snapshot_ranges(snap))
        return snap

    def restore(self, slot: int, snap: StateSnapshot) -> None:
        """Write a snapshot into `slot`: the slot then holds the state after the snapshot's tokens."""
        self._copy(self._snapshot_ranges(snap), self._slot_ranges(slot, snap.length))

    def _copy(self, sources: list[Range], targets: list[Range]) -> None:
        if self._copier is None:
            self._copier = DeviceCopier(self.device.kind, self.device.id, [r.dtype for r in sources])
        self._copier.copy(sources, targets)

    def _slot_ranges(self, slot: int, length: int) -> list[Range]:
        bases = {s.name: self.buffers[s.name].data_ptr() + slot * self._row_bytes[s.name] for s in self.specs}
        return self._ranges(bases, self.max_context, length)

    def _snapshot_ranges(self, snap: StateSnapshot) -> list[Range]:
        return self._ranges({name: v.data_ptr() for name, v in snap.values.items()}, snap.length, snap.length)

    def _ranges(self, bases: dict[str, int], capacity: int, length: int) -> list[Range]:
        """The contiguous ranges that hold the state after `length` tokens in memory laid out as one slot
        whose K/V hold `capacity` tokens, state s at address bases[s.name]: conv and SSM states whole, and
        one range per head of each K/V [kv_heads, capacity, head_dim]."""
        out = []
        for s in self.specs:
            dtype = np.dtype(NP_DTYPE[s.dtype])
            if s.per_token:
                heads, _, width = s.shape
                out += [Range(bases[s.name] + h * capacity * width * dtype.itemsize, length * width, dtype)
                        for h in range(heads)]
            else:
                out.append(Range(bases[s.name], math.prod(s.shape), dtype))
        return out

    def read(self, slot: int) -> dict[str, np.ndarray]:
        """A host copy of one slot's state (for tests and checks: it copies every slot of each state)."""
        return {name: value.numpy()[slot] for name, value in self.buffers.items()}


def slot_shape(spec: StateSpec, max_context: int) -> list[int]:
    """One slot's shape of `spec`: K/V [kv_heads, tokens, head_dim] holds `max_context` tokens."""
    shape = list(spec.shape)
    if spec.per_token:
        shape[1] = max_context
    return shape


def runs(slots: list[int]) -> list[tuple[int, int]]:
    """`slots` cut into runs of ascending consecutive slots, in order: (index of the run's first row, rows)."""
    out: list[tuple[int, int]] = []
    for k, slot in enumerate(slots):
        if out and slots[k - 1] + 1 == slot:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((k, 1))
    return out
