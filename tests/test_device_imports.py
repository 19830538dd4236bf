"""The device never needs torch: importing every edge_runtime and nemotron_jetson module, and building the
CLI, must not import it (checked in a fresh interpreter, since this one has torch loaded already)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import importlib, pkgutil, sys
import edge_runtime, nemotron_jetson
names = []
for pkg in (edge_runtime, nemotron_jetson):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(info.name)
        names.append(info.name)
import edge_runtime.cli
edge_runtime.cli.build_parser()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "onnx", "onnxscript", "safetensors"))
print(len(names), heavy)
assert not heavy, heavy
"""


def test_no_device_module_imports_torch():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    count = int(out.stdout.split()[0])
    assert count >= 30  # every module was really imported
