"""Synthetic Nemotron-H checkpoints: complete Hugging Face-format directories with random weights and a real
tokenizer, for the presets in nemotron_export.presets. Output is deterministic for a seed."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from tqdm import tqdm

from edge_runtime.bundle.model_config import ModelConfig
from nemotron_export.model import NemotronH
from nemotron_export.presets import PRESETS, SYNTH_DTYPE, TOKENIZER_VOCAB
from nemotron_export.safetensors_writer import SHARD_BYTES, STORAGE, TensorSpec, to_bf16_bits, write_checkpoint_tensors

# dt is initialised log-uniform in [DT_MIN, DT_MAX]. The floor sits well above the config's
# time_step_min (0.001), where no transformers version clamps (up to 5.24 its prefill clamped there).
DT_MIN, DT_MAX = 0.01, 0.1
CHUNK_ELEMENTS = 1 << 24  # drawn at a time: 64 MiB of float32


def tensor_rng(seed: int, name: str) -> np.random.Generator:
    """numpy's PCG64 stream for one tensor of a seeded checkpoint: platform-independent bits (torch's CPU
    generators take different vector paths on different CPUs), and independent of the order tensors are
    drawn in, so a checkpoint can be written one tensor at a time."""
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, key])


def random_chunks(cfg: ModelConfig, name: str, shape: tuple[int, ...], seed: int) -> Iterator[np.ndarray]:
    """One weight, float32, in blocks of rows of at most CHUNK_ELEMENTS values (a stream drawn in blocks is
    the stream drawn at once), initialised as transformers initialises Nemotron-H: normal 0.02; A = 1..heads,
    D = 1, dt log-uniform; Mamba out_proj kaiming-uniform scaled by 1/sqrt(layers), its
    `rescale_prenorm_residual`. Transcendentals run on Python floats (the C library's scalar functions) in
    float64 and are rounded to float32 once, so a vector math path can never change a bit."""
    leaf = name.rsplit(".", 1)[-1]
    rng = tensor_rng(seed, name)
    if leaf == "A_log":
        yield np.array([math.log(i) for i in range(1, shape[0] + 1)], np.float32)
    elif leaf == "D" or (leaf == "weight" and "norm" in name):
        yield np.ones(shape, np.float32)
    elif leaf == "bias":
        yield np.zeros(shape, np.float32)
    elif leaf == "dt_bias":
        lo, hi = math.log(DT_MIN), math.log(DT_MAX)
        dt = [math.exp(u * (hi - lo) + lo) for u in rng.random(math.prod(shape)).tolist()]
        yield np.array([d + math.log(-math.expm1(-d)) for d in dt], np.float32).reshape(shape)  # inverse softplus
    else:
        row = math.prod(shape[1:])
        rows_per_chunk = max(1, CHUNK_ELEMENTS // row)
        for start in range(0, shape[0], rows_per_chunk):
            block = (min(rows_per_chunk, shape[0] - start), *shape[1:])
            if name.endswith("mixer.out_proj.weight"):
                bound = 1 / math.sqrt(shape[1]) / math.sqrt(cfg.num_layers)  # kaiming_uniform(a=sqrt(5)) on [out, in]
                yield (rng.random(block, np.float32) * 2 - 1) * np.float32(bound)
            else:
                yield rng.standard_normal(block, np.float32) * np.float32(0.02)


def checkpoint_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint of `cfg` holds, by its published name, in layer order (no memory used)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in NemotronH(cfg).state_dict().items()}


def random_weights(cfg: ModelConfig, seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Every weight of `cfg` in memory (random_chunks), the same bytes for a seed on every machine."""
    return {name: torch.from_numpy(np.concatenate([c.reshape(-1) for c in random_chunks(cfg, name, shape, seed)])
                                   .reshape(shape)).to(dtype).contiguous()
            for name, shape in checkpoint_shapes(cfg).items()}


def write_checkpoint(out_dir: str | Path, cfg: ModelConfig, weights: dict[str, torch.Tensor],
                     tokenizer: int | Tokenizer | None) -> Path:
    """A checkpoint of in-memory `weights`: config.json, model.safetensors and (unless tokenizer is None)
    the tokenizer files (`tokenizer`, or the project's BPE of that many tokens), atomically."""
    return _write_atomically(out_dir, cfg, tokenizer, lambda tmp: save_file(
        weights, str(tmp / "model.safetensors"), metadata={"format": "pt"}))


def _write_atomically(out_dir: str | Path, cfg: ModelConfig, tokenizer: int | Tokenizer | None,
                      write_weights: Callable[[Path], object]) -> Path:
    """Into a temporary sibling directory that is renamed at the end: an interrupted run leaves no
    checkpoint that looks complete."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    tmp.chmod(0o755)
    try:
        if tokenizer is not None:
            from nemotron_export.tokenizer_synth import build_tokenizer, load_chat_template, write_tokenizer_files

            tok = build_tokenizer(tokenizer) if isinstance(tokenizer, int) else tokenizer
            if tok.get_vocab_size() > cfg.vocab_size:
                raise ValueError(f"tokenizer has {tok.get_vocab_size()} tokens, the model only {cfg.vocab_size}")
            write_tokenizer_files(tok, tmp, load_chat_template())
            # Like the real config: ids looked up by the tokens' text; the end of turn is <SPECIAL_12>.
            ids = {t: tok.token_to_id(t) for t in ("<s>", "</s>", "<SPECIAL_12>", "<unk>")}
            cfg = replace(cfg, bos_token_id=ids["<s>"], eos_token_id=[ids["</s>"], ids["<SPECIAL_12>"]],
                          pad_token_id=ids["<unk>"])
        (tmp / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2) + "\n")
        write_weights(tmp)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def synth(preset: str, out_dir: str | Path, seed: int = 0, with_tokenizer: bool = True,
          shard_bytes: int = SHARD_BYTES, progress: bool = False) -> Path:
    """A random checkpoint of `preset`, written one block of one tensor at a time (in the preset's
    SYNTH_DTYPE, sharded past `shard_bytes`), so its size never has to fit in memory."""
    if preset not in PRESETS:
        raise ValueError(f"--preset: unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    cfg = PRESETS[preset]
    dtype = SYNTH_DTYPE.get(preset, "F32")
    specs = [TensorSpec(name, shape, dtype) for name, shape in checkpoint_shapes(cfg).items()]

    def chunks(spec: TensorSpec) -> Iterator[np.ndarray]:
        for block in random_chunks(cfg, spec.name, spec.shape, seed):
            yield to_bf16_bits(block) if dtype == "BF16" else block.astype(STORAGE[dtype], copy=False)

    def write(tmp: Path) -> None:
        with tqdm(total=sum(s.nbytes for s in specs), unit="B", unit_scale=True, desc=f"writing {preset} weights",
                  disable=not progress) as bar:
            write_checkpoint_tensors(tmp, specs, chunks, shard_bytes, on_bytes=bar.update)

    return _write_atomically(out_dir, cfg, TOKENIZER_VOCAB[preset] if with_tokenizer else None, write)
