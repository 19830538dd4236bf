"""Regenerate the demo bundle embedded in edge_runtime: the `tiny` preset, seed 0, fp32.

    python -m nemotron_export.demo_bundle [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from edge_runtime.bundle.demo import DEMO_BUNDLE
from nemotron_export.bundle import ExportOptions, export_bundle
from nemotron_export.synth import synth

DEMO_PRESET, DEMO_SEED = "tiny", 0
DEMO_OPTIONS = ExportOptions(max_batch=8, max_context=2048)


def build_demo_bundle(out: Path, progress: bool = False) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = synth(DEMO_PRESET, Path(tmp) / "ckpt", seed=DEMO_SEED)
        return export_bundle(ckpt, out, DEMO_OPTIONS, progress=progress)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_BUNDLE)
    out = parser.parse_args().out
    if out.exists():
        shutil.rmtree(out)
    print(f"wrote {build_demo_bundle(out, progress=True)}")


if __name__ == "__main__":
    main()
