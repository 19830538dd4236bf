"""Calibrated int4: the projections' formats and codes fitted on the model's own activations.

Three steps, each walking the checkpoint one layer at a time (a float32 reference layer built from that
layer's tensors only: nemotron_export.checkpoint), carrying the calibration rows' float32 hidden states
from layer to layer; the embedding of the rows reads only the table's rows of the ids used:
1. calibration rows: the shipped corpus (export/corpus) through the checkpoint's tokenizer, or uniformly
   random tokens (seeded) when there is no tokenizer or when asked;
2. `sensitivity_walk` on the first SENSITIVITY_ROWS rows: per projection, its sensitivity and its
   rounding error in each format of the menu; then `plan_formats`, the knapsack of
   nemotron_export.allocation: each projection's format within the bytes of uniform int4 at the export's
   group size;
3. `quantize_walk`: per layer, one pass collects the Hessians X^T X of its projections' inputs and moves
   the hidden states on, then GPTQ quantizes each projection in its planned format and the Hessians are
   dropped. Only one layer's weights and Hessians exist at a time (the real model's MLP down_proj alone
   has 15680^2). Moving the hidden states on through the quantized layer instead (so each layer is fitted
   to its quantized inputs) costs a second pass per layer and measured no better on `small` (logit error
   0.140 against 0.139). Without GPTQ, step 3 rounds to nearest with the clip search instead (no Hessians,
   no hidden states).
The walks are generators that start at any layer given the hidden states entering it, so the exporter
writes and journals each layer as it comes and a resumed export continues where it stopped;
`quantize_int4` runs all three steps in memory (benchmarks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from edge_runtime.bundle.model_config import ATTENTION, MAMBA, ModelConfig
from nemotron_export.allocation import BlockFormat, allocate, budget_bytes, menu
from nemotron_export.checkpoint import Checkpoint
from nemotron_export.model import Block, NemotronH
from nemotron_export.quantize import QuantizedWeight, check_format, gptq, quantize
from nemotron_export.tokenizer_synth import corpus_text

SOURCES = ("corpus", "random")
ROWS, ROW_TOKENS = 64, 128  # 8192 tokens: more than any input width of `small` (1792)
SENSITIVITY_ROWS = 8  # a layer is re-run once per projection here: a few rows rank them
RANDOM_SEED = 7
BATCH_ROWS = 16  # rows per forward pass: bounds the activations in flight on a large model


@dataclass(frozen=True)
class Calibration:
    """What int4 weights are fitted on (`source`: corpus or random tokens) and how (`gptq`, or round to
    nearest with a clip search)."""

    source: str
    gptq: bool = True

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"--calibration: unknown source {self.source!r}; choose {' or '.join(SOURCES)}")

    def to_manifest(self) -> dict:
        seed = {"seed": RANDOM_SEED} if self.source == "random" else {}
        return {"source": self.source, **seed, "rows": ROWS, "tokens_per_row": ROW_TOKENS,
                "sensitivity_rows": SENSITIVITY_ROWS, "method": "gptq" if self.gptq else "nearest"}


def calibration_rows(source: str, vocab_size: int, tokenizer_file: Path | None) -> torch.Tensor:
    """[ROWS, ROW_TOKENS] token ids: random ones, or rows taken at evenly spaced offsets of the corpus (so
    every file of it is seen) as the checkpoint's tokenizer encodes it."""
    if source == "random":
        return torch.from_numpy(np.random.default_rng(RANDOM_SEED).integers(0, vocab_size, (ROWS, ROW_TOKENS)))
    if tokenizer_file is None:
        raise ValueError("--calibration corpus: the checkpoint has no tokenizer.json; use --calibration random")
    ids = Tokenizer.from_file(str(tokenizer_file)).encode(corpus_text()).ids
    if len(ids) < ROWS * ROW_TOKENS:
        raise ValueError(f"--calibration corpus: the corpus is {len(ids)} tokens with this tokenizer, "
                         f"{ROWS} rows of {ROW_TOKENS} need {ROWS * ROW_TOKENS}; use --calibration random")
    starts = np.linspace(0, len(ids) - ROW_TOKENS, ROWS).astype(int)
    return torch.tensor([ids[s:s + ROW_TOKENS] for s in starts])


def projections(model: NemotronH) -> dict[str, nn.Linear]:
    """The projections int4 plans, by weight name (as the bundle names them): every Linear but lm_head,
    which int4 bundles keep at 8 bits."""
    return {name: m for i, block in enumerate(model.backbone.layers) for name, m in layer_projections(block, i).items()}


def layer_projections(block: Block, i: int) -> dict[str, nn.Linear]:
    """Layer i's projections, by weight name."""
    return {f"backbone.layers.{i}.mixer.{name}.weight": m for name, m in block.mixer.named_modules()
            if isinstance(m, nn.Linear)}


def run_mixer(cfg: ModelConfig, block: Block, u: torch.Tensor) -> torch.Tensor:
    """The layer's mixer on full rows `u` [b, t, d] from empty states."""
    b, t, _ = u.shape
    if block.kind == MAMBA:
        conv = torch.zeros(b, cfg.conv_dim, cfg.conv_kernel - 1)
        ssm = torch.zeros(b, cfg.mamba_num_heads, cfg.mamba_head_dim, cfg.ssm_state_size)
        return block.mixer(u, conv, ssm, torch.full((b,), t), False)[0]
    if block.kind == ATTENTION:
        empty = torch.zeros(b, cfg.num_key_value_heads, 0, cfg.head_dim)
        return block.mixer(u, empty, empty, torch.zeros(b, dtype=torch.long))[0]
    return block.mixer(u)


@contextlib.contextmanager
def swapped(linear: nn.Linear, weight: np.ndarray) -> Iterator[None]:
    """`linear` computing with `weight` inside the block, with its own weight back after it (one matrix
    is copied aside at a time)."""
    saved = linear.weight.detach().clone()
    try:
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weight))
        yield
    finally:
        with torch.no_grad():
            linear.weight.copy_(saved)


@dataclass(frozen=True)
class ProjectionCost:
    """What the plan knows of a projection: its `sensitivity` (see `measure_layer`) and, per format of the
    menu, the squared error of its weights rounded to that format."""

    sensitivity: float
    errors: dict[BlockFormat, float]

    def to_dict(self) -> dict:
        """JSON (the export journal): floats as they are, formats as "bits/block_size"."""
        return {"sensitivity": self.sensitivity, "errors": {f"{f.bits}/{f.block_size}": e for f, e in self.errors.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "ProjectionCost":
        errors = {BlockFormat(*map(int, key.split("/"))): float(e) for key, e in d["errors"].items()}
        return cls(float(d["sensitivity"]), errors)


def measure_layer(cfg: ModelConfig, block: Block, i: int, x: torch.Tensor,
                  group_size: int) -> tuple[torch.Tensor, dict[str, ProjectionCost]]:
    """x [rows, t, d] entering layer i -> (x leaving it, each projection's cost). The sensitivity is the
    squared change of the layer's output when that matrix alone is rounded to uniform int4 at
    `group_size`, relative to the squared residual stream after the layer. Layer-local, so one pass over
    the model instead of one per matrix: on `small` the full-network effect (quantize one matrix, measure
    the logits) ranks the matrices the same way (log correlation 0.99) and gives the same plan but for one
    or two matrices."""
    reference = BlockFormat(4, group_size)
    out: dict[str, ProjectionCost] = {}
    with torch.no_grad():
        u = block.norm(x)
        y = run_mixer(cfg, block, u)
        x = x + y
        scale = float((x ** 2).sum())
        for name, linear in layer_projections(block, i).items():
            w = linear.weight.detach().numpy()
            errors = {}
            for f in menu(group_size):
                rounded = quantize(w, f.bits, f.block_size).dequantize()
                errors[f] = float(((rounded - w) ** 2).sum())
                if f == reference:
                    with swapped(linear, rounded):
                        sensitivity = float(((run_mixer(cfg, block, u) - y) ** 2).sum()) / scale
            out[name] = ProjectionCost(sensitivity, errors)
    return x, out


def plan_formats(costs: dict[str, ProjectionCost], shapes: dict[str, tuple[int, int]], group_size: int,
                 scale_bytes: int) -> dict[str, BlockFormat]:
    """`allocate` over the menu for `group_size`. A projection's error in format f is estimated as its
    sensitivity times f's squared rounding error of the weights over the reference format's (uniform int4
    at `group_size`, where the sensitivity was measured)."""
    reference = BlockFormat(4, group_size)
    cost = {}
    for name, c in costs.items():
        ref = c.errors[reference]
        cost[name] = {f: c.sensitivity * (e / ref if ref > 0 else 0.0) for f, e in c.errors.items()}
    return allocate(shapes, cost, budget_bytes(shapes, group_size, scale_bytes), scale_bytes)


def layer_hessians(cfg: ModelConfig, block: Block, i: int,
                   xs: list[torch.Tensor]) -> tuple[dict[str, np.ndarray], list[torch.Tensor]]:
    """X^T X / tokens of the input of each projection of layer i over the hidden states `xs` entering it,
    and the hidden states leaving it."""
    linears = layer_projections(block, i)
    sums: dict[str, torch.Tensor] = {}
    last: list = [None, None]  # q/k/v read the same input tensor: one sum for all, copied apart at the end

    def accumulate(name: str, x: torch.Tensor) -> None:
        if last[0] is x:
            sums[name] = sums[last[1]]
            return
        last[0], last[1] = x, name
        flat = x.reshape(-1, x.shape[-1])  # [tokens, K]
        if name not in sums:
            sums[name] = torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float64)
        _add_product(sums[name], flat)

    hooks = [m.register_forward_hook(lambda _m, inp, _out, name=name: accumulate(name, inp[0]))
             for name, m in linears.items()]
    try:
        with torch.no_grad():
            after = [x + run_mixer(cfg, block, block.norm(x)) for x in xs]
    finally:
        for h in hooks:
            h.remove()
    tokens = sum(x.shape[0] * x.shape[1] for x in xs)
    out: dict[str, np.ndarray] = {}
    for name, s in sums.items():
        shared = next((out[n] for n in out if sums[n] is s), None)
        out[name] = s.div_(tokens).numpy() if shared is None else shared.copy()  # gptq works in place
    return out, after


def _add_product(total: torch.Tensor, flat: torch.Tensor, rows: int = 1024) -> None:
    """total += flat^T flat, a block of rows at a time in float32, each block added to the float64 sum: on
    the 9B the whole float32 product of down_proj's input would be 1 GB beside the sum's 2 GB."""
    for r in range(0, total.shape[0], rows):
        total[r:r + rows].add_(flat[:, r:r + rows].T @ flat)


def quantize_layer(cfg: ModelConfig, block: Block, i: int, plan: dict[str, BlockFormat],
                   xs: list[torch.Tensor] | None, scale_dtype: np.dtype = np.float32,
                   ) -> tuple[dict[str, QuantizedWeight], list[torch.Tensor] | None]:
    """Layer i's projections in their planned formats: GPTQ on the hidden states `xs` entering the layer
    (returning those leaving it), or with `xs` None rounded to nearest with the clip search."""
    out: dict[str, QuantizedWeight] = {}
    with torch.no_grad():
        hessians: dict[str, np.ndarray] = {}
        if xs is not None:
            hessians, xs = layer_hessians(cfg, block, i, xs)
        for name, linear in layer_projections(block, i).items():
            w, f = linear.weight.detach().numpy(), plan[name]
            out[name] = (gptq(w, hessians.pop(name), f.bits, f.block_size, scale_dtype) if xs is not None
                         else quantize(w, f.bits, f.block_size, scale_dtype, search_clip=True))
    return out, xs


def sensitivity_walk(ckpt: Checkpoint, ids: torch.Tensor, group_size: int, start: int = 0,
                     x: torch.Tensor | None = None) -> Iterator[tuple[int, torch.Tensor, dict[str, ProjectionCost]]]:
    """(i, hidden states leaving layer i, its projections' costs) for each layer from `start`, whose
    entering hidden states `x` are given (else: the embedding of `ids` [rows, t], at layer 0)."""
    x = ckpt.embedding_rows(ids) if x is None else x  # [rows, t, d]
    for i in range(start, ckpt.cfg.num_layers):
        x, costs = measure_layer(ckpt.cfg, ckpt.layer(i), i, x, group_size)
        yield i, x, costs


def quantize_walk(ckpt: Checkpoint, plan: dict[str, BlockFormat], ids: torch.Tensor, use_gptq: bool,
                  scale_dtype: np.dtype = np.float32, start: int = 0, xs: list[torch.Tensor] | None = None,
                  ) -> Iterator[tuple[int, Block, dict[str, QuantizedWeight], list[torch.Tensor] | None]]:
    """(i, layer i, its projections as `plan` and GPTQ or rounding make them, the hidden states leaving
    it) for each layer from `start`; with GPTQ, the hidden states `xs` entering it are given (else: the
    embedding of `ids`, BATCH_ROWS rows a tensor, at layer 0)."""
    if use_gptq and xs is None:
        xs = list(ckpt.embedding_rows(ids).split(BATCH_ROWS))  # [BATCH_ROWS, t, d] each
    for i in range(start, ckpt.cfg.num_layers):
        block = ckpt.layer(i)
        quantized, xs = quantize_layer(ckpt.cfg, block, i, plan, xs if use_gptq else None, scale_dtype)
        yield i, block, quantized, xs


def projection_shapes(ckpt: Checkpoint) -> dict[str, tuple[int, int]]:
    """[out, in] of every projection int4 plans."""
    with torch.device("meta"):
        names = projections(NemotronH(ckpt.cfg))
    return {name: ckpt.shape(name) for name in names}


def quantize_int4(ckpt: Checkpoint, group_size: int, calibration: Calibration, tokenizer_file: Path | None,
                  scale_dtype: np.dtype = np.float32) -> dict[str, QuantizedWeight]:
    """All of an int4 bundle's projections, by weight name, in memory (benchmarks; the exporter walks the
    layers itself, writing each as it comes): formats planned within the bytes of uniform int4 at
    `group_size`, codes fitted as `calibration` says."""
    check_format(4, group_size)
    ids = calibration_rows(calibration.source, ckpt.cfg.vocab_size, tokenizer_file)
    costs: dict[str, ProjectionCost] = {}
    for _, _, layer_costs in sensitivity_walk(ckpt, ids[:SENSITIVITY_ROWS], group_size):
        costs.update(layer_costs)
    plan = plan_formats(costs, projection_shapes(ckpt), group_size, np.dtype(scale_dtype).itemsize)
    return {name: q for _, _, layer_q, _ in quantize_walk(ckpt, plan, ids, calibration.gptq, scale_dtype)
            for name, q in layer_q.items()}
