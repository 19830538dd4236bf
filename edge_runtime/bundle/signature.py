"""Ed25519 signatures of bundles: who made a bundle, not only whether it is intact.

A bundle's `manifest_sha256` is a seal against accidents: anyone who can edit manifest.json can recompute
it. A signature needs the private key. The exporter (`export --sign-key KEY`) signs the exact bytes of
manifest.json and writes `manifest.sig` beside it; the device (`--trusted-key PUB`, `[model] trusted_keys`)
accepts the bundle only when one of its public keys verifies that signature. The manifest holds the sha256
of every other file, so the signature covers the whole bundle once those files are checked against it:
`open_trusted_bundle` always checks them, whatever the caller asked for.

Keys are PEM files as OpenSSL writes them: `openssl genpkey -algorithm ed25519 -out signing.pem` (PKCS#8
private key) and `openssl pkey -in signing.pem -pubout -out signing.pub` (SubjectPublicKeyInfo). A key id
(the first 16 hex digits of the sha256 of the raw public key) names the signer in manifest.sig and in
messages, so a refusal can say "signed by another key" rather than only "does not verify".

manifest.sig is a small JSON object: {"algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<base64
of the 64-byte signature>"}; `openssl pkeyutl -verify -pubin -inkey signing.pub -rawin -in manifest.json
-sigfile <decoded signature>` checks it without this package.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_runtime.bundle.reader import MANIFEST_FILE, MAX_MANIFEST_BYTES, Bundle, BundleError, open_bundle

SIGNATURE_FILE = "manifest.sig"
ALGORITHM = "ed25519"
# Bounds checked before anything is parsed: a PEM Ed25519 key is ~120 bytes, manifest.sig ~150 bytes (the
# manifest's bound is the bundle reader's).
MAX_KEY_FILE_BYTES = 16 << 10
MAX_SIGNATURE_FILE_BYTES = 4 << 10
SIGNATURE_BYTES = 64
KEY_ID_HEX = 16


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the file and what is wrong with it."""


class BundleSignatureError(BundleError):
    """A bundle refused for its signature: unsigned, signed by a key not trusted, or not verifying."""


class SignatureStatus(enum.Enum):
    TRUSTED = "signed by a trusted key"
    UNSIGNED = "unsigned"
    UNTRUSTED_KEY = "signed by another key"
    INVALID = "signature invalid"
    MALFORMED = "signature file malformed"
    SIGNED = "signed (no trusted key given to check it)"


@dataclass(frozen=True)
class TrustedKey:
    path: Path
    key: Ed25519PublicKey

    @property
    def key_id(self) -> str:
        return key_id(self.key)


@dataclass(frozen=True)
class SignatureCheck:
    """What `check_signature` found; `manifest_bytes` are the bytes of manifest.json it checked."""

    status: SignatureStatus
    detail: str
    manifest_bytes: bytes = field(repr=False)
    key_id: str | None = None
    trusted_by: Path | None = None  # the key file that verified it


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX]


def _read_bounded(path: Path, limit: int, what: str, error: type[ValueError]) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except OSError as e:
        raise error(f"{path}: cannot read the {what}: {e.strerror}") from None
    if len(data) > limit:
        raise error(f"{path}: larger than {limit} bytes; not a {what}")
    return data


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    """An unencrypted Ed25519 private key in PEM (`openssl genpkey -algorithm ed25519`)."""
    path = Path(path)
    data = _read_bounded(path, MAX_KEY_FILE_BYTES, "private key file", KeyFileError)
    if b"PRIVATE KEY-----" not in data:
        hint = " (this is a public key: sign with the private one)" if b"PUBLIC KEY-----" in data else ""
        raise KeyFileError(f"{path}: not a PEM private key{hint}; make one with `openssl genpkey -algorithm ed25519`")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(f"{path}: the private key is encrypted; give an unencrypted PEM key "
                           "(`openssl pkey -in KEY -out PLAIN`), kept readable by the exporting user only") from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyFileError(f"{path}: not a readable PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key ({type(key).__name__}); "
                           "make one with `openssl genpkey -algorithm ed25519`")
    return key


def load_trusted_key(path: str | Path) -> TrustedKey:
    """An Ed25519 public key in PEM (`openssl pkey -in signing.pem -pubout`)."""
    path = Path(path)
    data = _read_bounded(path, MAX_KEY_FILE_BYTES, "public key file", KeyFileError)
    if b"PRIVATE KEY-----" in data:
        raise KeyFileError(f"{path}: a private key; trust the public key instead "
                           "(`openssl pkey -in KEY -pubout -out KEY.pub`), and keep the private key off the device")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyFileError(f"{path}: not a readable PEM public key ({e}); "
                           "write one with `openssl pkey -in KEY -pubout -out KEY.pub`") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return TrustedKey(path, key)


def load_trusted_keys(paths: Sequence[str | Path]) -> tuple[TrustedKey, ...]:
    return tuple(load_trusted_key(p) for p in paths)


def sign_bundle(directory: str | Path, key: Ed25519PrivateKey) -> str:
    """Sign `directory`'s manifest.json; write manifest.sig atomically (temp file, fsync, rename). The key id."""
    directory = Path(directory)
    manifest = _read_bounded(directory / MANIFEST_FILE, MAX_MANIFEST_BYTES, "bundle manifest", BundleError)
    kid = key_id(key.public_key())
    record = {"algorithm": ALGORITHM, "key_id": kid, "signature": base64.b64encode(key.sign(manifest)).decode()}
    fd, tmp = tempfile.mkstemp(prefix=f".{SIGNATURE_FILE}.", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record, indent=1) + "\n")
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, directory / SIGNATURE_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return kid


def _parse_signature(path: Path) -> tuple[str, bytes]:
    """(key id, signature) from manifest.sig, or ValueError naming what is wrong."""
    data = _read_bounded(path, MAX_SIGNATURE_FILE_BYTES, "signature file", ValueError)
    try:
        record = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(record, dict) or set(record) != {"algorithm", "key_id", "signature"}:
        raise ValueError("expected an object with exactly algorithm, key_id and signature")
    if record["algorithm"] != ALGORITHM:
        raise ValueError(f"algorithm {record['algorithm']!r} is not {ALGORITHM!r}")
    kid, encoded = record["key_id"], record["signature"]
    if not isinstance(kid, str) or len(kid) != KEY_ID_HEX or any(c not in "0123456789abcdef" for c in kid):
        raise ValueError(f"key_id must be {KEY_ID_HEX} lowercase hex digits")
    try:
        signature = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
    except binascii.Error:
        signature = b""
    if len(signature) != SIGNATURE_BYTES:
        raise ValueError(f"signature must be {SIGNATURE_BYTES} bytes in base64")
    return kid, signature


def check_signature(directory: str | Path, keys: Sequence[TrustedKey]) -> SignatureCheck:
    """Whether `directory`'s manifest.json carries a signature one of `keys` verifies. Checks only the
    manifest's bytes: the files it lists are checked by `open_bundle(verify=True)`."""
    directory = Path(directory)
    manifest_path, sig_path = directory / MANIFEST_FILE, directory / SIGNATURE_FILE
    manifest = _read_bounded(manifest_path, MAX_MANIFEST_BYTES, "bundle manifest", BundleError)
    if not sig_path.exists():
        return SignatureCheck(SignatureStatus.UNSIGNED, f"{directory}: unsigned (no {SIGNATURE_FILE})", manifest)
    try:
        kid, signature = _parse_signature(sig_path)
    except ValueError as e:
        return SignatureCheck(SignatureStatus.MALFORMED, f"{sig_path}: malformed: {e}", manifest)
    if not keys:
        return SignatureCheck(SignatureStatus.SIGNED, f"{directory}: signed by key {kid}; no trusted key given",
                              manifest, kid)
    matching = [k for k in keys if k.key_id == kid]
    if not matching:
        trusted = ", ".join(f"{k.path} ({k.key_id})" for k in keys)
        return SignatureCheck(SignatureStatus.UNTRUSTED_KEY,
                              f"{directory}: signed by another key ({kid}), not by a trusted key: {trusted}",
                              manifest, kid)
    for k in matching:
        try:
            k.key.verify(signature, manifest)
        except InvalidSignature:
            continue
        return SignatureCheck(SignatureStatus.TRUSTED, f"{directory}: signed by trusted key {k.path} ({kid})",
                              manifest, kid, k.path)
    return SignatureCheck(SignatureStatus.INVALID,
                          f"{manifest_path}: signature invalid for trusted key {matching[0].path} ({kid}): "
                          "the manifest was modified after it was signed, or manifest.sig was", manifest, kid)


def open_trusted_bundle(path: str | Path, keys: Sequence[TrustedKey],
                        on_bytes: Callable[[int], None] | None = None) -> Bundle:
    """Open a bundle only if one of `keys` signed it, with every file checked against the signed manifest."""
    if not keys:
        raise ValueError("open_trusted_bundle: no trusted keys")
    check = check_signature(path, keys)
    if check.status is not SignatureStatus.TRUSTED:
        raise BundleSignatureError(f"refusing bundle: {check.detail}")
    bundle = open_bundle(path, verify=True, on_bytes=on_bytes)
    # open_bundle read manifest.json again: it must say what the verified bytes say, not a swapped file.
    signed = json.loads(check.manifest_bytes)
    if json.dumps(bundle.manifest, sort_keys=True) != json.dumps(signed, sort_keys=True):
        raise BundleSignatureError(f"refusing bundle: {Path(path) / MANIFEST_FILE} changed while it was checked")
    return bundle
