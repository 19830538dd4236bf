"""Write a nemotron-edge bundle: prefill.onnx + decode.onnx sharing one weights.bin, tokenizer files, manifest.json.

The export streams: it reads the checkpoint one layer at a time (nemotron_export.checkpoint), converts or
quantizes that layer (int4: calibrated layer by layer, nemotron_export.calibrate), appends it to
weights.bin (nemotron_export.weights_file) and lets it go, so it holds about one layer's float32 weights
(and int4's Hessians of one layer) whatever the model's size. The graphs are built after the weights from
weights.bin's index alone.

The bundle is assembled in `<out>.partial/` and renamed into place at the end, so a directory that looks
like a bundle is a complete one. The partial directory keeps a journal of the layers done
(nemotron_export.journal): an interrupted export is continued with `resume=True` (`export --resume`)
from its last finished layer, to the same bytes; one that fails before finishing any is removed. The
manifest (format: edge_runtime.bundle.reader) describes everything the device needs without onnx installed:
config, layer map, graph interfaces, state layout, the weight index (with the bits and block size of every
MatMulNBits projection, and for int4 the calibration that chose them), custom-op domain/version, and the
sha256 of every file. With a signing key, manifest.sig (edge_runtime.bundle.signature) is written after
the manifest, before the rename, so the bundle appears with its signature or not at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto
from tqdm import tqdm

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_runtime.bundle import reader as bundle_format
from edge_runtime.bundle.signature import sign_bundle
from edge_runtime.bundle.checks import MAX_BATCH
from edge_runtime.bundle.model_config import ModelConfig
from edge_runtime.bundle.state_layout import state_layout
from nemotron_export import ops
from nemotron_export.calibrate import (BATCH_ROWS, SENSITIVITY_ROWS, SOURCES, Calibration, ProjectionCost,
                                       calibration_rows, plan_formats, projection_shapes, quantize_walk,
                                       sensitivity_walk)
from nemotron_export.checkpoint import EMBEDDING, LM_HEAD, NORM_F, Checkpoint, open_checkpoint
from nemotron_export.journal import PartialExport, ResumeError
from nemotron_export.onnx_graph import WeightFormat, WeightIndex, build_graphs
from nemotron_export.quantize import check_format
from nemotron_export.weights_file import WeightsWriter, WeightTable

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
ONNX_TO_NAME = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16",
                TensorProto.UINT8: "uint8", TensorProto.INT64: "int64"}
SCALE_DTYPE = np.dtype(np.float32)  # of int4's MatMulNBits blocks: int4 bundles compute in float32


@dataclass(frozen=True)
class ExportOptions:
    """`calibration` (int4 only): what the int4 plan and GPTQ are fitted on, "corpus" or "random"
    tokens; None takes the corpus when the checkpoint has a tokenizer, random tokens otherwise. `gptq`
    False rounds to nearest (with a clip search) instead: faster, less accurate."""

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
                  progress: bool = True, signing_key: Ed25519PrivateKey | None = None,
                  resume: bool = False) -> Path:
    """Export `ckpt_dir` to a new bundle `out_dir`; with `signing_key`, manifest.sig signs its manifest;
    with `resume`, continue the interrupted export in `<out_dir>.partial/` (refused when it was begun
    with other options or from another checkpoint)."""
    ckpt_path, out = Path(ckpt_dir), Path(out_dir)
    if out.exists():
        raise FileExistsError(f"--out: {out} already exists; remove it or choose another directory")
    ckpt = open_checkpoint(ckpt_path)  # every problem of the checkpoint's files is found here, before any work
    cfg, fmt = ckpt.cfg, options.weights
    if fmt.bits is not None:
        check_format(fmt.bits, fmt.group_size)
    calibration, ids = None, None
    if fmt.kind == "int4":
        tokenizer = ckpt_path / "tokenizer.json"
        calibration = Calibration(options.calibration or ("corpus" if tokenizer.exists() else "random"), options.gptq)
        ids = calibration_rows(calibration.source, cfg.vocab_size, tokenizer if tokenizer.exists() else None)
    partial = PartialExport.start(out, _identity(ckpt, options, calibration), resume)
    try:
        if partial.journal.units_done > cfg.num_layers + 2 or partial.journal.measured > cfg.num_layers:
            raise ResumeError(f"{partial.path}: its journal counts more layers than the model has; the partial "
                              "export is damaged: delete it")
        # The journal's own tables: what the writer adds is journaled with each unit.
        table = WeightTable(partial.weights_fd, partial.journal.weights_bytes, partial.journal.tensors,
                            partial.journal.blocks)
        plan = _plan(ckpt, partial, ids, fmt.group_size, progress) if calibration else None
        _write_weights(ckpt, partial, table, fmt, plan, ids, calibration, progress)
        partial.clear_outputs()
        shapes = {name: ref.shape for name, ref in ckpt.tensors.items()}
        prefill, decode = build_graphs(cfg, fmt, WeightIndex(table.index, table.blocks, shapes))
        for name, graph in (("prefill", prefill), ("decode", decode)):
            onnx.save_model(graph, partial.path / f"{name}.onnx")
        tokenizer_info = _copy_tokenizer(ckpt_path, partial.path)
        if tokenizer_info is None:
            print(f"{ckpt_path}: no tokenizer files; the bundle serves token-id requests only", file=sys.stderr)
        manifest = _manifest(cfg, options, prefill, decode, table, calibration, tokenizer_info)
        bundle_format.write_manifest(partial.path, manifest)
        if signing_key is not None:  # after the manifest, which hashes every file already in the folder
            sign_bundle(partial.path, signing_key)
        partial.close()
        return partial.finish(out)
    except BaseException:
        partial.close()
        journal = partial.journal
        if journal.units_done == 0 and journal.measured == 0:
            partial.discard()  # nothing worth keeping
        else:
            done = f"{min(max(journal.units_done - 1, 0), cfg.num_layers)} of {cfg.num_layers} layers written"
            if calibration:
                done = f"{journal.measured} of {cfg.num_layers} layers measured, {done}"
            print(f"{partial.path}: the export stopped ({done}); `export --resume` with the same options "
                  "continues it", file=sys.stderr)
        raise


def _identity(ckpt: Checkpoint, options: ExportOptions, calibration: Calibration | None) -> dict:
    """What a resumed export must share with the one it continues: the options (the calibration as
    resolved), the exporter's version, the checkpoint and its tokenizer files."""
    tokenizer = {f: hashlib.sha256((ckpt.path / f).read_bytes()).hexdigest()
                 for f in TOKENIZER_FILES if (ckpt.path / f).is_file()}
    opts = {**dataclasses.asdict(options), "calibration": calibration.source if calibration else None}
    return {"exporter_version": bundle_format.package_version(), "options": opts,
            "checkpoint": {**ckpt.identity(), "tokenizer": tokenizer}}


def _plan(ckpt: Checkpoint, partial: PartialExport, ids: torch.Tensor, group_size: int,
          progress: bool) -> dict:
    """int4's plan: the sensitivity pass over the layers not yet measured (each journaled with the hidden
    states it carries on), then the knapsack over every projection's costs."""
    journal, layers = partial.journal, ckpt.cfg.num_layers
    if journal.measured < layers:
        x = None
        if journal.measured:
            shape = (SENSITIVITY_ROWS, *ids.shape[1:], ckpt.cfg.hidden_size)
            x = torch.from_numpy(partial.carried("sensitivity", journal.measured, shape))
        with tqdm(total=layers, initial=journal.measured, desc="measuring sensitivity", unit="layer",
                  disable=not progress) as bar:
            for i, x, costs in sensitivity_walk(ckpt, ids[:SENSITIVITY_ROWS], group_size, journal.measured, x):
                journal.costs.update({name: c.to_dict() for name, c in costs.items()})
                journal.measured = i + 1
                last = journal.measured == layers
                partial.commit(carry=None if last else ("sensitivity", i + 1, x.numpy()), drop=("sensitivity", i))
                bar.update()
    shapes = projection_shapes(ckpt)
    try:
        costs = {name: ProjectionCost.from_dict(journal.costs[name]) for name in shapes}
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise ResumeError(f"{partial.path}: its journal lacks or garbles a projection's measurement ({e!r}); "
                          "the partial export is damaged: delete it") from None
    return plan_formats(costs, shapes, group_size, SCALE_DTYPE.itemsize)


def unit_params(ckpt: Checkpoint) -> list[int]:
    """Parameters in each unit of weights.bin, in the order they are written and journaled: the embedding
    table, each layer, the head (final norm and lm_head)."""
    return [ckpt.tensors[EMBEDDING].numel,
            *(sum(ckpt.tensors[n].numel for n in ckpt.layer_names(i)) for i in range(ckpt.cfg.num_layers)),
            ckpt.tensors[NORM_F].numel + ckpt.tensors[LM_HEAD].numel]


def _write_weights(ckpt: Checkpoint, partial: PartialExport, table: WeightTable, fmt: WeightFormat,
                   plan: dict | None, ids: torch.Tensor | None, calibration: Calibration | None,
                   progress: bool) -> None:
    """weights.bin's units not yet written, each journaled: the embedding table, the layers (int4: GPTQ
    carrying the calibration rows' hidden states from layer to layer, or rounded to nearest), the head."""
    journal, cfg = partial.journal, ckpt.cfg
    layers = cfg.num_layers

    def commit(units_done: int, carry: tuple | None = None, drop: tuple | None = None) -> None:
        journal.units_done, journal.weights_bytes = units_done, table.length
        partial.commit(carry, drop)

    sizes = unit_params(ckpt)
    desc = "writing weights" if fmt.bits is None else "quantizing, writing weights"
    with tqdm(total=sum(sizes), initial=sum(sizes[:journal.units_done]), desc=desc, unit="param", unit_scale=True,
              disable=not progress) as bar:
        writer = WeightsWriter(cfg, fmt, table, bar.update)
        if journal.units_done == 0:
            writer.embedding(ckpt)
            commit(1)
        start = journal.units_done - 1
        gptq = calibration is not None and calibration.gptq
        if start < layers:
            if calibration is not None:
                xs = None
                if gptq and start:
                    saved = partial.carried("gptq", start, (*ids.shape, cfg.hidden_size))
                    xs = list(torch.from_numpy(saved).split(BATCH_ROWS))
                walk = ((i, block.state_dict(prefix=f"backbone.layers.{i}."), q, xs)
                        for i, block, q, xs in quantize_walk(ckpt, plan, ids, gptq, SCALE_DTYPE, start, xs))
            else:
                walk = ((i, ckpt.layer_tensors(i), {}, None) for i in range(start, layers))
            for i, tensors, quantized, xs in walk:
                writer.layer(i, {name: t.numpy() for name, t in tensors.items()}, quantized)
                carry = ("gptq", i + 1, torch.cat(xs).numpy()) if xs is not None and i + 1 < layers else None
                commit(i + 2, carry, drop=("gptq", i))
        if journal.units_done == layers + 1:
            writer.head(ckpt)
            commit(layers + 2)


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
