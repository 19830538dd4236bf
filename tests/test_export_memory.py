"""CI guard: the exporter streams, so its memory is bounded by one layer, not by the model.

`nemotron-edge export --weights int8` of a checkpoint of the real model's widths (hidden 4480, Mamba
in_proj 22656 x 4480, MLP 15680, 40/8 attention heads of 128), the real vocabulary (131072: the embedding
table and lm_head are 587M parameters each) and four layers `M*-M` (every kind), stored like the published
checkpoint (bf16, sharded, written with synth's streaming writer; 3.3 GB), runs in a subprocess whose own
peak RSS (its rusage, from wait4) must stay under BASELINE + LAYER_COPIES x the float32 bytes of the
largest layer:
- BASELINE, the process before any layer: Python, torch, onnx, safetensors and the exporter imported and
  the `tiny` preset exported peaks at 387 MiB here (`/usr/bin/time -v nemotron-edge export` of `tiny`),
  taken as 512 MiB;
- LAYER_COPIES = 4: the layer's float32 tensors, and the quantizer's float32 temporaries of its largest
  matrix (its blocks, scaled values, codes), about three of that matrix's size.
Loading the whole model in float32 (6.7 GB here), or converting the embedding table or lm_head in one
piece (2.35 GB each, before the quantizer's temporaries), goes far over the bound: both were tried.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench.real_size.measured_process import cli, run_measured
from nemotron_export.presets import PRESETS
from nemotron_export.safetensors_writer import TensorSpec, to_bf16_bits, write_checkpoint_tensors
from nemotron_export.synth import checkpoint_shapes

REAL_WIDTHS = replace(PRESETS["nano-9b-v2"], pattern="M*-M")
BASELINE_BYTES = 512 << 20
LAYER_COPIES = 4
SHARD_BYTES = 1 << 30


def largest_layer_float32_bytes(shapes: dict[str, tuple[int, ...]]) -> int:
    per_layer: dict[str, int] = {}
    for name, shape in shapes.items():
        if name.startswith("backbone.layers."):
            layer = name.split(".")[2]
            per_layer[layer] = per_layer.get(layer, 0) + int(np.prod(shape)) * 4
    return max(per_layer.values())


@pytest.fixture
def real_width_checkpoint(tmp_path) -> Iterator[Path]:
    """bf16 tensors of one repeated block of noise (the values do not matter here; the bytes on disk do)."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(REAL_WIDTHS.to_hf_dict()))
    noise = to_bf16_bits(np.random.default_rng(0).standard_normal(1 << 22, np.float32) * np.float32(0.02))
    specs = [TensorSpec(name, shape, "BF16") for name, shape in checkpoint_shapes(REAL_WIDTHS).items()]

    def chunks(spec: TensorSpec) -> Iterator[np.ndarray]:
        left = spec.nbytes // 2
        while left:
            n = min(left, noise.size)
            yield noise[:n]
            left -= n

    write_checkpoint_tensors(ckpt, specs, chunks, SHARD_BYTES)
    yield ckpt
    shutil.rmtree(tmp_path)  # gigabytes: not left behind in pytest's kept temporary directories


def test_int8_export_peak_rss_is_bounded_by_one_layer(real_width_checkpoint, tmp_path):
    out, log = tmp_path / "bundle", tmp_path / "export.log"
    m = run_measured(cli("export", str(real_width_checkpoint), "--out", str(out), "--weights", "int8"), log)
    code, peak = m.exit_code, m.peak_rss
    assert code == 0, log.read_text()[-3000:]
    assert (out / "manifest.json").exists()
    layer = largest_layer_float32_bytes(checkpoint_shapes(REAL_WIDTHS))
    bound = BASELINE_BYTES + LAYER_COPIES * layer
    line = (f"int8 export of {REAL_WIDTHS.pattern} at the real widths and vocabulary: peak RSS {peak / 2**30:.2f} GiB, "
            f"bound {bound / 2**30:.2f} GiB ({BASELINE_BYTES >> 20} MiB + {LAYER_COPIES} x the largest layer's "
            f"{layer / 2**20:.0f} MiB of float32)")
    print("\n" + line)
    assert peak <= bound, line
