"""Test helper: copies of a bundle, and manifest edits as a deliberate writer makes them.

An edit re-seals the manifest's own digest (edge_runtime.bundle.reader.manifest_digest), so the check under test is
the one that answers, not the seal. Used by test_bundle_integrity.py and test_bundle_confinement.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

from edge_runtime.bundle import reader as bundle_format
from edge_runtime.bundle.reader import MANIFEST_FILE


def copy_bundle(source: Path, parent: Path) -> Path:
    """A fresh copy of `source` in `parent`, under a name not used there yet."""
    return Path(shutil.copytree(source, parent / f"bundle{len(list(parent.iterdir()))}", symlinks=True))


def edit_manifest(bundle: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    path = bundle / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    edit(manifest)
    manifest["manifest_sha256"] = bundle_format.manifest_digest(manifest)
    path.write_text(json.dumps(manifest, indent=1) + "\n")


def tensor(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in manifest["weights"]["tensors"] if t["name"] == name)
