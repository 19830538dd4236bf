"""Read a Hugging Face Nemotron-H checkpoint directory one tensor at a time, with errors that say what is wrong.

Accepts `model.safetensors` or a sharded `model.safetensors.index.json`, tensors named `backbone.*` (the
published checkpoints) or `model.*` (what newer transformers writes), stored in bf16, fp16 or fp32.

`open_checkpoint` checks everything a checkpoint promises from its config and safetensors headers alone,
before any weight is read: every tensor the config needs is there, with a supported dtype and the shape
the config gives it, and every file holds the bytes its header promises. Reads then map a file
(safe_open), convert one tensor, or one block of a tensor's rows, to a float32 copy and let the mapping
go, so what was read leaves the process's resident memory with its copy. The exporter reads one layer at
a time (`Checkpoint.layer`); `load_checkpoint` builds the whole reference model, for tests and
benchmarks on small presets.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from edge_runtime.bundle.model_config import ModelConfig
from nemotron_export.model import Block, NemotronH

SUPPORTED_DTYPES = {"BF16", "F16", "F32"}
# Tensors a checkpoint may carry that the runtime does not use (multi-token-prediction heads).
IGNORED_PREFIXES = ("mtp.",)
EMBEDDING, NORM_F, LM_HEAD = "backbone.embeddings.weight", "backbone.norm_f.weight", "lm_head.weight"
# Where `Checkpoint.identity` samples each weights file: enough to tell two seeds' checkpoints apart
# without reading 18 GB.
IDENTITY_SAMPLES, IDENTITY_SAMPLE_BYTES = 16, 1 << 16


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


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor the model needs is stored: its file, its name there, its shape."""

    file: Path
    key: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class Checkpoint:
    """A checked checkpoint directory (see `open_checkpoint`); every read returns a float32 copy."""

    def __init__(self, path: Path, cfg: ModelConfig, tensors: dict[str, TensorRef]):
        self.path, self.cfg, self.tensors = path, cfg, tensors  # tensors: the model's names, lm_head included

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def tensor(self, name: str) -> torch.Tensor:
        ref = self.tensors[name]
        with safe_open(str(ref.file), framework="pt") as f:
            return f.get_tensor(ref.key).to(torch.float32, copy=True)  # a copy: the mapping is let go

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of a tensor [rows, ...], float32."""
        ref = self.tensors[name]
        with safe_open(str(ref.file), framework="pt") as f:
            return f.get_slice(ref.key)[start:stop].to(torch.float32, copy=True)

    def embedding_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The embeddings of `ids` (any shape) -> [*ids.shape, hidden] float32, reading only the rows of the
        distinct ids: what embedding the calibration rows costs instead of the whole table."""
        ref = self.tensors[EMBEDDING]
        distinct, inverse = torch.unique(ids, return_inverse=True)
        with safe_open(str(ref.file), framework="pt") as f:
            rows = f.get_tensor(ref.key)[distinct].to(torch.float32)  # the mapping's pages of these rows only
        return rows[inverse]

    def layer_names(self, i: int) -> list[str]:
        prefix = f"backbone.layers.{i}."
        return [name for name in self.tensors if name.startswith(prefix)]

    def layer_tensors(self, i: int) -> dict[str, torch.Tensor]:
        """Layer i's tensors, float32, by checkpoint name."""
        return {name: self.tensor(name) for name in self.layer_names(i)}

    def layer(self, i: int) -> Block:
        """Layer i of the reference model, float32, built from this checkpoint's tensors of that layer only."""
        prefix = f"backbone.layers.{i}."
        with torch.device("meta"):
            block = Block(self.cfg, self.cfg.pattern[i])
        block.load_state_dict({name[len(prefix):]: t for name, t in self.layer_tensors(i).items()},
                              strict=True, assign=True)
        return block.eval()

    def identity(self) -> dict:
        """What tells this checkpoint from another without reading it all: config.json's sha256 and, per
        weights file, its size, its header's sha256 and the sha256 of IDENTITY_SAMPLES blocks spread over it."""
        files = {}
        for path in sorted({ref.file for ref in self.tensors.values()}):
            size = path.stat().st_size
            h = hashlib.sha256()
            with path.open("rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = hashlib.sha256(f.read(n)).hexdigest()
                for k in range(IDENTITY_SAMPLES):
                    f.seek(k * max(size - IDENTITY_SAMPLE_BYTES, 0) // max(IDENTITY_SAMPLES - 1, 1))
                    h.update(f.read(IDENTITY_SAMPLE_BYTES))
            files[path.name] = {"bytes": size, "header_sha256": header, "sample_sha256": h.hexdigest()}
        config = hashlib.sha256((self.path / "config.json").read_bytes()).hexdigest()
        return {"config_sha256": config, "weights": files}


def open_checkpoint(ckpt_dir: str | Path) -> Checkpoint:
    """Check `ckpt_dir` (see the module docstring) and return its reader; raises CheckpointError or
    ConfigError naming what is wrong."""
    ckpt = Path(ckpt_dir)
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt}: not a directory")
    cfg = ModelConfig.from_file(ckpt / "config.json")
    raw_files = _weight_files(ckpt)
    files = {_canonical(k): v for k, v in raw_files.items() if not k.startswith(IGNORED_PREFIXES)}
    raw_names = {_canonical(k): k for k in raw_files}
    headers = {f: read_safetensors_header(f) for f in sorted(set(files.values()))}
    with torch.device("meta"):
        wanted = {name: tuple(p.shape) for name, p in NemotronH(cfg).named_parameters(remove_duplicate=False)}
    if cfg.tie_word_embeddings:  # the head is the embedding table, whatever the file holds under its name
        del wanted[LM_HEAD]
    missing = sorted(set(wanted) - set(files))
    if missing:
        raise CheckpointError(f"{ckpt}: missing tensor {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    tensors = {}
    for name in sorted(wanted):
        path = files[name]
        info = headers[path].get(raw_names[name])
        if info is None:
            raise CheckpointError(f"{path}: tensor {raw_names[name]} is listed in the index but not in this file")
        if info["dtype"] not in SUPPORTED_DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has dtype {info['dtype']}; supported: bf16, fp16, fp32")
        shape = tuple(info["shape"])
        if shape != wanted[name]:
            raise CheckpointError(f"{path}: tensor {name} has shape {list(shape)}, the config needs {list(wanted[name])}")
        tensors[name] = TensorRef(path, raw_names[name], shape)
    if cfg.tie_word_embeddings:
        tensors[LM_HEAD] = tensors[EMBEDDING]
    return Checkpoint(ckpt, cfg, tensors)


def load_checkpoint(ckpt_dir: str | Path, dtype: torch.dtype = torch.float32,
                    progress: bool = True) -> NemotronH:
    """The whole reference model from `ckpt_dir` with parameters in `dtype` (tests, benchmarks): read one
    tensor at a time straight into the model's parameters."""
    ckpt = open_checkpoint(ckpt_dir)
    with torch.device("meta"):
        model = NemotronH(ckpt.cfg)
    model = model.to_empty(device="cpu").to(dtype)
    if ckpt.cfg.tie_word_embeddings:  # to_empty() gives every parameter its own storage: tie them again
        model.lm_head.weight = model.backbone.embeddings.weight
    params = dict(model.named_parameters())  # a tied head once, as the embedding table
    for name in tqdm(sorted(params), desc="loading weights", unit="tensor", disable=not progress):
        with torch.no_grad():
            params[name].copy_(ckpt.tensor(name))
    model.eval()
    return model
