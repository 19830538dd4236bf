"""Synthetic Nemotron-H checkpoints: complete Hugging Face-format directories with random weights and a real
tokenizer, for the presets in nemotron_export.presets. Output is deterministic for a seed."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from edge_runtime.model_config import ModelConfig
from nemotron_export.model import NemotronH
from nemotron_export.presets import PRESETS, TOKENIZER_VOCAB

# dt is initialised log-uniform in [DT_MIN, DT_MAX]. The floor sits well above the config's
# time_step_min (0.001) so transformers' prefill-only clamp stays inert on synthetic checkpoints.
DT_MIN, DT_MAX = 0.01, 0.1


def tensor_rng(seed: int, name: str) -> np.random.Generator:
    """numpy's PCG64 stream for one tensor of a seeded checkpoint: platform-independent bits (torch's CPU
    generators take different vector paths on different CPUs), and independent of the order tensors are
    drawn in, so a checkpoint can be written one tensor at a time."""
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, key])


def random_tensor(cfg: ModelConfig, name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """One weight, float32, initialised as transformers initialises Nemotron-H (normal 0.02; A = 1..heads,
    D = 1, dt log-uniform; Mamba out_proj kaiming-uniform scaled by 1/sqrt(layers), its
    `rescale_prenorm_residual`). Transcendentals run on Python floats (the C library's scalar functions)
    in float64 and are rounded to float32 once, so a vector math path can never change a bit."""
    leaf = name.rsplit(".", 1)[-1]
    rng = tensor_rng(seed, name)
    if leaf == "A_log":
        return np.array([math.log(i) for i in range(1, shape[0] + 1)], np.float32)
    if leaf == "D" or (leaf == "weight" and "norm" in name):
        return np.ones(shape, np.float32)
    if leaf == "bias":
        return np.zeros(shape, np.float32)
    if leaf == "dt_bias":
        lo, hi = math.log(DT_MIN), math.log(DT_MAX)
        dt = [math.exp(u * (hi - lo) + lo) for u in rng.random(math.prod(shape)).tolist()]
        return np.array([d + math.log(-math.expm1(-d)) for d in dt], np.float32).reshape(shape)  # inverse softplus
    if name.endswith("mixer.out_proj.weight"):
        bound = 1 / math.sqrt(shape[1]) / math.sqrt(cfg.num_layers)  # kaiming_uniform(a=sqrt(5)) on [out, in]
        return (rng.random(shape, np.float32) * 2 - 1) * np.float32(bound)
    return rng.standard_normal(shape, np.float32) * np.float32(0.02)


def random_weights(cfg: ModelConfig, seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Every weight of `cfg` (random_tensor), the same bytes for a seed on every machine."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in NemotronH(cfg).state_dict().items()}
    return {name: torch.from_numpy(random_tensor(cfg, name, shape, seed)).to(dtype).contiguous()
            for name, shape in shapes.items()}


def write_checkpoint(out_dir: str | Path, cfg: ModelConfig, weights: dict[str, torch.Tensor],
                     tokenizer_vocab: int | None) -> Path:
    """Write config.json, model.safetensors and (unless tokenizer_vocab is None) the tokenizer files,
    atomically: into a temporary sibling directory that is renamed at the end."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    tmp.chmod(0o755)
    try:
        if tokenizer_vocab is not None:
            from nemotron_export.tokenizer_synth import build_tokenizer, load_chat_template, write_tokenizer_files

            tok = build_tokenizer(tokenizer_vocab)
            if tok.get_vocab_size() > cfg.vocab_size:
                raise ValueError(f"tokenizer has {tok.get_vocab_size()} tokens, the model only {cfg.vocab_size}")
            write_tokenizer_files(tok, tmp, load_chat_template())
            # Like the real config: ids looked up by the tokens' text; the end of turn is <SPECIAL_12>.
            ids = {t: tok.token_to_id(t) for t in ("<s>", "</s>", "<SPECIAL_12>", "<unk>")}
            cfg = replace(cfg, bos_token_id=ids["<s>"], eos_token_id=[ids["</s>"], ids["<SPECIAL_12>"]],
                          pad_token_id=ids["<unk>"])
        (tmp / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2) + "\n")
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def synth(preset: str, out_dir: str | Path, seed: int = 0, with_tokenizer: bool = True) -> Path:
    if preset not in PRESETS:
        raise ValueError(f"--preset: unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    cfg = PRESETS[preset]
    return write_checkpoint(out_dir, cfg, random_weights(cfg, seed), TOKENIZER_VOCAB[preset] if with_tokenizer else None)
