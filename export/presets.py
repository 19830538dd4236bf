"""Synthetic model presets: the dimensions `nemotron-edge synth` builds. No torch here, so the CLI can list them.

- `tiny` (~0.9M parameters, all three layer types, chunk size 16) for tests;
- `small` (~71M parameters, the first 27 layers of the real pattern) for benchmarks;
- `nano-9b-v2-slice` (the real widths, layers `M*-`, vocabulary cut to 4096; ~380M parameters) to catch
  bugs that only show at head_dim 80, 128 heads and 8 groups;
- `nano-9b-v2`, the real model's configuration (56 layers, vocabulary 131072; 8.9B parameters), written in
  bf16 and sharded like the published checkpoint (18 GB).
"""

from __future__ import annotations

from edge_runtime.bundle.model_config import ModelConfig

# The real model's pattern; `small` takes its first 27 layers.
REAL_PATTERN = "M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-"

PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        vocab_size=1024, hidden_size=128, intermediate_size=256, pattern="M-*M-M*-",
        num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        mamba_num_heads=8, mamba_head_dim=32, n_groups=2, ssm_state_size=16, conv_kernel=4, chunk_size=16,
        max_position_embeddings=4096,
    ),
    "small": ModelConfig(
        vocab_size=4096, hidden_size=640, intermediate_size=1792, pattern=REAL_PATTERN[:27],
        num_attention_heads=10, num_key_value_heads=2, head_dim=64,
        mamba_num_heads=20, mamba_head_dim=64, n_groups=4, ssm_state_size=64, conv_kernel=4, chunk_size=128,
        max_position_embeddings=8192,
    ),
    # Real widths (../shared/reference/nemotron-nano-9b-v2.config.json), three layers, vocabulary cut.
    "nano-9b-v2-slice": ModelConfig(
        vocab_size=4096, hidden_size=4480, intermediate_size=15680, pattern="M*-",
        num_attention_heads=40, num_key_value_heads=8, head_dim=128,
        mamba_num_heads=128, mamba_head_dim=80, n_groups=8, ssm_state_size=128, conv_kernel=4, chunk_size=128,
        max_position_embeddings=131072,
    ),
    # ../shared/reference/nemotron-nano-9b-v2.config.json
    "nano-9b-v2": ModelConfig(
        vocab_size=131072, hidden_size=4480, intermediate_size=15680, pattern=REAL_PATTERN,
        num_attention_heads=40, num_key_value_heads=8, head_dim=128,
        mamba_num_heads=128, mamba_head_dim=80, n_groups=8, ssm_state_size=128, conv_kernel=4, chunk_size=128,
        max_position_embeddings=131072,
    ),
}
TOKENIZER_VOCAB = {"tiny": 1024, "small": 4096, "nano-9b-v2-slice": 4096, "nano-9b-v2": 131072}
# What `synth` stores (a safetensors dtype): float32 for the test presets, bf16 as published for the real size.
SYNTH_DTYPE = {"nano-9b-v2": "BF16"}
