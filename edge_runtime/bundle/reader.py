"""The bundle format: manifest.json, its checks, and the read side the runtime uses.

A bundle directory holds prefill.onnx and decode.onnx (sharing weights.bin), optional tokenizer files and
manifest.json. The manifest is the single source of truth on the device: model config, layer map, graph
interfaces, per-sequence state layout, the weight index, custom-op domain/version, and the sha256 of every
file. Loading refuses a bundle whose schema or custom-op version is unknown, whose files do not match
their hashes, or whose manifest lies about its folder (edge_runtime.bundle.checks), naming the file or entry.
"""

from __future__ import annotations

import functools
import hashlib
import json
import reprlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from edge_runtime.bundle.checks import BundleError, bundle_file, check_graphs, check_manifest
from edge_runtime.bundle.model_config import ModelConfig
from edge_runtime.bundle.state_layout import StateSpec

# 2: attention is GroupQueryAttention over K/V buffers updated in place; prefill zeroes rows that start.
SCHEMA_VERSION = 2
SUPPORTED_CUSTOM_OPS = {"nemotron_edge": {1}}
MANIFEST_FILE = "manifest.json"
# A manifest lists a few hundred tensors and a chat template; anything near this is not one.
MAX_MANIFEST_BYTES = 16 * 1024**2
WEIGHTS_FILE = "weights.bin"
# Name suffixes of the tensors that feed MatMul (a float weight, stored transposed) or MatMulNBits (block
# codes and scales). ONNX Runtime's CPU provider pre-packs exactly these, a copy per session.
MATMUL_WEIGHT_SUFFIXES = (".T", ".qweight", ".scales")


def package_version() -> str:
    try:
        return metadata.version("nemotron-edge")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            if on_bytes:
                on_bytes(len(chunk))
    return h.hexdigest()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON, its own digest field left out: editing any value is seen."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Hash every file already in `directory` into the manifest, seal it with its own digest, write it."""
    files = sorted(bundle_file(directory, p.name, "files") for p in directory.iterdir()
                   if p.is_file() and p.name != MANIFEST_FILE)
    manifest = {**manifest, "files": {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files}}
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]

    @functools.cached_property
    def config(self) -> ModelConfig:  # parsed once: the runner reads it on every model call
        return ModelConfig.from_hf_dict(self.manifest["config"])

    @property
    def state_layout(self) -> list[StateSpec]:
        return [StateSpec.from_dict(d) for d in self.manifest["state_layout"]]

    @property
    def weights(self) -> dict[str, Any]:
        return self.manifest["weights"]

    @functools.cached_property
    def matmul_weight_bytes(self) -> int:
        """Bytes of weights.bin that feed MatMul or MatMulNBits nodes: what a pre-packing session copies."""
        return sum(t["nbytes"] for t in self.weights["tensors"] if t["name"].endswith(MATMUL_WEIGHT_SUFFIXES))

    @property
    def limits(self) -> dict[str, int]:
        return self.manifest["limits"]

    @property
    def has_tokenizer(self) -> bool:
        return self.manifest.get("tokenizer") is not None

    def tokenizer_file(self, name: str) -> Path | None:
        """The tokenizer file `name` (e.g. tokenizer.json) when the manifest lists it, else None."""
        tok = self.manifest.get("tokenizer")
        return self.path / name if tok and name in tok.get("files", []) else None

    @functools.cached_property
    def special_tokens(self) -> dict[str, str]:
        """The named special tokens of tokenizer_config.json (bos_token: "<s>", ...); {} without one."""
        path = self.tokenizer_file("tokenizer_config.json")
        if path is None:
            return {}
        config = read_json_object(path)
        return {k: v for k, v in config.items() if k.endswith("_token") and isinstance(v, str)}

    @property
    def chat_template(self) -> str | None:
        tok = self.manifest.get("tokenizer")
        return tok.get("chat_template") if tok else None

    def graph_path(self, name: str) -> Path:
        return self.path / self.manifest["graphs"][name]["file"]

    @property
    def identity(self) -> str:
        """A short stable id: the hash of the manifest's file hashes."""
        files = json.dumps(self.manifest["files"], sort_keys=True).encode()
        return hashlib.sha256(files).hexdigest()[:16]


def read_json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise BundleError(f"{path}: not a JSON object")
    return value


def open_bundle(path: str | Path, verify: bool = True, on_bytes: Callable[[int], None] | None = None) -> Bundle:
    """Read and check a bundle: its manifest against its folder and graphs always, and with `verify` every
    file's sha256 too (`on_bytes` reports progress)."""
    root = Path(path)
    mpath = root / MANIFEST_FILE
    if not mpath.is_file():
        raise BundleError(f"{root}: not a bundle (no {MANIFEST_FILE})")
    if mpath.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{mpath}: {mpath.stat().st_size} bytes, more than a manifest's {MAX_MANIFEST_BYTES}")
    manifest = read_json_object(mpath)
    version = manifest.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:
        hint = " (an older bundle: re-export it with this version's exporter)" \
            if type(version) is int and version < SCHEMA_VERSION else ""
        raise BundleError(f"{mpath}: schema_version {reprlib.repr(version)} is not supported (this runtime reads "
                          f"{SCHEMA_VERSION}){hint}")
    ops = manifest.get("custom_ops")
    ops = ops if isinstance(ops, dict) else {}  # refused below, as an unsupported (None) domain
    domain, op_version = ops.get("domain"), ops.get("version")
    if not (isinstance(domain, str) and type(op_version) is int and op_version in SUPPORTED_CUSTOM_OPS.get(domain, ())):
        raise BundleError(
            f"{mpath}: custom op domain {reprlib.repr(domain)} version {reprlib.repr(op_version)} is not supported "
            f"(this runtime supports {SUPPORTED_CUSTOM_OPS})")
    for key in ("config", "graphs", "state_layout", "weights", "limits", "files", "manifest_sha256"):
        if key not in manifest:
            raise BundleError(f"{mpath}: missing field {key!r}")
    if manifest_digest(manifest) != manifest["manifest_sha256"]:
        raise BundleError(f"{mpath}: its content does not match its manifest_sha256; the manifest was modified")
    try:
        config = check_manifest(root, manifest)
    except BundleError as e:
        raise BundleError(f"{mpath}: {e}") from None
    bundle = Bundle(root, manifest)
    if verify:
        verify_files(bundle, on_bytes)
    try:
        check_graphs(root, manifest, config)
    except BundleError as e:
        raise BundleError(f"{mpath}: {e}") from None
    return bundle


def verify_files(bundle: Bundle, on_bytes: Callable[[int], None] | None = None) -> None:
    """The sha256 of every listed file (open_bundle has checked that each is in the folder, at its size)."""
    for name, entry in bundle.manifest["files"].items():
        p = bundle.path / name
        if sha256_file(p, on_bytes) != entry["sha256"]:
            raise BundleError(f"{p}: sha256 does not match the manifest; the file was modified or corrupted")


def verify_bundle(path: str | Path) -> Bundle:
    """Full check, as `nemotron-edge doctor` runs it."""
    return open_bundle(path, verify=True)
