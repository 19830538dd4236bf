"""Load a Hugging Face Nemotron-H checkpoint directory into the reference model, with errors that say what is wrong.

Accepts `model.safetensors` or a sharded `model.safetensors.index.json`, tensors named `backbone.*` (the
published checkpoints) or `model.*` (what newer transformers writes), stored in bf16, fp16 or fp32.
Tensors are read one at a time straight into the model's parameters, so at most one converted copy of
the weights exists at any moment.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from edge_runtime.model_config import ModelConfig
from nemotron_export.model import NemotronH

SUPPORTED_DTYPES = {"BF16", "F16", "F32"}
# Tensors a checkpoint may carry that the runtime does not use (multi-token-prediction heads).
IGNORED_PREFIXES = ("mtp.",)


class CheckpointError(ValueError):
    """A checkpoint we cannot load; the message names the file or tensor and what is wrong."""


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a .safetensors file, after checking the file holds every byte it promises."""
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", raw)
        if 8 + n > size:
            raise CheckpointError(f"{path}: truncated safetensors file (header of {n} bytes, file has {size})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise CheckpointError(
            f"{path}: truncated safetensors file: tensors need {8 + n + end} bytes, the file has {size}")
    return header


def _weight_files(ckpt: Path) -> dict[str, Path]:
    """Tensor name -> file holding it."""
    index = ckpt / "model.safetensors.index.json"
    single = ckpt / "model.safetensors"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({type(e).__name__}: {e})") from None
        files = {name: ckpt / fname for name, fname in weight_map.items()}
        for shard in sorted(set(files.values())):
            if not shard.exists():
                raise CheckpointError(f"{shard}: listed in {index.name} but missing")
        return files
    if single.exists():
        return {name: single for name in read_safetensors_header(single) if name != "__metadata__"}
    raise CheckpointError(f"{ckpt}: no model.safetensors or model.safetensors.index.json")


def _canonical(name: str) -> str:
    return "backbone." + name[len("model."):] if name.startswith("model.") else name


def load_checkpoint(ckpt_dir: str | Path, dtype: torch.dtype = torch.float32,
                    progress: bool = True) -> NemotronH:
    """Build the reference model from `ckpt_dir` with parameters in `dtype`."""
    ckpt = Path(ckpt_dir)
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt}: not a directory")
    cfg = ModelConfig.from_file(ckpt / "config.json")
    files = {_canonical(k): v for k, v in _weight_files(ckpt).items() if not k.startswith(IGNORED_PREFIXES)}
    headers = {f: read_safetensors_header(f) for f in sorted(set(files.values()))}
    with torch.device("meta"):
        model = NemotronH(cfg)
    model = model.to_empty(device="cpu").to(dtype)
    if cfg.tie_word_embeddings:  # to_empty() gives every parameter its own storage: tie them again
        model.lm_head.weight = model.backbone.embeddings.weight
    params = dict(model.named_parameters(remove_duplicate=False))
    expected = set(params) - ({"lm_head.weight"} if cfg.tie_word_embeddings else set())
    missing = sorted(expected - set(files))
    if missing:
        raise CheckpointError(f"{ckpt}: missing tensor {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    raw_names = {_canonical(k): k for k in _weight_files(ckpt)}
    for name in tqdm(sorted(expected), desc="loading weights", unit="tensor", disable=not progress):
        path = files[name]
        info = headers[path].get(raw_names[name])
        if info is None:
            raise CheckpointError(f"{path}: tensor {raw_names[name]} is listed in the index but not in this file")
        if info["dtype"] not in SUPPORTED_DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has dtype {info['dtype']}; supported: bf16, fp16, fp32")
        shape = tuple(info["shape"])
        want = tuple(params[name].shape)
        if shape != want:
            raise CheckpointError(f"{path}: tensor {name} has shape {list(shape)}, the config needs {list(want)}")
        with safe_open(str(path), framework="pt") as f:
            tensor = f.get_tensor(raw_names[name])
        with torch.no_grad():
            params[name].copy_(tensor.to(dtype))
        del tensor
    model.eval()
    return model
