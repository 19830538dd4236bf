"""Nemotron-H model configuration: parse every spelling of a Hugging Face `config.json` into one dataclass.

This is the single place that knows how a checkpoint's config names its dimensions. The exporter builds
its model from it, the manifest stores its `to_dict()`, and the memory planner reads state shapes from it.
No torch here: the device needs it too.
"""

from __future__ import annotations

import json
import math
import reprlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# One letter per layer, as in `hybrid_override_pattern`.
MAMBA, ATTENTION, MLP, MOE = "M", "*", "-", "E"

_BLOCK_TYPE_TO_LETTER = {
    "mamba": MAMBA,
    "linear_attention": MAMBA,
    "attention": ATTENTION,
    "full_attention": ATTENTION,
    "mlp": MLP,
    "moe": MOE,
}

# Older checkpoints spell some Mamba fields with a `mamba_` prefix (transformers remaps the same names).
_LEGACY_KEYS = {
    "mamba_n_groups": "n_groups",
    "mamba_d_conv": "conv_kernel",
    "mamba_expand": "expand",
    "mamba_dt_min": "time_step_min",
    "mamba_dt_max": "time_step_max",
    "mamba_dt_limit": "time_step_limit",
    "mamba_dt_init_floor": "time_step_floor",
    "mamba_conv_bias": "use_conv_bias",
    "mamba_chunk_size": "chunk_size",
    "attention_head_dim": "head_dim",
    "mamba_d_state": "ssm_state_size",
}


class ConfigError(ValueError):
    """A config.json that cannot describe a model we can run; the message names the key."""


@dataclass(frozen=True)
class ModelConfig:
    """Dimensions of a Nemotron-H model. `pattern` holds one letter per layer: M (Mamba-2), * (attention), - (MLP)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    pattern: str
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    mamba_num_heads: int
    mamba_head_dim: int
    n_groups: int
    ssm_state_size: int
    conv_kernel: int
    chunk_size: int
    layer_norm_epsilon: float = 1e-5
    use_conv_bias: bool = True
    mamba_proj_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    # dt is clamped to this range in both prefill and decode (see nemotron_export.ssm for why).
    time_step_limit: tuple[float, float] = (0.0, math.inf)
    max_position_embeddings: int = 4096
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 0
    torch_dtype: str = "bfloat16"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        bad = sorted(set(self.pattern) - {MAMBA, ATTENTION, MLP, MOE})
        if bad:
            raise ConfigError(f"hybrid_override_pattern: unknown layer letter(s) {bad}; expected M, *, - or E")
        if MOE in self.pattern:
            raise ConfigError(
                "hybrid_override_pattern: layer type 'E' (mixture of experts) is not supported by nemotron-edge; "
                "only M (Mamba-2), * (attention) and - (MLP) layers are"
            )
        for name in ("vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                     "mamba_num_heads", "mamba_head_dim", "n_groups", "ssm_state_size", "conv_kernel", "chunk_size",
                     "max_position_embeddings"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"{name}: must be a positive integer, got {getattr(self, name)!r}")
        eos = self.eos_token_id
        for name, ids in (("bos_token_id", [self.bos_token_id]), ("pad_token_id", [self.pad_token_id]),
                          ("eos_token_id", eos if isinstance(eos, list) else [eos])):
            if not all(t is None or isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids):
                raise ConfigError(f"{name}: must be a token id (an integer >= 0), a list of them or null, "
                                  f"got {reprlib.repr(getattr(self, name))}")
        if self.mamba_num_heads % self.n_groups:
            raise ConfigError(f"mamba_num_heads ({self.mamba_num_heads}) must be a multiple of n_groups ({self.n_groups})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if not self.pattern:
            raise ConfigError("hybrid_override_pattern: the model has no layers")

    # ---- derived dimensions -------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return len(self.pattern)

    @property
    def mamba_inner(self) -> int:
        """Width of the Mamba-2 inner stream: heads x head_dim (not expand x hidden)."""
        return self.mamba_num_heads * self.mamba_head_dim

    @property
    def conv_dim(self) -> int:
        """Channels through the causal conv1d: x, B and C."""
        return self.mamba_inner + 2 * self.n_groups * self.ssm_state_size

    @property
    def in_proj_dim(self) -> int:
        """in_proj output: gate z, conv input (x, B, C), dt."""
        return self.mamba_inner + self.conv_dim + self.mamba_num_heads

    def layers_of(self, letter: str) -> list[int]:
        return [i for i, c in enumerate(self.pattern) if c == letter]

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return list(self.eos_token_id) if isinstance(self.eos_token_id, list) else [self.eos_token_id]

    # ---- (de)serialisation --------------------------------------------------------------------------

    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json that transformers' NemotronHConfig and our own parser both read."""
        d = asdict(self)
        d.pop("extra")
        d["hybrid_override_pattern"] = d.pop("pattern")
        d["num_hidden_layers"] = self.num_layers
        d["mamba_hidden_act"] = "silu"
        d["mlp_hidden_act"] = "relu2"
        d["use_bias"] = d.pop("mamba_proj_bias")
        d["time_step_limit"] = list(self.time_step_limit)  # json writes inf as Infinity, as HF configs do
        d["architectures"] = ["NemotronHForCausalLM"]
        d["model_type"] = "nemotron_h"
        return {**self.extra, **d}

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any]) -> "ModelConfig":
        try:
            return cls._from_hf_dict(dict(raw))
        except ConfigError:
            raise
        except (TypeError, ValueError, ArithmeticError, LookupError) as e:  # a value of the wrong kind
            raise ConfigError(f"config.json: bad value: {e}") from None

    @classmethod
    def _from_hf_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        for old, new in _LEGACY_KEYS.items():
            if old in d and new not in d:
                d[new] = d.pop(old)
        model_type = d.get("model_type", "nemotron_h")
        if model_type != "nemotron_h":
            raise ConfigError(f"model_type: expected 'nemotron_h', got {model_type!r}")
        pattern = _pattern_from(d)

        def need(key: str) -> Any:
            if key not in d:
                raise ConfigError(f"{key}: missing from config.json")
            return d[key]

        heads = int(need("num_attention_heads"))
        hidden = int(need("hidden_size"))
        head_dim = d.get("head_dim") or hidden // heads
        limit = d.get("time_step_limit", (0.0, math.inf))
        known = {f for f in cls.__dataclass_fields__} | {"hybrid_override_pattern", "layers_block_type"}
        return cls(
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            pattern=pattern,
            num_attention_heads=heads,
            num_key_value_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            mamba_num_heads=int(need("mamba_num_heads")),
            mamba_head_dim=int(need("mamba_head_dim")),
            n_groups=int(d.get("n_groups", 8)),
            ssm_state_size=int(d.get("ssm_state_size", 128)),
            conv_kernel=int(d.get("conv_kernel", 4)),
            chunk_size=int(d.get("chunk_size", 128)),
            layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-5)),
            use_conv_bias=bool(d.get("use_conv_bias", True)),
            mamba_proj_bias=bool(d.get("use_bias", d.get("mamba_proj_bias", False))),
            attention_bias=bool(d.get("attention_bias", False)),
            mlp_bias=bool(d.get("mlp_bias", False)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            time_step_limit=(_json_float(limit[0]), _json_float(limit[1])),
            max_position_embeddings=int(d.get("max_position_embeddings", 4096)),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            pad_token_id=d.get("pad_token_id"),
            torch_dtype=str(d.get("torch_dtype") or d.get("dtype") or "bfloat16"),
            extra={k: v for k, v in d.items() if k not in known},
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_hf_dict(raw)


def _json_float(v: Any) -> float:
    """A float as config.json files spell it: a number, "Infinity", or transformers' {"__float__": "Infinity"}."""
    if isinstance(v, dict) and "__float__" in v:
        v = v["__float__"]
    return float(v)


def _pattern_from(d: dict[str, Any]) -> str:
    if "layers_block_type" in d and d["layers_block_type"] is not None:
        types = d["layers_block_type"]
        unknown = [t for t in types if t not in _BLOCK_TYPE_TO_LETTER]
        if unknown:
            raise ConfigError(f"layers_block_type: unknown layer type(s) {sorted(set(unknown))}")
        pattern = "".join(_BLOCK_TYPE_TO_LETTER[t] for t in types)
    elif "hybrid_override_pattern" in d:
        pattern = str(d["hybrid_override_pattern"])
    else:
        raise ConfigError("config.json: neither hybrid_override_pattern nor layers_block_type is given")
    if MOE in pattern:
        raise ConfigError(
            "layer type 'E' (mixture of experts) is not supported by nemotron-edge; "
            "only M (Mamba-2), * (attention) and - (MLP) layers are"
        )
    n = d.get("num_hidden_layers")
    if n is not None and int(n) != len(pattern):
        raise ConfigError(f"num_hidden_layers ({n}) does not match the layer pattern's length ({len(pattern)})")
    return pattern
