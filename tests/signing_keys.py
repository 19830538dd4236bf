"""Test helper: Ed25519 key pairs as PEM files, made by `openssl` when it is installed (the commands the
README gives users), else by cryptography writing the same formats (PKCS#8 private, SubjectPublicKeyInfo
public)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

OPENSSL = shutil.which("openssl")


def make_key_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """(private key file, public key file) under `directory`."""
    private, public = directory / f"{name}.pem", directory / f"{name}.pub"
    directory.mkdir(parents=True, exist_ok=True)
    if OPENSSL:
        subprocess.run([OPENSSL, "genpkey", "-algorithm", "ed25519", "-out", str(private)], check=True)
        subprocess.run([OPENSSL, "pkey", "-in", str(private), "-pubout", "-out", str(public)], check=True)
        return private, public
    key = Ed25519PrivateKey.generate()
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public
