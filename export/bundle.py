"""Write a nemotron-edge bundle: prefill.onnx + decode.onnx sharing one weights.bin, tokenizer files, manifest.json.

The bundle is assembled in a temporary sibling directory and renamed into place at the end, so a failed or
interrupted export leaves nothing behind. The manifest (format: edge_runtime.bundle) describes everything
the device needs without onnx installed: config, layer map, graph interfaces, state layout, the weight
index (with the bits and block size of every MatMulNBits projection, and for int4 the calibration that
chose them), custom-op domain/version, and the sha256 of every file. With a signing key, manifest.sig
(edge_runtime.bundle_signature) is written into the temporary directory after the manifest, so the bundle
appears with its signature or not at all.
"""

from __future__ import annotations

import json
import os
import sys
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from onnx import TensorProto
from tqdm import tqdm

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_runtime import bundle as bundle_format
from edge_runtime.bundle_signature import sign_bundle
from edge_runtime.bundle_checks import MAX_BATCH
from edge_runtime.model_config import ModelConfig
from edge_runtime.state_layout import state_layout
from nemotron_export import ops
from nemotron_export.calibrate import SOURCES, Calibration, quantize_int4
from nemotron_export.checkpoint import load_checkpoint
from nemotron_export.onnx_graph import WeightFormat, WeightTable, build_graphs

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
ONNX_TO_NAME = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16",
                TensorProto.UINT8: "uint8", TensorProto.INT64: "int64"}


@dataclass(frozen=True)
class ExportOptions:
    """`calibration` (int4 only): what the int4 plan and GPTQ are fitted on, "corpus" or "random" tokens;
    None takes the corpus when the checkpoint has a tokenizer, random tokens otherwise. `gptq` False
    rounds to nearest (with a clip search) instead: faster, less accurate."""

    weights: WeightFormat = WeightFormat()
    max_batch: int = 8
    max_context: int = 4096
    calibration: str | None = None
    gptq: bool = True

    def __post_init__(self) -> None:
        if self.calibration not in (None, *SOURCES):
            raise ValueError(f"--calibration: unknown source {self.calibration!r}; choose {' or '.join(SOURCES)}")
        if not 1 <= self.max_batch <= MAX_BATCH:
            raise ValueError(f"--max-batch: must be between 1 and {MAX_BATCH} (the runtime's ceiling), "
                             f"got {self.max_batch}")
        if self.max_context < 2:
            raise ValueError(f"--max-context: must be at least 2, got {self.max_context}")


def export_bundle(ckpt_dir: str | Path, out_dir: str | Path, options: ExportOptions = ExportOptions(),
                  progress: bool = True, signing_key: Ed25519PrivateKey | None = None) -> Path:
    """Export `ckpt_dir` to a new bundle `out_dir`; with `signing_key`, manifest.sig signs its manifest."""
    ckpt, out = Path(ckpt_dir), Path(out_dir)
    if out.exists():
        raise FileExistsError(f"--out: {out} already exists; remove it or choose another directory")
    model = load_checkpoint(ckpt, dtype=torch.float32, progress=progress)
    cfg = model.cfg
    # Views of the model's parameters: the one float32 copy of the weights the export holds.
    source = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    calibration, quantized = None, {}
    if options.weights.kind == "int4":
        tokenizer = ckpt / "tokenizer.json"
        calibration = Calibration(options.calibration or ("corpus" if tokenizer.exists() else "random"), options.gptq)
        quantized = quantize_int4(model, options.weights.group_size, calibration,
                                  tokenizer if tokenizer.exists() else None, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is read by the service user
    try:
        with tqdm(total=cfg.num_layers, desc="building graphs, writing weights", unit="layer",
                  disable=not progress) as bar, (tmp / bundle_format.WEIGHTS_FILE).open("wb") as weights:
            prefill, decode, table = build_graphs(cfg, options.weights, source, weights, quantized, bar.update)
        del source, model, quantized
        for name, graph in (("prefill", prefill), ("decode", decode)):
            onnx.save_model(graph, tmp / f"{name}.onnx")
        tokenizer = _copy_tokenizer(ckpt, tmp)
        if tokenizer is None:
            print(f"{ckpt}: no tokenizer files; the bundle serves token-id requests only", file=sys.stderr)
        manifest = _manifest(cfg, options, prefill, decode, table, calibration, tokenizer)
        bundle_format.write_manifest(tmp, manifest)
        if signing_key is not None:  # after the manifest, which hashes every file already in the folder
            sign_bundle(tmp, signing_key)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _copy_tokenizer(ckpt: Path, dest: Path) -> dict | None:
    files = [f for f in TOKENIZER_FILES if (ckpt / f).exists()]
    if "tokenizer.json" not in files:
        return None
    for f in files:
        shutil.copy2(ckpt / f, dest / f)
    template = None
    if (ckpt / "chat_template.jinja").exists():
        template = (ckpt / "chat_template.jinja").read_text()
    elif (ckpt / "tokenizer_config.json").exists():
        template = json.loads((ckpt / "tokenizer_config.json").read_text()).get("chat_template")
    return {"files": files, "chat_template": template}


def _io(values) -> list[dict]:
    out = []
    for v in values:
        dims = [d.dim_param if d.dim_param else d.dim_value for d in v.type.tensor_type.shape.dim]
        out.append({"name": v.name, "dtype": ONNX_TO_NAME[v.type.tensor_type.elem_type], "shape": dims})
    return out


def _manifest(cfg: ModelConfig, options: ExportOptions, prefill: onnx.ModelProto, decode: onnx.ModelProto,
              table: WeightTable, calibration: Calibration | None, tokenizer: dict | None) -> dict:
    """`weights.group_size` is the block size of int8 bundles; of int4 ones, the byte budget (uniform int4
    at that group size) whose plan `weights.projections` lists."""
    fmt = options.weights
    return {
        "schema_version": bundle_format.SCHEMA_VERSION,
        "exporter_version": bundle_format.package_version(),
        "config": cfg.to_hf_dict(),
        "layers": [{"index": i, "type": {"M": "mamba", "*": "attention", "-": "mlp"}[k]} for i, k in enumerate(cfg.pattern)],
        "graphs": {
            name: {"file": f"{name}.onnx", "inputs": _io(g.graph.input), "outputs": _io(g.graph.output)}
            for name, g in (("prefill", prefill), ("decode", decode))
        },
        "state_layout": [s.to_dict() for s in state_layout(cfg, fmt.activation_dtype)],
        "custom_ops": {"domain": ops.DOMAIN, "version": ops.VERSION, "ops": sorted(ops.CUSTOM_OPS)},
        "weights": {
            "file": bundle_format.WEIGHTS_FILE, "format": fmt.kind, "group_size": fmt.group_size if fmt.bits else None,
            "quantize_lm_head": bool(fmt.bits and fmt.quantize_lm_head), "quantize_embeddings": fmt.embeddings_int8,
            "activation_dtype": fmt.activation_dtype, "accuracy_level": fmt.accuracy_level,
            "projections": table.blocks,
            "calibration": calibration.to_manifest() if calibration else None,
            "tensors": [{"name": k, **v} for k, v in table.index.items()],
        },
        "limits": {"max_batch": options.max_batch, "max_context": min(options.max_context, cfg.max_position_embeddings)},
        "tokenizer": tokenizer,
    }
