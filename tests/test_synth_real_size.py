"""`synth --preset nano-9b-v2`: the real model's checkpoint layout, written as a stream.

- the preset is the published configuration (../shared/reference/nemotron-nano-9b-v2.config.json, its
  dimensions inlined here), and its tensor names, shapes and dtypes are exactly those of transformers'
  NemotronHForCausalLM built from that configuration on the meta device (no weights), under the
  published `backbone.` prefix, in bf16;
- the streaming writer's shards (header first, tensors appended block by block) load in transformers and
  in our loader with the same values as the in-memory weights for the seed;
- bf16 rounding is torch's (round to nearest even), done with integer math;
- the tokenizer is padded to the real 131072 entries and still finds its control tokens by name.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nemotron_export.checkpoint import load_checkpoint
from nemotron_export.presets import PRESETS, SYNTH_DTYPE
from nemotron_export.safetensors_writer import INDEX_FILE, to_bf16_bits
from nemotron_export.synth import checkpoint_shapes, random_weights, synth

REAL_CONFIG = {  # the dimensions of the published config.json
    "vocab_size": 131072, "hidden_size": 4480, "intermediate_size": 15680, "num_hidden_layers": 56,
    "hybrid_override_pattern": "M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-",
    "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128, "attention_bias": False,
    "mamba_num_heads": 128, "mamba_head_dim": 80, "n_groups": 8, "ssm_state_size": 128, "conv_kernel": 4,
    "expand": 2, "use_conv_bias": True, "chunk_size": 128, "layer_norm_epsilon": 1e-05,
    "max_position_embeddings": 131072, "tie_word_embeddings": False, "mlp_hidden_act": "relu2",
    "mamba_hidden_act": "silu",
}


def test_the_preset_is_the_published_configuration() -> None:
    ours = PRESETS["nano-9b-v2"].to_hf_dict()
    assert {k: ours.get(k) for k in REAL_CONFIG if k != "expand"} == {k: v for k, v in REAL_CONFIG.items() if k != "expand"}


def test_tensor_names_shapes_and_dtypes_are_transformers_own() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.for_model("nemotron_h", **REAL_CONFIG)
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    theirs = {("backbone." + k[len("model."):] if k.startswith("model.") else k): (tuple(v.shape), v.dtype)
              for k, v in hf.state_dict().items()}
    ours = {k: (shape, torch.bfloat16) for k, shape in checkpoint_shapes(PRESETS["nano-9b-v2"]).items()}
    assert SYNTH_DTYPE["nano-9b-v2"] == "BF16"
    assert ours == theirs
    assert sum(np.prod(s) for s, _ in ours.values()) == pytest.approx(8.89e9, rel=1e-3)


def test_bf16_bits_round_like_torch() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(100_000, np.float32) * np.float32(0.02),
                        np.array([0.0, -0.0, 1.0, 65504.0, 1e-40, -3.4e38, 1.00390625, 1.01171875], np.float32)])
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(to_bf16_bits(x), want)


def test_sharded_stream_loads_in_transformers_and_our_loader(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    ckpt = synth("tiny", tmp_path / "ckpt", seed=3, shard_bytes=1 << 20)  # ~3.6 MB of fp32: four shards
    index = json.loads((ckpt / INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) > 1 and index["metadata"]["total_size"] > 1 << 20
    expected = random_weights(PRESETS["tiny"], seed=3)
    ours = load_checkpoint(ckpt, progress=False).state_dict()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).state_dict()
    for name, want in expected.items():
        assert torch.equal(ours[name], want), name
        hf_name = name if name in hf else "model." + name[len("backbone."):]
        assert torch.equal(hf[hf_name], want), name


def test_the_real_size_tokenizer_has_131072_entries_and_its_control_tokens() -> None:
    from nemotron_export.tokenizer_synth import CONTROL_TAGS, SPECIAL_TOKENS, build_tokenizer

    tok = build_tokenizer(131072)
    assert tok.get_vocab_size() == 131072
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS + CONTROL_TAGS}
    assert all(i is not None for i in ids.values()) and len(set(ids.values())) == len(ids)
    text = "Plan: <think>left arm</think> move"
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text
