"""The checkpoint loader and the exporter's failure behaviour.

Loading: every spelling a published Nemotron-H checkpoint uses (legacy config keys, layers_block_type,
hybrid_override_pattern; one file or an index + shards; bf16/fp16/fp32 tensors; `model.*` names) gives the
same model; every broken checkpoint is refused with a message naming the tensor or file and what is wrong.
Export: a broken checkpoint or bad options are refused before anything is written: neither the --out
directory nor a partial one (failures midway and --resume: tests/test_export_resume.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from edge_runtime.bundle.model_config import ConfigError
from nemotron_export.bundle import ExportOptions, export_bundle
from nemotron_export.checkpoint import CheckpointError, load_checkpoint
from nemotron_export.onnx_graph import WeightFormat
from nemotron_export.synth import PRESETS, random_weights, write_checkpoint

EMB = "backbone.embeddings.weight"


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return random_weights(PRESETS["tiny"], seed=5)


@pytest.fixture(scope="module")
def base(tmp_path_factory, weights) -> Path:
    """A tiny checkpoint without tokenizer (fast to copy and to break)."""
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "base", PRESETS["tiny"], weights, None)


@pytest.fixture(scope="module")
def base_model(base):
    return load_checkpoint(base, progress=False)


@pytest.fixture
def ckpt(base, tmp_path) -> Path:
    """A fresh copy of the base checkpoint for a test to modify."""
    return Path(shutil.copytree(base, tmp_path / "ckpt"))


def config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


def write_config(path: Path, cfg: dict) -> None:
    (path / "config.json").write_text(json.dumps(cfg, indent=1))


def assert_same_model(model, reference) -> None:
    assert model.cfg == reference.cfg
    theirs = reference.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, theirs[name]), name


def error_of(path: Path, exc=CheckpointError) -> str:
    with pytest.raises(exc) as info:
        load_checkpoint(path, progress=False)
    return str(info.value)


# ---- spellings that must load ---------------------------------------------------------------------------


def test_layers_block_type_spelling(ckpt, base_model):
    cfg = config(ckpt)
    names = {"M": "mamba", "*": "attention", "-": "mlp"}
    cfg["layers_block_type"] = [names[c] for c in cfg.pop("hybrid_override_pattern")]
    write_config(ckpt, cfg)
    assert_same_model(load_checkpoint(ckpt, progress=False), base_model)


def test_legacy_mamba_keys(ckpt, base_model):
    cfg = config(ckpt)
    cfg["mamba_n_groups"] = cfg.pop("n_groups")
    cfg["mamba_d_conv"] = cfg.pop("conv_kernel")
    cfg["mamba_d_state"] = cfg.pop("ssm_state_size")
    cfg["mamba_chunk_size"] = cfg.pop("chunk_size")
    write_config(ckpt, cfg)
    assert_same_model(load_checkpoint(ckpt, progress=False), base_model)


def test_hybrid_override_pattern_alone(ckpt, base_model):
    cfg = config(ckpt)
    cfg.pop("num_hidden_layers")
    write_config(ckpt, cfg)
    assert "hybrid_override_pattern" in cfg and "layers_block_type" not in cfg
    assert_same_model(load_checkpoint(ckpt, progress=False), base_model)


def write_shards(path: Path, weights: dict[str, torch.Tensor], prefix: str = "") -> dict[str, str]:
    names = sorted(weights)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for fname, part in shards.items():
        save_file({prefix + n: weights[n] for n in part}, str(path / fname), metadata={"format": "pt"})
        weight_map.update({prefix + n: fname for n in part})
    (path / "model.safetensors").unlink()
    index = {"metadata": {"total_size": sum(w.numel() * w.element_size() for w in weights.values())},
             "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return weight_map


def test_sharded_checkpoint(ckpt, weights, base_model):
    write_shards(ckpt, weights)
    assert_same_model(load_checkpoint(ckpt, progress=False), base_model)


def test_model_prefix_and_ignored_mtp_tensors(ckpt, weights, base_model):
    """Newer transformers writes `model.*` instead of `backbone.*`; multi-token-prediction heads are skipped."""
    renamed = {("model." + k[len("backbone."):] if k.startswith("backbone.") else k): v for k, v in weights.items()}
    renamed["mtp.layers.0.weight"] = torch.zeros(3)
    save_file(renamed, str(ckpt / "model.safetensors"))
    assert_same_model(load_checkpoint(ckpt, progress=False), base_model)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoints(ckpt, weights, dtype):
    save_file({k: v.to(dtype) for k, v in weights.items()}, str(ckpt / "model.safetensors"))
    model = load_checkpoint(ckpt, progress=False)
    for name, value in model.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, weights[name].to(dtype).float()), name


def test_tied_checkpoint_loads_lm_head_from_embeddings(tmp_path, weights):
    """tie_word_embeddings: no lm_head tensor in the file; the head must be the embedding table. (The model
    is built on the meta device and materialised with to_empty(), which unties shared parameters: without
    re-tying, lm_head stayed uninitialised memory.)"""
    from dataclasses import replace

    cfg = replace(PRESETS["tiny"], tie_word_embeddings=True)
    tied = {k: v for k, v in weights.items() if k != "lm_head.weight"}
    model = load_checkpoint(write_checkpoint(tmp_path / "tied", cfg, tied, None), progress=False)
    head = model.lm_head.weight.detach().numpy()
    same = bool(np.array_equal(head, tied[EMB].numpy()))
    assert same, f"lm_head is not the embedding table after loading (all finite: {bool(np.isfinite(head).all())})"


# ---- checkpoints that must be refused, saying why ------------------------------------------------------------


def test_missing_tensor_is_named(ckpt, weights):
    name = "backbone.layers.3.mixer.out_proj.weight"
    save_file({k: v for k, v in weights.items() if k != name}, str(ckpt / "model.safetensors"))
    msg = error_of(ckpt)
    assert "missing tensor" in msg and name in msg, msg


def test_shape_mismatch_names_tensor_and_both_shapes(ckpt, weights):
    name = "backbone.layers.2.mixer.q_proj.weight"
    broken = dict(weights)
    broken[name] = torch.zeros(64, 128)
    save_file(broken, str(ckpt / "model.safetensors"))
    msg = error_of(ckpt)
    want = list(weights[name].shape)
    assert name in msg and "[64, 128]" in msg and str(want) in msg, msg


def test_moe_layer_is_refused(ckpt):
    cfg = config(ckpt)
    cfg["hybrid_override_pattern"] = cfg["hybrid_override_pattern"][:-1] + "E"
    write_config(ckpt, cfg)
    msg = error_of(ckpt, ConfigError)
    assert "'E'" in msg and "mixture of experts" in msg and "not supported" in msg, msg


def test_moe_in_layers_block_type_is_refused(ckpt):
    cfg = config(ckpt)
    names = {"M": "mamba", "*": "attention", "-": "mlp"}
    cfg["layers_block_type"] = [names[c] for c in cfg.pop("hybrid_override_pattern")][:-1] + ["moe"]
    write_config(ckpt, cfg)
    msg = error_of(ckpt, ConfigError)
    assert "mixture of experts" in msg and "not supported" in msg, msg


@pytest.mark.parametrize("keep", [4, 100, -1000], ids=["no-header", "header-cut", "tensor-data-cut"])
def test_truncated_safetensors_is_reported_as_truncated(ckpt, keep):
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    msg = error_of(ckpt)
    assert "truncated" in msg and "model.safetensors" in msg, msg


def test_corrupt_header_is_reported(ckpt):
    path = ckpt / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[9] = ord("#")  # inside the JSON header
    path.write_bytes(bytes(data))
    msg = error_of(ckpt)
    assert "corrupt safetensors header" in msg and "model.safetensors" in msg, msg


def test_unsupported_tensor_dtype_is_named(ckpt, weights):
    broken = dict(weights)
    broken["backbone.norm_f.weight"] = torch.ones(128, dtype=torch.int32)
    save_file(broken, str(ckpt / "model.safetensors"))
    msg = error_of(ckpt)
    assert "backbone.norm_f.weight" in msg and "I32" in msg, msg


def test_no_weights_file_is_named(ckpt):
    (ckpt / "model.safetensors").unlink()
    msg = error_of(ckpt)
    assert "model.safetensors" in msg, msg


@pytest.mark.parametrize("problem", ["missing-shard", "tensor-not-in-its-shard", "index-not-json"])
def test_sharded_checkpoint_problems_are_named(ckpt, weights, problem):
    """A CheckpointError naming the file or tensor, not a bare FileNotFoundError / KeyError / JSONDecodeError."""
    weight_map = write_shards(ckpt, weights)
    index = ckpt / "model.safetensors.index.json"
    if problem == "missing-shard":
        (ckpt / "model-00002-of-00002.safetensors").unlink()
        named = "model-00002-of-00002.safetensors"
    elif problem == "tensor-not-in-its-shard":
        weight_map[EMB] = "model-00002-of-00002.safetensors" if weight_map[EMB].startswith("model-00001") \
            else "model-00001-of-00002.safetensors"
        index.write_text(json.dumps({"weight_map": weight_map}))
        named = EMB
    else:
        index.write_text("{not json")
        named = "model.safetensors.index.json"
    msg = error_of(ckpt)
    assert named in msg, msg


# ---- atomic export ------------------------------------------------------------------------------------------


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name in (name, f"{name}.partial")
                  or p.name.startswith(f".{name}.partial"))


def test_export_of_truncated_checkpoint_leaves_nothing(ckpt, tmp_path):
    path = ckpt / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    out = tmp_path / "out" / "bundle"
    with pytest.raises(CheckpointError, match="truncated"):
        export_bundle(ckpt, out, progress=False)
    assert not out.exists()
    assert not out.parent.exists() or leftovers(out.parent, "bundle") == []


def test_export_of_checkpoint_missing_a_tensor_leaves_nothing(ckpt, weights, tmp_path):
    save_file({k: v for k, v in weights.items() if k != EMB}, str(ckpt / "model.safetensors"))
    out = tmp_path / "bundle"
    with pytest.raises(CheckpointError, match=EMB):
        export_bundle(ckpt, out, progress=False)
    assert leftovers(tmp_path, "bundle") == []


def test_invalid_weight_format_is_refused(base, tmp_path):
    with pytest.raises(ValueError, match="unknown weight format 'int3'"):
        export_bundle(base, tmp_path / "bundle", ExportOptions(weights=WeightFormat("int3")), progress=False)
    assert leftovers(tmp_path, "bundle") == []


def test_group_size_quantize_refuses_is_refused_before_writing(base, tmp_path):
    with pytest.raises(ValueError, match="group size"):
        export_bundle(base, tmp_path / "bundle", ExportOptions(weights=WeightFormat("int8", group_size=48)),
                      progress=False)
    assert leftovers(tmp_path, "bundle") == []


def test_existing_output_is_refused_and_untouched(base, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        export_bundle(base, out, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    assert leftovers(tmp_path, "bundle") == ["bundle"]
