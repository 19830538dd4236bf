"""A bundle that was modified after export is refused by open_bundle, with a message naming the file.

Every file the manifest lists is hashed, so one flipped byte anywhere in it is caught by name. The
manifest is sealed with a digest of its own content (manifest_sha256), so a flip in it is named too, both
one that breaks its JSON and one that keeps it valid JSON (a digit of the config or of a limit, a hex digit
of a listed hash, which must not be blamed on the file it lists). Unknown schema versions and unsupported
custom-op versions are refused with a message saying which.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from bundle_edit import copy_bundle, edit_manifest
from edge_runtime.bundle.reader import MANIFEST_FILE, SCHEMA_VERSION, BundleError, open_bundle


@pytest.fixture
def copy(tiny_bundle: Path, tmp_path: Path):
    return lambda: copy_bundle(tiny_bundle, tmp_path)


def flip(path: Path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def refusal(bundle: Path) -> str:
    with pytest.raises(BundleError) as info:
        open_bundle(bundle)
    return str(info.value)


def test_untouched_copy_opens(copy):
    open_bundle(copy())


def test_flipped_byte_in_every_listed_file_is_named(tiny_bundle, copy):
    files = json.loads((tiny_bundle / MANIFEST_FILE).read_text())["files"]
    assert {"prefill.onnx", "decode.onnx", "weights.bin", "tokenizer.json"} <= set(files)
    problems = []
    for name, entry in sorted(files.items()):
        for where in ("first", "middle", "last"):
            bundle = copy()
            size = entry["bytes"]
            flip(bundle / name, {"first": 0, "middle": size // 2, "last": size - 1}[where])
            with pytest.raises(BundleError) as info:
                open_bundle(bundle)
            msg = str(info.value)
            if name not in msg or "sha256" not in msg:
                problems.append(f"{name} ({where} byte): {msg}")
            shutil.rmtree(bundle)
    assert not problems, "\n".join(problems)


def test_truncated_and_missing_files_are_named(tiny_bundle, copy):
    bundle = copy()
    w = bundle / "weights.bin"
    w.write_bytes(w.read_bytes()[:-1])
    msg = refusal(bundle)
    assert "weights.bin" in msg and "size" in msg, msg
    bundle = copy()
    (bundle / "decode.onnx").unlink()
    msg = refusal(bundle)
    assert "decode.onnx" in msg and "missing" in msg, msg


def test_no_manifest(copy):
    bundle = copy()
    (bundle / MANIFEST_FILE).unlink()
    msg = refusal(bundle)
    assert MANIFEST_FILE in msg and "not a bundle" in msg, msg


def test_manifest_flip_that_breaks_json_is_named(copy):
    bundle = copy()
    text = (bundle / MANIFEST_FILE).read_text()
    flip(bundle / MANIFEST_FILE, text.index("{"), 0x40)  # '{' -> ';'
    msg = refusal(bundle)
    assert MANIFEST_FILE in msg and "JSON" in msg, msg


def _manifest_offsets(text: str) -> dict[str, int]:
    """Offsets of single bytes whose low-bit flip keeps manifest.json valid JSON (a number's last digit,
    a hash's first hex digit)."""
    hidden = re.search(r'"hidden_size": (\d+)', text)
    sha = re.search(r'"weights.bin": \{\s*"sha256": "([0-9a-f])', text)
    max_ctx = re.search(r'"max_context": (\d+)', text)
    return {"config.hidden_size": hidden.end(1) - 1, "limits.max_context": max_ctx.end(1) - 1,
            "files.weights.bin.sha256": sha.start(1)}


@pytest.mark.parametrize("field", ["config.hidden_size", "limits.max_context", "files.weights.bin.sha256"])
def test_manifest_flip_that_keeps_valid_json_is_named(copy, field):
    """Without the manifest's own digest an edited config/limit was accepted silently and an edited hash
    was blamed on weights.bin."""
    bundle = copy()
    path = bundle / MANIFEST_FILE
    before = json.loads(path.read_text())
    flip(path, _manifest_offsets(path.read_text())[field])
    after = json.loads(path.read_text())  # still valid JSON, one value changed
    assert after != before
    with pytest.raises(BundleError) as info:
        open_bundle(bundle)
    assert MANIFEST_FILE in str(info.value), str(info.value)


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 0, "1", None, True])
def test_unknown_schema_version_is_refused(copy, version):
    bundle = copy()
    edit_manifest(bundle, lambda m: m.__setitem__("schema_version", version))
    msg = refusal(bundle)
    assert "schema_version" in msg and repr(version) in msg and "not supported" in msg, msg


def test_an_older_bundle_is_refused_with_a_re_export_hint(copy):
    """Schema 1 bundles concatenated K/V per call; this runtime binds K/V buffers in place."""
    bundle = copy()
    edit_manifest(bundle, lambda m: m.__setitem__("schema_version", 1))
    msg = refusal(bundle)
    assert "schema_version 1 is not supported" in msg and "re-export" in msg, msg


@pytest.mark.parametrize("domain,version", [("nemotron_edge", 2), ("nemotron_edge", None), ("other_domain", 1),
                                            ("nemotron_edge", True), (["nemotron_edge"], 1)])
def test_unsupported_custom_op_version_is_refused(copy, domain, version):
    bundle = copy()
    edit_manifest(bundle, lambda m: m["custom_ops"].update(domain=domain, version=version))
    msg = refusal(bundle)
    assert "custom op" in msg and repr(domain) in msg and f"version {version!r}" in msg and "not supported" in msg, msg


def test_missing_manifest_field_is_named(copy):
    bundle = copy()
    edit_manifest(bundle, lambda m: m.pop("state_layout"))
    msg = refusal(bundle)
    assert "state_layout" in msg, msg
