"""The mixed int4 plan: which MatMulNBits format each projection gets within a byte budget.

int4 bundles spend the bytes of uniform int4 at the export's group size (`budget_bytes`) unevenly: each
projection is stored as int4 at group 32, 64 or 128 or at the budget's own group size, or as int8 at group
128 (`menu`), chosen by a knapsack over per-projection error estimates. On the random-weight `small`
preset, a sixth of the weights at 8 bits, picked by sensitivity, roughly halves the logit error at the same
bytes (bench/int4_quantizers.py): the error is uneven across matrices and depth, not across blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICE_STEPS = 60  # bisection steps on the price of a byte: 2^-60 of the starting bracket


@dataclass(frozen=True, order=True)
class BlockFormat:
    """How one projection is stored: MatMulNBits bits and block size, one scale of `scale_bytes` a block."""

    bits: int
    block_size: int

    def bytes(self, n: int, k: int, scale_bytes: int) -> int:
        """Stored bytes of an [n, k] weight: codes of K padded to whole blocks, one scale per block."""
        blocks = n * -(-k // self.block_size)
        return blocks * (self.block_size * self.bits // 8 + scale_bytes)


def menu(group_size: int) -> tuple[BlockFormat, ...]:
    """The formats a projection may get: int4 at group 32/64/128 and at `group_size` (so uniform int4 at
    the budget's group size is always a plan within budget), and int8 at group 128."""
    return tuple(sorted({BlockFormat(4, 32), BlockFormat(4, 64), BlockFormat(4, 128), BlockFormat(4, group_size),
                         BlockFormat(8, 128)}))


def budget_bytes(shapes: dict[str, tuple[int, int]], group_size: int, scale_bytes: int) -> int:
    """The bytes of every projection as uniform int4 at `group_size`."""
    return sum(BlockFormat(4, group_size).bytes(n, k, scale_bytes) for n, k in shapes.values())


def allocate(shapes: dict[str, tuple[int, int]], cost: dict[str, dict[BlockFormat, float]], budget: int,
             scale_bytes: int) -> dict[str, BlockFormat]:
    """Per projection, the format among its `cost` keys minimising the summed cost with the stored bytes
    within `budget`. Solved by Lagrangian relaxation: each projection independently minimises cost + price x
    bytes, and the price is bisected to the cheapest plan that fits; the bytes that plan leaves (a large
    matrix's upgrade is one step) then go, greedily, to the upgrades that remove the most cost per byte.
    Raises ValueError when no plan fits."""
    def nbytes(name: str, f: BlockFormat) -> int:
        return f.bytes(*shapes[name], scale_bytes)

    def plan(price: float) -> dict[str, BlockFormat]:
        return {name: min(cost[name], key=lambda f: (cost[name][f] + price * nbytes(name, f), nbytes(name, f)))
                for name in shapes}

    def size(p: dict[str, BlockFormat]) -> int:
        return sum(nbytes(name, f) for name, f in p.items())

    total_cost = sum(max(c.values()) for c in cost.values())
    hi = max(total_cost, 1.0)  # at this price a byte outweighs any cost difference: the smallest plan
    if size(plan(hi)) > budget:
        raise ValueError(f"int4 budget: {budget} bytes is less than the smallest plan's {size(plan(hi))}")
    lo = 0.0
    for _ in range(PRICE_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if size(plan(mid)) > budget else (lo, mid)
    chosen = plan(hi)
    spare = budget - size(chosen)
    while True:
        upgrades = [((cost[name][chosen[name]] - cost[name][f]) / extra, name, f)
                    for name in shapes for f in cost[name]
                    if cost[name][f] < cost[name][chosen[name]]
                    and 0 < (extra := nbytes(name, f) - nbytes(name, chosen[name])) <= spare]
        if not upgrades:
            return chosen
        _, name, f = max(upgrades)
        spare -= nbytes(name, f) - nbytes(name, chosen[name])
        chosen[name] = f
