"""How many sequences of what context fit a memory budget: exact weight bytes, per-sequence state, working memory.

Budget = weights + pre-packed weight copies + runtime overhead + prefill working memory
         + n x (per-sequence state at the context + one decode row of working memory).

Weights are counted tensor by tensor from the architecture (`parameter_tensors`), with the storage each
weight format gives a tensor:
- fp32 / fp16 / bf16: every tensor in that dtype.
- int8 / int4: the projection matrices (Mamba in_proj/out_proj, attention q/k/v/o, MLP up/down, and lm_head
  at 8 bits unless `quantize_lm_head=False`) are ONNX Runtime MatMulNBits block-quantized along the input dimension:
  blocks of `group_size` weights, each block one scale in the activation dtype and, with `zero_points`, one
  packed zero point (bits/8 bytes, rounded up per row). The embedding table is quantized the same way only
  with `quantize_embeddings=True`, as int8 rows with one float32 scale each (what int4 bundles do); everything else (norms, conv, dt_bias, A_log, D,
  biases) stays in the activation dtype.

Pre-packed copies: ONNX Runtime's CPU provider re-lays out the weights of MatMul and MatMulNBits nodes at
session creation ("pre-packing"), one copy per session, beside the mapped weights.bin. The runtime keeps it
on for quantized bundles (MatMulNBits is slow without it) and off for float ones, so a quantized bundle on
the CPU provider holds its matmul weights 1 + 2 times (prefill and decode sessions). Measured on `small`
(resident growth with pre-packing on minus off, per session): 0.94x (int4) and 0.76x (int8) the bytes of
the MatMulNBits codes and scales, 1.0x the float weights with pre-packing forced on; the plan counts 1.0x.
Except for 8-bit blocks at MatMulNBits accuracy level 0 (`export --accuracy-level 0`): the CPU provider has
no kernel for them, does not pre-pack them, and dequantizes the whole matrix to float32 on every call, so
a bundle's plan (`plan_for_bundle`) counts no copy of them and one float32 matrix of the largest of them
(`dequantized_bytes`; measured on the 9B int4 bundle: the 8-bit blocks' pre-packed copies absent, a page
fault for every page of each dequantized matrix, bench/matmul_nbits.py).

Working memory (a model of the graphs as the exporter builds them, checked against measured resident memory
in tests/test_engine.py):
- prefill, for the tokens of one engine step (`prefill_chunk`), per token:
    4 bytes x (attention heads x context           -- GroupQueryAttention's float32 probabilities
               + 6 x mamba heads x chunk_size      -- the SSD scan's intra-chunk decay and score matrices
               + 4 x (in_proj_dim + intermediate_size + hidden_size))  -- projection outputs in flight
  times ARENA_FACTOR: ONNX Runtime's CPU arena keeps what it grew for the largest step (measured on
  `small`: 1.6x to 2.9x the live set, plus about 30 MiB, over steps of 128 to 512 tokens);
- decode, per batch row: vocab x 4 (float32 logits) + (in_proj_dim + intermediate_size) x activation bytes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from edge_runtime.bundle.model_config import ATTENTION, MAMBA, MLP, ModelConfig
from edge_runtime.bundle.state_layout import (
    DTYPE_BYTES,
    StateSpec,
    bytes_per_token,
    fixed_bytes_per_sequence,
    state_layout,
)

MiB = 1024**2
# ONNX Runtime sessions, CUDA context and the Python process; a named guess until measured on a Thor.
if TYPE_CHECKING:
    from edge_runtime.bundle.reader import Bundle

RUNTIME_OVERHEAD_BYTES = 150 * MiB
ARENA_FACTOR = 3
LM_HEAD_BITS = 8
DEFAULT_GROUP_SIZE = 32
DEFAULT_PREFILL_CHUNK = 512

WEIGHT_FORMATS = ("fp32", "fp16", "bf16", "int8", "int4")
_FLOAT_FORMAT_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_QUANT_BITS = {"int8": 8, "int4": 4}

# Tensor roles: "matmul" and "lm_head" tensors are [out, in] matrices MatMulNBits can hold; "embedding" is
# the [vocab, hidden] gather table; "other" is everything kept in the activation dtype.
MATMUL, LM_HEAD, EMBEDDING, OTHER = "matmul", "lm_head", "embedding", "other"


class MemoryPlanError(ValueError):
    """A plan that cannot be made; the message names the field or says how much memory is missing."""


@dataclass(frozen=True)
class Tensor:
    """One parameter tensor of the checkpoint, named as in Hugging Face's NemotronH."""

    name: str
    shape: tuple[int, ...]
    role: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class WeightStorage:
    """How the weights are stored on the device."""

    format: str
    activation_dtype: str
    group_size: int = DEFAULT_GROUP_SIZE
    quantize_lm_head: bool = True
    quantize_embeddings: bool = False
    zero_points: bool = False

    def tensor_bytes(self, t: Tensor) -> int:
        act = DTYPE_BYTES[self.activation_dtype]
        bits = _QUANT_BITS.get(self.format)
        if bits is not None and t.role == EMBEDDING and self.quantize_embeddings:
            vocab, hidden = t.shape  # int8 rows, one float32 scale per row (nemotron_export.onnx_graph)
            return vocab * hidden + vocab * 4
        quantized = bits is not None and (t.role == MATMUL or (t.role == LM_HEAD and self.quantize_lm_head))
        if not quantized:
            return t.numel * act
        if t.role == LM_HEAD:
            bits = LM_HEAD_BITS  # the exporter keeps the output layer at 8 bits in int4 bundles too
        rows, cols = t.shape  # [out, in]; blocks run along `in`, padded to whole blocks
        blocks = math.ceil(cols / self.group_size)
        data = rows * blocks * self.group_size * bits // 8
        scales = rows * blocks * act
        zeros = rows * math.ceil(blocks * bits / 8) if self.zero_points else 0
        return data + scales + zeros


@dataclass(frozen=True)
class MemoryPlan:
    """Every figure of a plan in bytes, and what fits. `max_sequences` is for `context`. Each sequence costs
    `sequence_bytes(context)` of state in its slot; each of the first `max_batch` sequences (all of them when
    it is None) also costs `decode_working_bytes_per_sequence` for its row of a model call. A call updates
    the state in its slot (no copies of it), and sequences beyond `max_batch` take turns in the rows."""

    weights_format: str
    activation_dtype: str
    group_size: int
    budget_bytes: int
    context: int
    max_batch: int | None
    parameter_count: int
    weight_bytes: int
    prepacked_bytes: int  # the sessions' pre-packed copies of the matmul weights (module docstring)
    dequantized_bytes: int  # float32 copy of the largest matrix a MatMulNBits call dequantizes (module docstring)
    fixed_state_bytes_per_sequence: int
    kv_bytes_per_token: int
    prefill_working_bytes: int
    decode_working_bytes_per_sequence: int
    overhead_bytes: int
    max_position_embeddings: int
    prefix_cache_bytes: int = 0  # the prefix cache's share (edge_runtime/engine/prefix_cache.py)

    @property
    def resident_weight_bytes(self) -> int:
        """The weights as stored plus the copies the sessions pre-pack."""
        return self.weight_bytes + self.prepacked_bytes

    @property
    def base_bytes(self) -> int:
        """What the budget holds before any sequence: weights, overhead, prefill working memory, the prefix
        cache's share."""
        return (self.resident_weight_bytes + self.overhead_bytes + self.prefill_working_bytes + self.dequantized_bytes
                + self.prefix_cache_bytes)

    @property
    def available_bytes(self) -> int:
        """What is left for sequences."""
        return self.budget_bytes - self.base_bytes

    @property
    def working_bytes(self) -> int:
        """Working memory with every batch row in use."""
        return self.prefill_working_bytes + self.rows(self.max_sequences) * self.decode_working_bytes_per_sequence

    @property
    def max_sequences(self) -> int:
        return self.max_sequences_at(self.context)

    def rows(self, n_sequences: int) -> int:
        """Batch rows that `n_sequences` running sequences use: at most `max_batch` per model call."""
        return n_sequences if self.max_batch is None else min(n_sequences, self.max_batch)

    def sequence_bytes(self, context: int) -> int:
        """State of one sequence holding `context` tokens: conv + SSM, plus K/V for every token."""
        return self.fixed_state_bytes_per_sequence + self.kv_bytes_per_token * context

    def total_bytes(self, n_sequences: int, context: int) -> int:
        return (self.base_bytes + n_sequences * self.sequence_bytes(context)
                + self.rows(n_sequences) * self.decode_working_bytes_per_sequence)

    def fits(self, n_sequences: int, context: int) -> bool:
        return self.total_bytes(n_sequences, context) <= self.budget_bytes

    def max_sequences_at(self, context: int) -> int:
        seq, row = self.sequence_bytes(context), self.decode_working_bytes_per_sequence
        n = max(0, self.available_bytes // (seq + row))  # every sequence with its own row
        if self.max_batch is None or n <= self.max_batch:
            return n
        # Past max_batch rows, one more sequence costs its state only.
        return max(0, (self.available_bytes - self.max_batch * row) // seq)

    def max_context(self, n_sequences: int = 1) -> int:
        """Longest context each of `n_sequences` sequences can hold, capped at the model's
        max_position_embeddings; 0 when not even an empty sequence fits."""
        if n_sequences <= 0:
            raise MemoryPlanError(f"n_sequences: must be >= 1, got {n_sequences}")
        n, r = n_sequences, self.rows(n_sequences)
        # n x (fixed + kv c) + r x decode row <= available
        share = self.available_bytes - n * self.fixed_state_bytes_per_sequence \
            - r * self.decode_working_bytes_per_sequence
        if share < 0:
            return 0
        if self.kv_bytes_per_token == 0:
            return self.max_position_embeddings
        return min(self.max_position_embeddings, share // (n * self.kv_bytes_per_token))

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "base_bytes": self.base_bytes,
            "available_bytes": self.available_bytes,
            "working_bytes": self.working_bytes,
            "sequence_bytes": self.sequence_bytes(self.context),
            "max_sequences": self.max_sequences,
            "max_context_one_sequence": self.max_context(1),
        }


def parameter_tensors(config: ModelConfig) -> list[Tensor]:
    """Every parameter tensor of the architecture, in checkpoint order."""
    h = config.hidden_size
    tensors = [Tensor("backbone.embeddings.weight", (config.vocab_size, h), EMBEDDING)]
    for i, kind in enumerate(config.pattern):
        p = f"backbone.layers.{i}"
        tensors.append(Tensor(f"{p}.norm.weight", (h,), OTHER))
        if kind == MAMBA:
            heads = config.mamba_num_heads
            tensors += [
                Tensor(f"{p}.mixer.in_proj.weight", (config.in_proj_dim, h), MATMUL),
                Tensor(f"{p}.mixer.conv1d.weight", (config.conv_dim, 1, config.conv_kernel), OTHER),
                Tensor(f"{p}.mixer.dt_bias", (heads,), OTHER),
                Tensor(f"{p}.mixer.A_log", (heads,), OTHER),
                Tensor(f"{p}.mixer.D", (heads,), OTHER),
                Tensor(f"{p}.mixer.norm.weight", (config.mamba_inner,), OTHER),
                Tensor(f"{p}.mixer.out_proj.weight", (h, config.mamba_inner), MATMUL),
            ]
            if config.use_conv_bias:
                tensors.append(Tensor(f"{p}.mixer.conv1d.bias", (config.conv_dim,), OTHER))
            if config.mamba_proj_bias:
                tensors += [
                    Tensor(f"{p}.mixer.in_proj.bias", (config.in_proj_dim,), OTHER),
                    Tensor(f"{p}.mixer.out_proj.bias", (h,), OTHER),
                ]
        elif kind == ATTENTION:
            q = config.num_attention_heads * config.head_dim
            kv = config.num_key_value_heads * config.head_dim
            shapes = {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q)}
            for name, shape in shapes.items():
                tensors.append(Tensor(f"{p}.mixer.{name}.weight", shape, MATMUL))
                if config.attention_bias:
                    tensors.append(Tensor(f"{p}.mixer.{name}.bias", (shape[0],), OTHER))
        elif kind == MLP:
            shapes = {"up_proj": (config.intermediate_size, h), "down_proj": (h, config.intermediate_size)}
            for name, shape in shapes.items():
                tensors.append(Tensor(f"{p}.mixer.{name}.weight", shape, MATMUL))
                if config.mlp_bias:
                    tensors.append(Tensor(f"{p}.mixer.{name}.bias", (shape[0],), OTHER))
    tensors.append(Tensor("backbone.norm_f.weight", (h,), OTHER))
    if not config.tie_word_embeddings:
        tensors.append(Tensor("lm_head.weight", (config.vocab_size, h), LM_HEAD))
    return tensors


def parameter_count(config: ModelConfig) -> int:
    return sum(t.numel for t in parameter_tensors(config))


def default_activation_dtype(weights: str) -> str:
    """fp32 bundles compute in float32, bf16 in bfloat16; fp16 and the quantized formats in float16."""
    return _FLOAT_FORMAT_DTYPE.get(weights, "float16")


def prefill_bytes_per_token(config: ModelConfig, context: int) -> int:
    """Working memory one prompt token of an engine step costs (see the module docstring)."""
    attention = config.num_attention_heads * context if config.layers_of(ATTENTION) else 0
    scan = 6 * config.mamba_num_heads * config.chunk_size if config.layers_of(MAMBA) else 0
    projections = 4 * (config.in_proj_dim + config.intermediate_size + config.hidden_size)
    return ARENA_FACTOR * 4 * (attention + scan + projections)


def weight_bytes(config: ModelConfig, storage: WeightStorage) -> int:
    return sum(storage.tensor_bytes(t) for t in parameter_tensors(config))


def matmul_weight_bytes(config: ModelConfig, storage: WeightStorage) -> int:
    """The stored bytes of the tensors that feed MatMul/MatMulNBits: what one pre-packing session copies."""
    return sum(storage.tensor_bytes(t) for t in parameter_tensors(config) if t.role in (MATMUL, LM_HEAD))


def plan_memory(*args, **kwargs) -> MemoryPlan:
    """Plan `budget_bytes` for `config` with `weights` in one of WEIGHT_FORMATS (arguments: `estimate_memory`).
    Raises MemoryPlanError naming the bad field, or saying by how much the budget misses what is needed
    before any sequence."""
    return require_fit(estimate_memory(*args, **kwargs))


def estimate_memory(
    config: ModelConfig,
    weights: str,
    budget_bytes: int,
    context: int,
    max_batch: int | None = None,
    activation_dtype: str | None = None,
    state_specs: list[StateSpec] | None = None,
    *,
    group_size: int = DEFAULT_GROUP_SIZE,
    quantize_lm_head: bool = True,
    quantize_embeddings: bool = False,
    zero_points: bool = False,
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    overhead_bytes: int = RUNTIME_OVERHEAD_BYTES,
    prepacked_copies: int = 0,
    prefix_cache_bytes: int = 0,
) -> MemoryPlan:
    """The plan of `budget_bytes` for `config` with `weights` in one of WEIGHT_FORMATS, whether or not it fits.
    `state_specs` (from a bundle manifest) overrides the state layout computed from the config.
    `prepacked_copies`: sessions that pre-pack the matmul weights (`ProviderConfig.prepacked_copies`).
    Raises MemoryPlanError naming a bad field."""
    if weights not in WEIGHT_FORMATS:
        raise MemoryPlanError(f"weights: expected one of {', '.join(WEIGHT_FORMATS)}, got {weights!r}")
    act = activation_dtype or default_activation_dtype(weights)
    if act not in DTYPE_BYTES:
        raise MemoryPlanError(f"activation_dtype: expected one of {', '.join(DTYPE_BYTES)}, got {act!r}")
    if weights in _FLOAT_FORMAT_DTYPE and activation_dtype is not None and act != _FLOAT_FORMAT_DTYPE[weights]:
        raise MemoryPlanError(f"activation_dtype: {weights} weights compute in {_FLOAT_FORMAT_DTYPE[weights]}, got {act!r}")
    _require_positive("group_size", group_size)
    _require_positive("prefill_chunk", prefill_chunk)
    _require_positive("budget_bytes", budget_bytes)
    _require_positive("context", context)
    if context > config.max_position_embeddings:
        raise MemoryPlanError(
            f"context: {context} exceeds the model's max_position_embeddings ({config.max_position_embeddings})"
        )
    if max_batch is not None:
        _require_positive("max_batch", max_batch)
    if overhead_bytes < 0:
        raise MemoryPlanError(f"overhead_bytes: must be >= 0, got {overhead_bytes}")
    if prepacked_copies < 0:
        raise MemoryPlanError(f"prepacked_copies: must be >= 0, got {prepacked_copies}")
    if prefix_cache_bytes < 0:
        raise MemoryPlanError(f"prefix_cache_bytes: must be >= 0, got {prefix_cache_bytes}")

    storage = WeightStorage(weights, act, group_size, quantize_lm_head, quantize_embeddings, zero_points)
    specs = state_specs if state_specs is not None else state_layout(config, act)
    act_bytes = DTYPE_BYTES[act]
    widest = config.in_proj_dim + config.intermediate_size
    plan = MemoryPlan(
        weights_format=weights,
        activation_dtype=act,
        group_size=group_size,
        budget_bytes=budget_bytes,
        context=context,
        max_batch=max_batch,
        parameter_count=parameter_count(config),
        weight_bytes=weight_bytes(config, storage),
        prepacked_bytes=prepacked_copies * matmul_weight_bytes(config, storage),
        dequantized_bytes=0,
        fixed_state_bytes_per_sequence=fixed_bytes_per_sequence(specs),
        kv_bytes_per_token=bytes_per_token(specs),
        prefill_working_bytes=prefill_chunk * prefill_bytes_per_token(config, context),
        decode_working_bytes_per_sequence=config.vocab_size * 4 + widest * act_bytes,
        overhead_bytes=overhead_bytes,
        max_position_embeddings=config.max_position_embeddings,
        prefix_cache_bytes=prefix_cache_bytes,
    )
    return plan


def require_fit(plan: MemoryPlan) -> MemoryPlan:
    """`plan`, or MemoryPlanError saying by how much its budget misses what is needed before any sequence."""
    if plan.available_bytes < 0:
        dequantized = (f", an 8-bit matrix dequantized per call {_gib(plan.dequantized_bytes)}"
                       if plan.dequantized_bytes else "")
        raise MemoryPlanError(
            f"budget_bytes: {_gib(plan.budget_bytes)} is {_gib(-plan.available_bytes)} short of the "
            f"{_gib(plan.base_bytes)} needed before any sequence (weights {_gib(plan.weight_bytes)} at "
            f"{plan.weights_format}, their pre-packed copies {_gib(plan.prepacked_bytes)}{dequantized}, runtime "
            f"overhead {_gib(plan.overhead_bytes)}, prefill working memory {_gib(plan.prefill_working_bytes)}"
            + (f", prefix cache {_gib(plan.prefix_cache_bytes)}" if plan.prefix_cache_bytes else "") + ")")
    return plan


def _require_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise MemoryPlanError(f"{name}: must be a positive integer, got {value!r}")


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB"


def _dequantized_per_call(bundle: "Bundle") -> tuple[int, int]:
    """For a bundle on the CPU provider: the stored bytes of its MatMulNBits matrices that are not pre-packed
    but dequantized on every call (8-bit blocks at accuracy level 0), and the float32 bytes of the largest."""
    weights = bundle.weights
    if int(weights.get("accuracy_level", 0)) != 0:
        return 0, 0
    nbytes = {t["name"]: int(t["nbytes"]) for t in weights["tensors"]}
    shapes = {t["name"]: t["shape"] for t in weights["tensors"]}
    eight = [name for name, p in weights.get("projections", {}).items() if p.get("bits") == 8]
    stored = sum(nbytes[n + ".qweight"] + nbytes[n + ".scales"] for n in eight)
    # qweight [N, blocks, block bytes]: 8-bit codes are one byte each, so K <= blocks x block bytes
    largest = max((4 * math.prod(shapes[n + ".qweight"]) for n in eight), default=0)
    return stored, largest


def plan_for_bundle(bundle: "Bundle", budget_bytes: int, context: int, max_batch: int | None = None,
                    prefill_chunk: int = DEFAULT_PREFILL_CHUNK, overhead_bytes: int = RUNTIME_OVERHEAD_BYTES,
                    prepacked_copies: int = 0, prefix_cache_bytes: int = 0) -> MemoryPlan:
    """Plan for an exported bundle: its own state layout, and the exact bytes of its weights file and of its
    matmul weights (times `prepacked_copies`, which also means the CPU provider: there a bundle at accuracy
    level 0 pre-packs no 8-bit blocks and dequantizes them per call, `_dequantized_per_call`)."""
    weights = bundle.weights
    specs = bundle.state_layout
    plan = estimate_memory(
        bundle.config, weights["format"], budget_bytes, context, max_batch,
        # float bundles compute in their weight dtype (bf16 ones in float32: the planner's default is close)
        activation_dtype=None if weights["format"] in _FLOAT_FORMAT_DTYPE else weights.get("activation_dtype"),
        state_specs=specs,
        group_size=int(weights.get("group_size") or DEFAULT_GROUP_SIZE),
        quantize_lm_head=bool(weights.get("quantize_lm_head", True)),
        quantize_embeddings=bool(weights.get("quantize_embeddings", False)),
        prefill_chunk=prefill_chunk, overhead_bytes=overhead_bytes, prepacked_copies=prepacked_copies,
        prefix_cache_bytes=prefix_cache_bytes,
    )
    unpacked, dequantized = _dequantized_per_call(bundle) if prepacked_copies else (0, 0)
    exact = replace(plan, weight_bytes=int(bundle.manifest["files"][weights["file"]]["bytes"]),
                    prepacked_bytes=prepacked_copies * (bundle.matmul_weight_bytes - unpacked),
                    dequantized_bytes=dequantized)
    return require_fit(exact)
