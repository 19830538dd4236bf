"""Synthetic Nemotron-H checkpoints: complete Hugging Face-format directories with random weights and a real
tokenizer, for the presets in nemotron_export.presets. Output is deterministic for a seed."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from edge_runtime.model_config import ModelConfig
from nemotron_export.model import NemotronH
from nemotron_export.presets import PRESETS, TOKENIZER_VOCAB

# dt is initialised log-uniform in [DT_MIN, DT_MAX]. The floor sits well above the config's
# time_step_min (0.001) so transformers' prefill-only clamp stays inert on synthetic checkpoints.
DT_MIN, DT_MAX = 0.01, 0.1


def random_weights(cfg: ModelConfig, seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Weights initialised as transformers initialises Nemotron-H (normal 0.02; A = 1..heads, D = 1, dt
    log-uniform; Mamba out_proj kaiming-uniform scaled by 1/sqrt(layers), its `rescale_prenorm_residual`),
    deterministic for a seed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in NemotronH(cfg).state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "A_log":
            w = torch.log(torch.arange(1, shape[0] + 1, dtype=torch.float32))
        elif leaf == "D" or (leaf == "weight" and "norm" in name):
            w = torch.ones(shape)
        elif leaf == "dt_bias":
            dt = torch.exp(torch.rand(shape, generator=gen) * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN))
            w = dt + torch.log(-torch.expm1(-dt))  # inverse softplus
        elif leaf == "bias":
            w = torch.zeros(shape)
        elif name.endswith("mixer.out_proj.weight"):
            bound = 1 / math.sqrt(shape[1])  # kaiming_uniform(a=sqrt(5)) on [out, in]
            w = (torch.rand(shape, generator=gen) * 2 - 1) * bound / math.sqrt(cfg.num_layers)
        else:
            w = torch.randn(shape, generator=gen) * 0.02
        out[name] = w.to(dtype).contiguous()
    return out


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
