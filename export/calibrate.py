"""Calibrated int4: the projections' formats and codes fitted on the model's own activations.

`quantize_int4` runs on the exporter's one float32 model, in three steps:
1. calibration rows: the shipped corpus (export/corpus) through the checkpoint's tokenizer, or uniformly
   random tokens (seeded) when there is no tokenizer or when asked;
2. `sensitivities` on the first SENSITIVITY_ROWS rows, then the knapsack of nemotron_export.allocation:
   each projection's format within the bytes of uniform int4 at the export's group size;
3. `quantize_layers`: the layers in order, carrying the calibration rows' float32 hidden states; per
   layer, one pass collects the Hessians X^T X of its projections' inputs and moves the hidden states on,
   then GPTQ quantizes each projection in its planned format and the Hessians are dropped. Only one
   layer's Hessians exist at a time (the real model's MLP down_proj alone has 15680^2). Moving the hidden
   states on through the quantized layer instead (so each layer is fitted to its quantized inputs) costs
   a second pass per layer and measured no better on `small` (logit error 0.140 against 0.139).
Without GPTQ, step 3 rounds to nearest with the clip search instead (no Hessians, no hidden states).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm

from edge_runtime.model_config import ATTENTION, MAMBA
from nemotron_export.allocation import BlockFormat, allocate, budget_bytes, menu
from nemotron_export.model import NemotronH
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
    return {f"{name}.weight": m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name != "lm_head"}


def layer_projections(model: NemotronH, i: int) -> dict[str, nn.Linear]:
    mixer = model.backbone.layers[i].mixer
    return {f"backbone.layers.{i}.mixer.{name}.weight": m for name, m in mixer.named_modules()
            if isinstance(m, nn.Linear)}


def run_mixer(model: NemotronH, i: int, u: torch.Tensor) -> torch.Tensor:
    """Layer i's mixer on full rows `u` [b, t, d] from empty states."""
    cfg, block = model.cfg, model.backbone.layers[i]
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
    """`linear` computing with `weight` inside the block, with its own weight back after it. The model's
    parameters are the exporter's only float32 copy: one matrix is copied aside at a time."""
    saved = linear.weight.detach().clone()
    try:
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weight))
        yield
    finally:
        with torch.no_grad():
            linear.weight.copy_(saved)


def sensitivities(model: NemotronH, ids: torch.Tensor, reference: BlockFormat,
                  progress: bool = False) -> dict[str, float]:
    """Per projection, the squared change of its layer's output over `ids` when that matrix alone is
    rounded to `reference`, relative to the squared residual stream after the layer. Layer-local, so one
    pass over the model instead of one per matrix: on `small` the full-network effect (quantize one matrix,
    measure the logits) ranks the matrices the same way (log correlation 0.99) and gives the same plan but
    for one or two matrices."""
    out: dict[str, float] = {}
    with torch.no_grad():
        x = model.backbone.embeddings(ids)
        for i, block in enumerate(tqdm(model.backbone.layers, desc="measuring sensitivity", unit="layer",
                                       disable=not progress)):
            u = block.norm(x)
            y = run_mixer(model, i, u)
            x = x + y
            scale = float((x ** 2).sum())
            for name, linear in layer_projections(model, i).items():
                rounded = quantize(linear.weight.detach().numpy(), reference.bits, reference.block_size).dequantize()
                with swapped(linear, rounded):
                    out[name] = float(((run_mixer(model, i, u) - y) ** 2).sum()) / scale
    return out


def plan_formats(model: NemotronH, sensitivity: dict[str, float], group_size: int,
                 scale_bytes: int) -> dict[str, BlockFormat]:
    """`allocate` over the menu for `group_size`. A projection's error in format f is estimated as its
    sensitivity times f's squared rounding error of the weights over the reference format's (uniform int4
    at `group_size`, where the sensitivity was measured)."""
    reference = BlockFormat(4, group_size)
    shapes, cost = {}, {}
    for name, linear in projections(model).items():
        w = linear.weight.detach().numpy()
        shapes[name] = w.shape
        err = {f: float(((quantize(w, f.bits, f.block_size).dequantize() - w) ** 2).sum()) for f in menu(group_size)}
        cost[name] = {f: sensitivity[name] * (e / err[reference] if err[reference] > 0 else 0.0)
                      for f, e in err.items()}
    return allocate(shapes, cost, budget_bytes(shapes, group_size, scale_bytes), scale_bytes)


def layer_hessians(model: NemotronH, i: int, xs: list[torch.Tensor]) -> tuple[dict[str, np.ndarray], list[torch.Tensor]]:
    """X^T X / tokens of the input of each projection of layer i over the hidden states `xs` entering it,
    and the hidden states leaving it."""
    linears = layer_projections(model, i)
    sums: dict[str, torch.Tensor] = {}
    last: list[torch.Tensor | None] = [None, None]  # q/k/v take the same input tensor: one product for all

    def accumulate(name: str, x: torch.Tensor) -> None:
        if last[0] is not x:
            flat = x.reshape(-1, x.shape[-1])
            last[0], last[1] = x, (flat.T @ flat).double()  # float32 products, summed in float64
        if name in sums:
            sums[name].add_(last[1])  # in place: on the 9B model one down_proj Hessian is 2 GB
        else:
            sums[name] = last[1].clone()

    hooks = [m.register_forward_hook(lambda _m, inp, _out, name=name: accumulate(name, inp[0]))
             for name, m in linears.items()]
    try:
        with torch.no_grad():
            after = [x + run_mixer(model, i, model.backbone.layers[i].norm(x)) for x in xs]
    finally:
        for h in hooks:
            h.remove()
    tokens = sum(x.shape[0] * x.shape[1] for x in xs)
    return {name: s.div_(tokens).numpy() for name, s in sums.items()}, after


def quantize_layers(model: NemotronH, plan: dict[str, BlockFormat], ids: torch.Tensor, use_gptq: bool,
                    scale_dtype: np.dtype = np.float32, progress: bool = False) -> dict[str, QuantizedWeight]:
    """Every projection of `plan` quantized to its format, layer by layer (see the module docstring)."""
    out: dict[str, QuantizedWeight] = {}
    with torch.no_grad():
        xs = [model.backbone.embeddings(rows) for rows in ids.split(BATCH_ROWS)] if use_gptq else []
        for i in tqdm(range(len(model.backbone.layers)), desc="quantizing layers", unit="layer",
                      disable=not progress):
            hessians: dict[str, np.ndarray] = {}
            if use_gptq:
                hessians, xs = layer_hessians(model, i, xs)
            for name, linear in layer_projections(model, i).items():
                w, f = linear.weight.detach().numpy(), plan[name]
                out[name] = (gptq(w, hessians[name], f.bits, f.block_size, scale_dtype) if use_gptq
                             else quantize(w, f.bits, f.block_size, scale_dtype, search_clip=True))
            del hessians
    return out


def quantize_int4(model: NemotronH, group_size: int, calibration: Calibration, tokenizer_file: Path | None,
                  scale_dtype: np.dtype = np.float32, progress: bool = False) -> dict[str, QuantizedWeight]:
    """The int4 bundle's projections, by weight name: formats planned within the bytes of uniform int4 at
    `group_size`, codes fitted as `calibration` says."""
    check_format(4, group_size)
    ids = calibration_rows(calibration.source, model.cfg.vocab_size, tokenizer_file)
    sensitivity = sensitivities(model, ids[:SENSITIVITY_ROWS], BlockFormat(4, group_size), progress)
    plan = plan_formats(model, sensitivity, group_size, np.dtype(scale_dtype).itemsize)
    return quantize_layers(model, plan, ids, calibration.gptq, scale_dtype, progress)
