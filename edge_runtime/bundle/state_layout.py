"""Per-sequence recurrent state of a Nemotron-H model: what the runtime allocates for each sequence.

The exporter writes `state_layout(config, ...)` into the bundle's manifest; the runtime and the memory
planner read it back from there (or compute it from a bare config.json when no bundle exists yet).
Graph input/output names for each state are derived here too, so exporter and runtime agree by construction.

Per Mamba layer: the causal-conv state (the last conv_kernel-1 conv inputs) in the activation dtype, and the
SSM state, float32 always. Per attention layer: keys and values, one row per token up to the context limit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

from edge_runtime.bundle.model_config import ATTENTION, MAMBA, ModelConfig

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# The state dtypes the runtime's state pool holds (numpy has no bfloat16).
NP_DTYPE = {"float32": np.float32, "float16": np.float16}


@dataclass(frozen=True)
class StateSpec:
    """One state tensor of one layer, per sequence. `shape` excludes the batch dimension; for K/V the
    token axis (`per_token` is True) is axis 1 and its extent is the sequence's context."""

    name: str  # graph input name; the graph's output is `present.` + name[len("past."):]
    layer: int
    kind: str  # "conv" | "ssm" | "key" | "value"
    shape: tuple[int, ...]
    dtype: str
    per_token: bool = False

    @cached_property  # read for every state of every model call
    def output_name(self) -> str:
        return "present." + self.name.removeprefix("past.")

    def bytes_per_sequence(self, context: int) -> int:
        n = DTYPE_BYTES[self.dtype]
        for d in self.shape:
            n *= d
        return n * context if self.per_token else n

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StateSpec":
        return cls(**{**d, "shape": tuple(d["shape"])})


def state_layout(config: ModelConfig, activation_dtype: str = "float32") -> list[StateSpec]:
    """The state tensors of one sequence, in layer order. K/V shapes are [kv_heads, 1, head_dim] per token."""
    specs: list[StateSpec] = []
    for i, kind in enumerate(config.pattern):
        if kind == MAMBA:
            specs.append(StateSpec(f"past.{i}.conv", i, "conv", (config.conv_dim, config.conv_kernel - 1), activation_dtype))
            specs.append(StateSpec(
                f"past.{i}.ssm", i, "ssm",
                (config.mamba_num_heads, config.mamba_head_dim, config.ssm_state_size), "float32",
            ))
        elif kind == ATTENTION:
            for kv in ("key", "value"):
                specs.append(StateSpec(
                    f"past.{i}.{kv}", i, kv, (config.num_key_value_heads, 1, config.head_dim),
                    activation_dtype, per_token=True,
                ))
    return specs


def bytes_per_sequence(specs: list[StateSpec], context: int) -> int:
    return sum(s.bytes_per_sequence(context) for s in specs)


def fixed_bytes_per_sequence(specs: list[StateSpec]) -> int:
    """State that does not grow with the context (conv and SSM)."""
    return sum(s.bytes_per_sequence(0) for s in specs if not s.per_token)


def bytes_per_token(specs: list[StateSpec]) -> int:
    """K/V bytes one more token of context costs one sequence."""
    return sum(s.bytes_per_sequence(1) for s in specs if s.per_token)
