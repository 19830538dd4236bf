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


# Each package of the device side and what it must never import (module-name prefixes), checked in a fresh
# interpreter so that what a module pulls in transitively counts too.
FORBIDDEN = {
    "edge_runtime.bundle": ("edge_runtime.engine", "edge_runtime.service", "edge_runtime.client", "grpc", "onnxruntime"),
    "edge_runtime.engine": ("edge_runtime.service", "edge_runtime.client", "edge_runtime.api", "grpc"),
    "edge_runtime.client": ("edge_runtime.engine.engine", "edge_runtime.service.servicer", "onnxruntime"),
}

DIRECTION_SCRIPT = """
import importlib, pkgutil, sys
package, forbidden = sys.argv[1], tuple(sys.argv[2:])
pkg = importlib.import_module(package)
names = [package] + [info.name for info in pkgutil.walk_packages(pkg.__path__, package + ".")]
for name in names:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden))
print(len(names), loaded)
"""


def test_each_package_imports_only_what_it_may():
    for package, forbidden in FORBIDDEN.items():
        out = subprocess.run([sys.executable, "-c", DIRECTION_SCRIPT, package, *forbidden], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        count, loaded = out.stdout.split(" ", 1)
        assert int(count) >= 2, package  # the package and its modules were really imported
        assert loaded.strip() == "[]", f"{package} imports {loaded.strip()}"
