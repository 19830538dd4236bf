"""The declared public API: every name `edge_runtime` exports resolves, and README's Python examples import
only from it (or, in the OpenAI-compatible API's example, the `openai` client and its HTTP library) and
run (the in-process one on the embedded demo bundle)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import edge_runtime

README = Path(__file__).resolve().parent.parent / "README.md"
# Third-party clients of the OpenAI-compatible HTTP API: what its users import instead of ours.
OPENAI_CLIENT = {"openai", "httpx", "httpx2"}


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_every_exported_name_resolves():
    for name in edge_runtime.__all__:
        assert getattr(edge_runtime, name) is not None, name


def test_readme_examples_import_only_the_public_api():
    blocks = python_blocks()
    assert len(blocks) >= 2  # the in-process example and the client example
    for block in blocks:
        imports = re.findall(r"^\s*(?:from\s+(\S+)\s+import|import\s+(\S+))", block, flags=re.M)
        assert imports, block
        modules = {source or plain for source, plain in imports}
        assert modules == {"edge_runtime"} or modules <= OPENAI_CLIENT, f"README example imports {modules}: {block}"


def test_readme_in_process_example_runs():
    block = next(b for b in python_blocks() if "Engine(" in b)
    out = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "finish_reason=" in out.stdout and "answer:" in out.stdout


def test_the_client_loads_no_engine():
    script = "import sys; from edge_runtime import EdgeClient; print(sorted(m for m in sys.modules if m.startswith('onnxruntime')))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
