"""The benchmark's checkpoint and bundles, built once into a cache directory (bench/.cache by default).

A synthetic checkpoint of the chosen preset (`small`: ~71M parameters, the first 27 layers of the real
layer pattern, random weights, the real tokenizer), exported as fp32, int8 and int4 bundles (int8/int4
with MatMulNBits accuracy level 4, int8 compute on CPU) and, for comparison, int8/int4 at accuracy level 0.
A bundle is rebuilt when it no longer opens (the bundle format changed) or when the exporter's source
changed since it was built (a stamp next to it holds a hash of export/*.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.engine.providers import custom_op_library_error

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO / "bench" / ".cache"
KERNEL_LIBRARY = REPO / "kernels" / "build" / "libnemotron_edge_ops.so"
MAX_BATCH, MAX_CONTEXT = 16, 4096


@dataclass(frozen=True)
class Format:
    name: str  # fp32, int8, int4, int8-acc0, int4-acc0
    kind: str
    accuracy_level: int = 0


FORMATS = {f.name: f for f in (Format("fp32", "fp32"), Format("int8", "int8", 4), Format("int4", "int4", 4),
                               Format("int8-acc0", "int8", 0), Format("int4-acc0", "int4", 0))}


def exporter_fingerprint() -> str:
    h = hashlib.sha256()
    for path in sorted((REPO / "export").glob("*.py")) + sorted((REPO / "edge_runtime" / "bundle").glob("*.py")):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def checkpoint(cache: Path, preset: str) -> Path:
    from nemotron_export.synth import synth

    path = cache / preset / "ckpt"
    if not (path / "config.json").exists():
        shutil.rmtree(path, ignore_errors=True)
        synth(preset, path, seed=0)
    return path


def bundle(cache: Path, preset: str, fmt: str) -> Path:
    """The bundle of `fmt` for `preset`, exported now if missing or stale."""
    from edge_runtime.bundle.reader import BundleError, open_bundle
    from nemotron_export.bundle import ExportOptions, export_bundle
    from nemotron_export.commands import GROUP_SIZE_BY_FORMAT
    from nemotron_export.onnx_graph import WeightFormat

    f = FORMATS[fmt]
    path = cache / preset / f"bundle-{fmt}"
    stamp = path.with_suffix(".stamp")
    fingerprint = exporter_fingerprint()
    try:
        fresh = json.loads(stamp.read_text())["exporter"] == fingerprint
        open_bundle(path, verify=False)
    except (OSError, ValueError, KeyError, BundleError):
        fresh = False
    if not fresh:
        shutil.rmtree(path, ignore_errors=True)
        weights = WeightFormat(kind=f.kind, group_size=GROUP_SIZE_BY_FORMAT.get(f.kind, 32),
                               accuracy_level=f.accuracy_level)
        export_bundle(checkpoint(cache, preset), path,
                      ExportOptions(weights=weights, max_batch=MAX_BATCH, max_context=MAX_CONTEXT), progress=False)
        stamp.write_text(json.dumps({"exporter": fingerprint}) + "\n")
    return path


def kernel_library() -> tuple[str | None, str]:
    """The native custom-op library if it is built and loads, and why not otherwise."""
    if not KERNEL_LIBRARY.exists():
        return None, f"{KERNEL_LIBRARY.relative_to(REPO)} not built (bash kernels/build.sh)"
    error = custom_op_library_error(KERNEL_LIBRARY)
    if error is not None:  # being rebuilt, or built for another ONNX Runtime
        return None, f"{KERNEL_LIBRARY.relative_to(REPO)} does not load: {error}"
    return str(KERNEL_LIBRARY), "loaded"
