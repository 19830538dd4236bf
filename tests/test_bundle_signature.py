"""Signed bundles with real Ed25519 keys (made by openssl when installed): the exporter signs, the device
accepts a bundle only when a trusted key verifies it, and every other case is refused by name: unsigned,
signed by another key, a manifest edited and re-sealed (manifest_sha256 recomputed, which anyone can do),
a file changed under an intact signature, a malformed manifest.sig, a bad key file. In process, then
through the real CLI (export, generate, chat, serve, doctor) in subprocesses."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edge_runtime.bundle.reader import BundleError, manifest_digest, open_bundle
from edge_runtime.bundle.signature import (SIGNATURE_FILE, BundleSignatureError, KeyFileError, SignatureStatus,
                                           check_signature, key_id, load_signing_key, load_trusted_key,
                                           load_trusted_keys, open_trusted_bundle, sign_bundle)
from edge_runtime.engine.engine import Engine, EngineConfig
from edge_runtime.engine.records import GenerationRequest
from edge_runtime.engine.sampler import SamplingParams
from edge_server_process import ServerProcess
from signing_keys import OPENSSL, make_key_pair


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_runtime.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("keys")
    return {name: make_key_pair(directory, name) for name in ("release", "other")}


@pytest.fixture(scope="module")
def signed_bundle(tiny_checkpoint: Path, keys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nemotron_export.bundle import ExportOptions, export_bundle

    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("signed") / "bundle", ExportOptions(max_context=512),
                         progress=False, signing_key=load_signing_key(keys["release"][0]))


@pytest.fixture(scope="module")
def resealed_bundle(signed_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The signed bundle with a manifest value changed and manifest_sha256 recomputed: the seal holds."""
    bundle = shutil.copytree(signed_bundle, tmp_path_factory.mktemp("resealed") / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["limits"]["max_context"] = 256
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return bundle


@pytest.fixture(scope="module")
def changed_weights_bundle(signed_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The signed bundle with one byte of weights.bin changed (same size), manifest and signature intact."""
    bundle = shutil.copytree(signed_bundle, tmp_path_factory.mktemp("changed") / "bundle")
    with (bundle / "weights.bin").open("r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    return bundle


def trusted(keys, *names: str):
    return load_trusted_keys([keys[n][1] for n in names])


def test_export_signs_the_manifest_bytes_and_the_signature_is_not_in_the_manifest(signed_bundle: Path, keys) -> None:
    manifest = json.loads((signed_bundle / "manifest.json").read_text())
    assert SIGNATURE_FILE not in manifest["files"]
    assert set(manifest["files"]) == {p.name for p in signed_bundle.iterdir()} - {"manifest.json", SIGNATURE_FILE}
    release = load_trusted_key(keys["release"][1])
    check = check_signature(signed_bundle, [release])
    assert check.status is SignatureStatus.TRUSTED and check.key_id == release.key_id == key_id(release.key)
    assert check.trusted_by == keys["release"][1]
    assert open_trusted_bundle(signed_bundle, [release]).identity == open_bundle(signed_bundle).identity
    # Nothing of ours is needed to check it: openssl verifies the decoded signature over manifest.json.
    if OPENSSL:
        record = json.loads((signed_bundle / SIGNATURE_FILE).read_text())
        raw = signed_bundle.parent / "manifest.sig.raw"
        raw.write_bytes(base64.b64decode(record["signature"]))
        result = subprocess.run([OPENSSL, "pkeyutl", "-verify", "-pubin", "-inkey", str(keys["release"][1]), "-rawin",
                                 "-in", str(signed_bundle / "manifest.json"), "-sigfile", str(raw)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "Signature Verified Successfully" in result.stdout, result.stdout


def test_signed_by_another_key_is_refused_naming_both(signed_bundle: Path, keys) -> None:
    with pytest.raises(BundleSignatureError) as e:
        open_trusted_bundle(signed_bundle, trusted(keys, "other"))
    message = str(e.value)
    assert "signed by another key" in message and str(signed_bundle) in message and str(keys["other"][1]) in message
    # Trusting both keys accepts it: any one trusted key is enough.
    assert check_signature(signed_bundle, trusted(keys, "other", "release")).status is SignatureStatus.TRUSTED


def test_unsigned_bundle_is_refused(tiny_bundle: Path, keys) -> None:
    with pytest.raises(BundleSignatureError, match=r"unsigned \(no manifest.sig\)") as e:
        open_trusted_bundle(tiny_bundle, trusted(keys, "release"))
    assert str(tiny_bundle) in str(e.value)


def test_resealed_manifest_passes_the_seal_but_not_the_signature(resealed_bundle: Path, keys) -> None:
    assert open_bundle(resealed_bundle).limits["max_context"] == 256  # manifest_sha256 alone is fooled
    with pytest.raises(BundleSignatureError) as e:
        open_trusted_bundle(resealed_bundle, trusted(keys, "release"))
    assert "signature invalid" in str(e.value) and str(resealed_bundle / "manifest.json") in str(e.value)


def test_a_file_changed_under_an_intact_signature_is_refused(changed_weights_bundle: Path, keys) -> None:
    release = trusted(keys, "release")
    assert check_signature(changed_weights_bundle, release).status is SignatureStatus.TRUSTED
    # The signature covers weights.bin through its sha256 in the manifest: files are always checked.
    with pytest.raises(BundleError, match=r"weights.bin: sha256 does not match the manifest"):
        open_trusted_bundle(changed_weights_bundle, release)
    with pytest.raises(BundleError, match=r"weights.bin: sha256 does not match the manifest"):
        Engine(changed_weights_bundle, EngineConfig(verify_bundle=False, trusted_keys=release))


def test_a_manifest_swapped_between_the_check_and_the_load_is_refused(signed_bundle: Path, resealed_bundle: Path,
                                                                      keys, tmp_path: Path, monkeypatch) -> None:
    from edge_runtime.bundle import signature as bundle_signature

    bundle = shutil.copytree(signed_bundle, tmp_path / "bundle")
    load = bundle_signature.open_bundle

    def swap_then_load(path, **kwargs):  # the race: the re-sealed manifest lands right after the check
        shutil.copyfile(resealed_bundle / "manifest.json", bundle / "manifest.json")
        return load(path, **kwargs)

    monkeypatch.setattr(bundle_signature, "open_bundle", swap_then_load)
    with pytest.raises(BundleSignatureError, match="manifest.json changed while it was checked"):
        open_trusted_bundle(bundle, trusted(keys, "release"))


def _forged(keys) -> str:
    """A signature by the other key, labelled with the release key's id."""
    other = load_signing_key(keys["other"][0])
    return json.dumps({"algorithm": "ed25519", "key_id": load_trusted_key(keys["release"][1]).key_id,
                       "signature": base64.b64encode(other.sign(b"anything")).decode()})


@pytest.mark.parametrize(("content", "status", "message"), [
    (lambda keys: "not json", SignatureStatus.MALFORMED, "not JSON"),
    (lambda keys: "x" * 5000, SignatureStatus.MALFORMED, "larger than 4096 bytes"),
    (lambda keys: json.dumps({"algorithm": "rsa", "key_id": "0" * 16, "signature": ""}), SignatureStatus.MALFORMED,
     "algorithm 'rsa'"),
    (lambda keys: json.dumps({"algorithm": "ed25519", "key_id": "0" * 16, "signature": "AAAA"}),
     SignatureStatus.MALFORMED, "signature must be 64 bytes"),
    (lambda keys: json.dumps({"algorithm": "ed25519", "key_id": "ZZ", "signature": "AAAA"}),
     SignatureStatus.MALFORMED, "key_id must be 16"),
    (lambda keys: json.dumps([1, 2]), SignatureStatus.MALFORMED, "exactly algorithm, key_id and signature"),
    (_forged, SignatureStatus.INVALID, "signature invalid"),
])
def test_bad_signature_files_are_refused_by_name(signed_bundle: Path, keys, tmp_path: Path, content, status,
                                                 message: str) -> None:
    bundle = shutil.copytree(signed_bundle, tmp_path / "bundle")
    (bundle / SIGNATURE_FILE).write_text(content(keys))
    check = check_signature(bundle, trusted(keys, "release"))
    assert check.status is status and message in check.detail, check.detail
    with pytest.raises(BundleSignatureError, match="refusing bundle"):
        open_trusted_bundle(bundle, trusted(keys, "release"))


def _rsa_pem(public: bool) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if public:
        return key.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.mark.parametrize(("loader", "content", "message"), [
    ("trusted", "private", "a private key; trust the public key instead"),
    ("trusted", b"garbage", "not a readable PEM public key"),
    ("trusted", b"x" * 20000, "larger than 16384 bytes"),
    ("trusted", "rsa-public", "not an Ed25519 key"),
    ("trusted", None, "no such public key file"),
    ("signing", "public", "not a PEM private key (this is a public key"),
    ("signing", "rsa-private", "not an Ed25519 key"),
    ("signing", "encrypted", "the private key is encrypted"),
    ("signing", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a readable PEM private key"),
])
def test_key_file_errors_name_the_file_and_the_problem(keys, tmp_path: Path, loader: str, content, message: str) -> None:
    path = tmp_path / "key.pem"
    sources = {"private": lambda: keys["release"][0].read_bytes(), "public": lambda: keys["release"][1].read_bytes(),
               "rsa-public": lambda: _rsa_pem(True), "rsa-private": lambda: _rsa_pem(False),
               "encrypted": lambda: load_signing_key(keys["release"][0]).private_bytes(
                   serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                   serialization.BestAvailableEncryption(b"passphrase"))}
    if content is not None:
        path.write_bytes(sources[content]() if isinstance(content, str) else content)
    with pytest.raises(KeyFileError) as e:
        (load_trusted_key if loader == "trusted" else load_signing_key)(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)


def test_sign_bundle_replaces_the_signature_atomically(signed_bundle: Path, keys, tmp_path: Path) -> None:
    bundle = shutil.copytree(signed_bundle, tmp_path / "bundle")
    kid = sign_bundle(bundle, load_signing_key(keys["other"][0]))
    assert kid == load_trusted_key(keys["other"][1]).key_id
    assert sorted(p.name for p in bundle.iterdir()) == sorted(p.name for p in signed_bundle.iterdir())  # no temp left
    assert check_signature(bundle, trusted(keys, "other")).status is SignatureStatus.TRUSTED
    assert check_signature(bundle, trusted(keys, "release")).status is SignatureStatus.UNTRUSTED_KEY


def test_engine_loads_only_trusted_bundles(signed_bundle: Path, tiny_bundle: Path, keys) -> None:
    engine = Engine(signed_bundle, EngineConfig(trusted_keys=trusted(keys, "release")))
    final = engine.generate(GenerationRequest([1, 2, 3], SamplingParams(greedy=True), max_tokens=4, ignore_eos=True))
    assert final.finish_reason == "length" and len(final.token_ids) == 4
    with pytest.raises(BundleSignatureError, match="unsigned"):
        Engine(tiny_bundle, EngineConfig(trusted_keys=trusted(keys, "release")))


# ---- the real command line ----------------------------------------------------------------------------------


def test_cli_export_signs_and_refuses_a_bad_key_before_exporting(tiny_checkpoint: Path, keys, tmp_path: Path) -> None:
    result = cli("export", str(tiny_checkpoint), "--out", str(tmp_path / "b"), "--max-context", "256",
                 "--sign-key", str(keys["release"][0]))
    assert result.returncode == 0, result.stderr
    release = load_trusted_key(keys["release"][1])
    assert f"signed by key {release.key_id}" in result.stdout
    assert check_signature(tmp_path / "b", [release]).status is SignatureStatus.TRUSTED
    result = cli("export", str(tiny_checkpoint), "--out", str(tmp_path / "c"), "--sign-key", str(keys["release"][1]))
    assert result.returncode == 2 and f"{keys['release'][1]}: not a PEM private key" in result.stderr, result.stderr
    assert not (tmp_path / "c").exists() and "Traceback" not in result.stderr


@pytest.mark.parametrize(("bundle", "key", "code", "message"), [
    ("signed", "release", 0, None),
    ("signed", "other", 2, "signed by another key"),
    ("unsigned", "release", 2, "unsigned (no manifest.sig)"),
    ("resealed", "release", 2, "signature invalid"),
    ("changed", "release", 2, "weights.bin: sha256 does not match"),
    ("signed", "missing", 2, "no such public key file"),
])
def test_cli_generate_checks_the_signature(request, keys, tmp_path: Path, bundle: str, key: str, code: int,
                                           message: str | None) -> None:
    path = {"signed": "signed_bundle", "unsigned": "tiny_bundle", "resealed": "resealed_bundle",
            "changed": "changed_weights_bundle"}[bundle]
    key_file = keys[key][1] if key in keys else tmp_path / "missing.pub"
    result = cli("generate", "--bundle", str(request.getfixturevalue(path)), "--trusted-key", str(key_file),
                 "--token-ids", "1,2,3", "--max-new-tokens", "4", "--json")
    assert result.returncode == code, result.stdout + result.stderr
    if message is None:
        assert json.loads(result.stdout)["finish_reason"] in ("length", "stop")
    else:
        assert result.stderr.startswith("nemotron-edge generate: ") and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_cli_chat_checks_the_signature_in_process(signed_bundle: Path, tiny_bundle: Path, keys) -> None:
    ok = cli("chat", "--bundle", str(signed_bundle), "--trusted-key", str(keys["release"][1]), "hi",
             "--max-tokens", "8", "--json")
    assert ok.returncode == 0, ok.stderr
    refused = cli("chat", "--bundle", str(tiny_bundle), "--trusted-key", str(keys["release"][1]), "hi", "--json")
    assert refused.returncode == 2 and "unsigned" in refused.stderr, refused.stderr
    remote = cli("chat", "--server", "unix:/nonexistent.sock", "--trusted-key", str(keys["release"][1]), "hi")
    assert remote.returncode == 2 and "--trusted-key: checks a bundle loaded in process" in remote.stderr


def test_serve_with_a_trusted_key_serves_a_signed_bundle(signed_bundle: Path, keys, tmp_path: Path) -> None:
    with ServerProcess(tmp_path, signed_bundle, "--trusted-key", str(keys["release"][1])) as server:
        server.wait_serving()
        with server.client() as client:
            assert client.model_info().bundle_hash == open_bundle(signed_bundle).identity
        assert server.terminate() == 0


def test_serve_refuses_untrusted_bundles_from_flag_and_config(signed_bundle: Path, tiny_bundle: Path, keys,
                                                              tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "flag", tiny_bundle, "--trusted-key", str(keys["release"][1])) as server:
        assert server.wait() == 1
        assert "unsigned (no manifest.sig)" in server.log(), server.log()
    config = tmp_path / "config.toml"
    config.write_text(f'[model]\ntrusted_keys = ["{keys["other"][1]}"]\n')
    with ServerProcess(tmp_path / "config", signed_bundle, "--config", str(config)) as server:
        assert server.wait() == 1
        assert "signed by another key" in server.log(), server.log()
    # A key file that cannot be read is a setting error, found before anything is loaded.
    with ServerProcess(tmp_path / "bad", signed_bundle, "--trusted-key", str(keys["release"][0])) as server:
        assert server.wait() == 2
        assert f"{keys['release'][0]}: a private key" in server.log()


def test_doctor_reports_who_signed_the_bundle(signed_bundle: Path, keys, tmp_path: Path) -> None:
    def doctor(key: str | None) -> tuple[int, str]:
        config = tmp_path / f"{key}.toml"
        config.write_text(f'[model]\ntrusted_keys = ["{keys[key][1]}"]\n' if key else "")
        result = cli("doctor", "--config", str(config), "--bundle", str(signed_bundle), timeout=180)
        line = next(l for l in result.stdout.splitlines() if "] bundle " in l)
        return result.returncode, line

    code, line = doctor("release")
    assert line.startswith("[PASS]") and f"signed by trusted key {keys['release'][1]}" in line, line
    code, line = doctor("other")
    assert code == 1 and line.startswith("[FAIL]") and "signed by another key" in line, line
    code, line = doctor(None)
    release_id = load_trusted_key(keys["release"][1]).key_id
    assert line.startswith("[PASS]") and f"signed by key {release_id}, not checked" in line, line
