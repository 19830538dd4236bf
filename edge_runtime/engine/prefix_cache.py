"""Prefix state cache: snapshots of a sequence's whole state at a token position, found again by the exact
token ids before that position.

A Mamba layer's state at position n cannot be cut out of a longer run, so a snapshot is taken while a
prompt is prefilled, at a position chosen beforehand (the engine ends a prefill chunk there): every Mamba
layer's conv and float32 SSM state and the attention layers' K/V up to n (`StatePool.snapshot`). A new
sequence whose prompt starts with those n tokens copies the snapshot into its slot and prefills the rest.

Keys are a hash chain over blocks of `BLOCK` token ids, seeded with the bundle's identity, so that a
snapshot of another bundle can never match. A snapshot of n tokens is filed under the chain's hash at its
last whole block (n // BLOCK blocks); a lookup computes the chain along the prompt once and checks the few
snapshots filed under each hash: time linear in the prompt. The one snapshot chosen has its token ids
compared in full before it is used, so a hash collision cannot hand out another prefix's state.

Memory: snapshots live within `budget` bytes. Making room evicts the least recently used unpinned ones; a
capture that would not fit even then is not taken. Pinned snapshots are never evicted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.engine.state_pool import StateSnapshot

BLOCK = 64  # token ids per link of the hash chain


def _link(previous: bytes, block: np.ndarray) -> bytes:
    return hashlib.blake2b(previous + block.tobytes(), digest_size=16).digest()


@dataclass(eq=False)
class Snapshot:
    tokens: np.ndarray  # int32 [n]: the prefix it holds the state after
    state: StateSnapshot  # as StatePool.snapshot gives it, on the pool's device
    nbytes: int
    key: bytes  # the chain's hash at its last whole block, which it is filed under
    pinned: bool = False
    last_used: int = 0

    @property
    def length(self) -> int:
        return int(self.tokens.size)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    tokens_saved: int = 0  # prompt tokens not prefilled because a snapshot held them
    captures: int = 0
    skipped: int = 0  # captures not taken: no room within the budget
    evictions: int = 0
    entries: int = 0
    bytes: int = 0


@dataclass
class PrefixCache:
    budget: int  # bytes all snapshots may hold together
    seed: bytes  # the bundle's identity: the first link of every chain
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        self._filed: dict[bytes, list[Snapshot]] = {}  # chain hash at the last whole block -> snapshots
        self._tick = 0

    def _chain(self, ids: np.ndarray) -> list[bytes]:
        """The chain's hash after 0, 1, ... whole blocks of `ids`."""
        out = [self.seed]
        for j in range(ids.size // BLOCK):
            out.append(_link(out[-1], ids[j * BLOCK:(j + 1) * BLOCK]))
        return out

    def lookup(self, prompt: Sequence[int], limit: int) -> Snapshot | None:
        """The snapshot of the longest prefix of `prompt` of at most `limit` tokens, or None; counted as a
        hit or a miss."""
        ids = np.asarray(prompt[:limit], dtype=np.int32)
        best: Snapshot | None = None
        for j, h in enumerate(self._chain(ids)):
            for snap in self._filed.get(h, ()):
                n = snap.length
                if n <= ids.size and (best is None or n > best.length) \
                        and np.array_equal(snap.tokens[j * BLOCK:], ids[j * BLOCK:n]):
                    best = snap
        if best is not None and not np.array_equal(best.tokens, ids[:best.length]):
            best = None  # a hash collision on the whole blocks
        if best is None:
            self.stats.misses += 1
            return None
        self._tick += 1
        best.last_used = self._tick
        self.stats.hits += 1
        self.stats.tokens_saved += best.length
        return best

    def insert(self, tokens: Sequence[int], nbytes: int, take: Callable[[], StateSnapshot],
               pinned: bool = False) -> Snapshot | None:
        """File the state after `tokens`, copied by `take()` only once `nbytes` of room is made; None when it
        cannot be (the budget, less pinned snapshots, is too small). A prefix already held is kept (and
        pinned if asked), not copied again."""
        ids = np.asarray(tokens, dtype=np.int32)
        if ids.size == 0:
            raise ValueError("a snapshot needs at least one token")
        self._tick += 1
        key = self._chain(ids)[-1]
        held = next((s for s in self._filed.get(key, ()) if np.array_equal(s.tokens, ids)), None)
        if held is not None:
            held.pinned = held.pinned or pinned
            held.last_used = self._tick
            return held
        if not self._make_room(nbytes):
            self.stats.skipped += 1
            return None
        snap = Snapshot(ids, take(), nbytes, key, pinned, self._tick)
        self._filed.setdefault(key, []).append(snap)
        self.stats.captures += 1
        self.stats.entries += 1
        self.stats.bytes += nbytes
        return snap

    def _make_room(self, nbytes: int) -> bool:
        unpinned = sorted((s for group in self._filed.values() for s in group if not s.pinned), key=lambda s: s.last_used)
        if self.stats.bytes - sum(s.nbytes for s in unpinned) + nbytes > self.budget:
            return False
        for snap in unpinned:
            if self.stats.bytes + nbytes <= self.budget:
                break
            self._remove(snap)
            self.stats.evictions += 1
        return True

    def _remove(self, snap: Snapshot) -> None:
        group = self._filed[snap.key]
        group.remove(snap)
        if not group:
            del self._filed[snap.key]
        self.stats.entries -= 1
        self.stats.bytes -= snap.nbytes
