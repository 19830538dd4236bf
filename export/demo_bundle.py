"""Regenerate the demo bundle embedded in edge_runtime: the trained demo model (models/demo), int8.

    python -m nemotron_export.demo_bundle [--out DIR]

The checkpoint comes from `nemotron-edge train-demo` and is kept in the repository; re-exporting it gives
the same bytes on any CPU (int8 rounding is exact arithmetic), which tests/test_demo_bundle.py holds.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from edge_runtime.bundle.demo import DEMO_BUNDLE
from nemotron_export.bundle import ExportOptions, export_bundle
from nemotron_export.demo_model.train import DEMO_CHECKPOINT
from nemotron_export.onnx_graph import WeightFormat

DEMO_OPTIONS = ExportOptions(weights=WeightFormat(kind="int8", group_size=128), max_batch=8, max_context=2048)


def build_demo_bundle(out: Path, progress: bool = False) -> Path:
    return export_bundle(DEMO_CHECKPOINT, out, DEMO_OPTIONS, progress=progress)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_BUNDLE)
    out = parser.parse_args().out
    if out.exists():
        shutil.rmtree(out)
    print(f"wrote {build_demo_bundle(out, progress=True)}")


if __name__ == "__main__":
    main()
