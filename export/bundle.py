"""Write a nemotron-edge bundle: prefill.onnx + decode.onnx sharing one weights.bin, tokenizer files, manifest.json.

The bundle is assembled in a temporary sibling directory and renamed into place at the end, so a failed or
interrupted export leaves nothing behind. The manifest (format: edge_runtime.bundle) describes everything
the device needs without onnx installed: config, layer map, graph interfaces, state layout, the weight
index, custom-op domain/version, and the sha256 of every file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto
from tqdm import tqdm

from edge_runtime import bundle as bundle_format
from edge_runtime.model_config import ModelConfig
from edge_runtime.state_layout import state_layout
from nemotron_export import ops
from nemotron_export.checkpoint import load_checkpoint
from nemotron_export.onnx_graph import WeightFormat, WeightTable, build_graphs

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
ALIGN = 64
ONNX_TO_NAME = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16",
                TensorProto.UINT8: "uint8", TensorProto.INT64: "int64"}


@dataclass(frozen=True)
class ExportOptions:
    weights: WeightFormat = WeightFormat()
    max_batch: int = 8
    max_context: int = 4096

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"--max-batch: must be at least 1, got {self.max_batch}")
        if self.max_context < 2:
            raise ValueError(f"--max-context: must be at least 2, got {self.max_context}")


def export_bundle(ckpt_dir: str | Path, out_dir: str | Path, options: ExportOptions = ExportOptions(),
                  progress: bool = True) -> Path:
    ckpt, out = Path(ckpt_dir), Path(out_dir)
    if out.exists():
        raise FileExistsError(f"--out: {out} already exists; remove it or choose another directory")
    model = load_checkpoint(ckpt, dtype=torch.float32, progress=progress)
    cfg = model.cfg
    source = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    del model
    steps = tqdm(total=4, desc="exporting", unit="step", disable=not progress)
    prefill, decode, table = build_graphs(cfg, options.weights, source)
    del source
    steps.update()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is read by the service user
    try:
        index = _write_weights(table, tmp / bundle_format.WEIGHTS_FILE, progress)
        steps.update()
        for name, graph in (("prefill", prefill), ("decode", decode)):
            _point_at_weights(graph, index)
            onnx.save_model(graph, tmp / f"{name}.onnx")
        steps.update()
        tokenizer = _copy_tokenizer(ckpt, tmp)
        manifest = _manifest(cfg, options, prefill, decode, index, tokenizer)
        bundle_format.write_manifest(tmp, manifest)
        steps.update()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        steps.close()
    return out


def _write_weights(table: WeightTable, path: Path, progress: bool) -> dict[str, dict]:
    """Write every tensor once, 64-byte aligned; return name -> {offset, nbytes, dtype, shape}."""
    index: dict[str, dict] = {}
    offset = 0
    with path.open("wb") as f:
        for name, arr in tqdm(table.arrays.items(), desc="writing weights", unit="tensor", disable=not progress):
            pad = (-offset) % ALIGN
            f.write(b"\0" * pad)
            offset += pad
            data = arr.tobytes()
            f.write(data)
            dtype = "bfloat16" if name in table.bf16 else arr.dtype.name
            index[name] = {"offset": offset, "nbytes": len(data), "dtype": dtype, "shape": list(arr.shape)}
            offset += len(data)
    return index


def _point_at_weights(model: onnx.ModelProto, index: dict[str, dict]) -> None:
    for t in model.graph.initializer:
        if t.name not in index:  # an inline constant
            continue
        entry = index[t.name]
        t.data_location = TensorProto.EXTERNAL
        del t.external_data[:]
        for key, value in (("location", bundle_format.WEIGHTS_FILE), ("offset", entry["offset"]), ("length", entry["nbytes"])):
            t.external_data.add(key=key, value=str(value))


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
              index: dict[str, dict], tokenizer: dict | None) -> dict:
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
            "quantize_lm_head": bool(fmt.bits and fmt.quantize_lm_head), "quantize_embeddings": False,
            "activation_dtype": fmt.activation_dtype, "accuracy_level": fmt.accuracy_level,
            "tensors": [{"name": k, **v} for k, v in index.items()],
        },
        "limits": {"max_batch": options.max_batch, "max_context": min(options.max_context, cfg.max_position_embeddings)},
        "tokenizer": tokenizer,
    }
