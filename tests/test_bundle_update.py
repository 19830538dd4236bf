"""Updating the bundle on a running device (nemotron_jetson.bundles): versioned folders that are never
modified once installed, an atomic switch of `current`, checks before the switch, pruning that spares the
current and mapped versions, and, end to end, the real `serve` on `current` while the real installer
switches it: the running stream completes, the service keeps serving its version until a drained restart
(SIGTERM, as systemd sends it), and the restarted service serves the new one."""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.bundle.reader import BundleError, open_bundle
from edge_runtime.bundle.signature import load_signing_key, load_trusted_keys, sign_bundle
from edge_runtime.client import EdgeError
from edge_runtime.engine.records import Final
from edge_server_process import ServerProcess
from nemotron_jetson.bundles import (LOCK_FILE, BundleStoreError, StoreOptions, install, mapped_versions,
                                     use)
from signing_keys import make_key_pair

LONG = 450  # tokens per stream: the tiny bundle's context holds them with the prompt


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("keys")
    return {name: make_key_pair(directory, name) for name in ("release", "other")}


def _signed_copy(source: Path, target: Path, private_key: Path) -> Path:
    shutil.copytree(source, target)
    sign_bundle(target, load_signing_key(private_key))
    return target


@pytest.fixture(scope="module")
def bundle_a(tiny_bundle: Path, keys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _signed_copy(tiny_bundle, tmp_path_factory.mktemp("a") / "bundle", keys["release"][0])


@pytest.fixture(scope="module")
def bundle_b(tiny_int4_bundle: Path, keys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _signed_copy(tiny_int4_bundle, tmp_path_factory.mktemp("b") / "bundle", keys["release"][0])


def _options(store: Path, keys=None, keep: int = 2) -> StoreOptions:
    trusted = load_trusted_keys([keys["release"][1]]) if keys else ()
    return StoreOptions(store, trusted, restart=False, keep=keep)


def _snapshot(folder: Path) -> dict[str, tuple[str, int, int]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns, p.stat().st_mode & 0o777)
            for p in sorted(folder.iterdir())}


def _jetson_bundle(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_runtime.cli", "jetson", "bundle", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


# ---- the store, in process ----------------------------------------------------------------------------------


def test_install_copies_into_a_version_folder_and_switches_current(bundle_a: Path, bundle_b: Path, keys,
                                                                   tmp_path: Path) -> None:
    store, out = tmp_path / "store", []
    assert install(bundle_a, _options(store, keys), "a", out.append) == "a"
    assert os.readlink(store / "current") == "bundles/a"  # relative: the store can move
    a = _snapshot(store / "bundles" / "a")
    assert set(a) == {p.name for p in bundle_a.iterdir()}  # manifest.sig travels with it
    assert all(mode == 0o444 for _, _, mode in a.values())
    assert {n: h for n, (h, _, _) in a.items()} == {n: h for n, (h, _, _) in _snapshot(bundle_a).items()}
    install(bundle_b, _options(store, keys), None, out.append)
    version_b = open_bundle(bundle_b).identity  # the default version name
    assert os.readlink(store / "current") == f"bundles/{version_b}"
    assert _snapshot(store / "bundles" / "a") == a  # an installed version is never touched again
    assert open_bundle(store / "current").identity == version_b
    assert sorted(p.name for p in (store / "bundles").iterdir()) == sorted(["a", version_b])
    assert f"{store / 'current'} -> bundles/{version_b} (was a)" in out
    # Installing the same content under the same name again only switches; other content is refused.
    install(bundle_a, _options(store, keys), "a", out.append)
    assert f"already installed: {store / 'bundles' / 'a'}" in out
    assert f"{store / 'current'} -> bundles/a (was {version_b})" in out
    with pytest.raises(BundleStoreError, match="version 'a' is installed with other content"):
        install(bundle_b, _options(store, keys), "a", out.append)


def test_use_switches_back_to_an_installed_version(bundle_a: Path, bundle_b: Path, keys, tmp_path: Path) -> None:
    store = tmp_path / "store"
    install(bundle_a, _options(store, keys), "a", lambda _: None)
    install(bundle_b, _options(store, keys), "b", lambda _: None)
    use("a", _options(store, keys), lambda _: None)
    assert os.readlink(store / "current") == "bundles/a"
    with pytest.raises(BundleStoreError, match=r"no such installed version \(installed: b, a\)"):
        use("c", _options(store, keys), lambda _: None)
    with pytest.raises(BundleStoreError, match="no such installed version"):
        use("../a", _options(store, keys), lambda _: None)


def _state(store: Path) -> dict[str, object]:
    """Every path under the store: a file's mtime, a link's target, a folder as such."""
    return {str(p.relative_to(store)):
            os.readlink(p) if p.is_symlink() else p.stat().st_mtime_ns if p.is_file() else "dir"
            for p in store.rglob("*")}


@pytest.mark.parametrize("case", ["unsigned", "other key", "changed file", "bad version", "current is a folder"])
def test_refused_installs_leave_the_store_as_it_was(bundle_a: Path, bundle_b: Path, tiny_bundle: Path, keys,
                                                   tmp_path: Path, case: str) -> None:
    store = tmp_path / "store"
    install(bundle_a, _options(store, keys), "a", lambda _: None)
    before = _state(store)
    source, version, error = bundle_b, "b", BundleError
    if case == "unsigned":
        source, message = tiny_bundle, "unsigned"
    elif case == "other key":
        source, message = _signed_copy(bundle_b, tmp_path / "other", keys["other"][0]), "signed by another key"
    elif case == "changed file":
        source = shutil.copytree(bundle_b, tmp_path / "changed")
        with (source / "weights.bin").open("r+b") as f:
            f.write(b"\0\0\0\0")
        message = "weights.bin: sha256 does not match"  # found in the copy, before anything is switched
    elif case == "bad version":
        version, error, message = "../b", BundleStoreError, "--version '../b'"
    else:
        os.unlink(store / "current")
        (store / "current").mkdir()
        before = _state(store)
        error, message = BundleStoreError, "exists and is not a symlink"
    with pytest.raises(error, match=message):
        install(source, _options(store, keys), version, lambda _: None)
    assert _state(store) == before  # no version folder, no partial copy, `current` unchanged


def test_prune_keeps_the_newest_the_current_and_any_mapped_version(bundle_a: Path, bundle_b: Path,
                                                                   tiny_bundle: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    install(bundle_a, _options(store, keep=1), "a", lambda _: None)
    with (store / "bundles" / "a" / "weights.bin").open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ):
        assert "a" in mapped_versions(store / "bundles")
        out: list[str] = []
        install(bundle_b, _options(store, keep=1), "b", out.append)
        install(tiny_bundle, _options(store, keep=1), "c", out.append)
        assert sorted(p.name for p in (store / "bundles").iterdir()) == ["a", "c"]  # a is mapped: kept
        assert out.count(f"removed old version {store / 'bundles' / 'b'}") == 1
    install(bundle_b, _options(store, keep=1), "d", lambda _: None)
    assert sorted(p.name for p in (store / "bundles").iterdir()) == ["d"]


def test_an_interrupted_install_is_cleaned_up_and_installs_do_not_overlap(bundle_a: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    leftover = store / "bundles" / ".a.partial-x1y2"
    leftover.mkdir(parents=True)
    (leftover / "weights.bin").write_bytes(b"half")
    out: list[str] = []
    install(bundle_a, _options(store), "a", out.append)
    assert not leftover.exists() and f"removed {leftover}, left by an interrupted install" in out
    with (store / LOCK_FILE).open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(BundleStoreError, match="another install or switch is running"):
            install(bundle_a, _options(store), "b", lambda _: None)


# ---- the command line -----------------------------------------------------------------------------------------


def test_cli_restarts_through_systemctl_unless_told_not_to(bundle_a: Path, bundle_b: Path, keys,
                                                           tmp_path: Path) -> None:
    # A stand-in for systemctl on PATH (systemd itself cannot run here): it records how it was called.
    fake = tmp_path / "bin" / "systemctl"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\n')
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:{os.environ['PATH']}"}
    store, pub = tmp_path / "store", str(keys["release"][1])
    result = _jetson_bundle("install", str(bundle_a), "--store", str(store), "--version", "a", "--trusted-key", pub,
                            env=env)
    assert result.returncode == 0, result.stderr
    assert "running requests drain first" in result.stdout
    assert (tmp_path / "calls").read_text() == "try-restart nemotron-edge.service\n"
    result = _jetson_bundle("install", str(bundle_b), "--store", str(store), "--version", "b", "--trusted-key", pub,
                            "--no-restart", env=env)
    assert result.returncode == 0, result.stderr
    assert "not restarted (--no-restart): a running service serves a until it restarts" in result.stdout
    assert (tmp_path / "calls").read_text() == "try-restart nemotron-edge.service\n"  # not called again
    fake.write_text("#!/bin/sh\nexit 3\n")
    result = _jetson_bundle("use", "a", "--store", str(store), "--trusted-key", pub, env=env)
    assert result.returncode == 1
    assert "`systemctl try-restart nemotron-edge.service` failed with exit code 3" in result.stderr
    refused = _jetson_bundle("install", str(bundle_b), "--store", str(store), "--trusted-key", str(keys["release"][0]),
                             "--no-restart")
    assert refused.returncode == 2 and f"{keys['release'][0]}: a private key" in refused.stderr
    doctor = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "doctor", "--bundle", str(store / "current")],
                            capture_output=True, text=True, timeout=180)
    line = next(l for l in doctor.stdout.splitlines() if "] bundle " in l)
    assert line.startswith("[PASS]") and f"{store / 'current'} -> {store.resolve() / 'bundles' / 'a'}" in line, line


# ---- end to end: the real service on `current` ----------------------------------------------------------------


def _stream_is_complete(events: list, tokens: int) -> Final:
    final = events[-1]
    assert isinstance(final, Final) and final.error is None, final
    assert final.finish_reason == "length" and final.usage.completion_tokens == tokens, final
    return final


def test_switching_current_under_a_running_service_then_a_drained_restart(bundle_a: Path, bundle_b: Path, keys,
                                                                          tmp_path: Path) -> None:
    store, pub = tmp_path / "store", str(keys["release"][1])
    installed = _jetson_bundle("install", str(bundle_a), "--store", str(store), "--version", "a", "--no-restart",
                               "--trusted-key", pub)
    assert installed.returncode == 0, installed.stderr
    identity_a, identity_b = open_bundle(bundle_a).identity, open_bundle(bundle_b).identity
    assert identity_a != identity_b
    serve_args = ("--trusted-key", pub, "--drain-grace", "120")
    with ServerProcess(tmp_path / "first", store / "current", *serve_args) as server:
        server.wait_serving()
        with server.client() as client:
            info = client.model_info()
            assert (info.bundle_id, info.bundle_hash) == ("a", identity_a)  # the version, not "current"
            greedy = {"temperature": 0.0}
            before = client.generate([1, 2, 3], sampling=greedy, max_tokens=32, ignore_eos=True).result().token_ids
            stream = iter(client.generate([4, 5, 6], max_tokens=LONG, ignore_eos=True))
            first = next(stream)  # generating
            # Frozen mid-generation (whatever this machine's speed), so the switch lands inside the stream.
            server.proc.send_signal(signal.SIGSTOP)
            try:
                switched = _jetson_bundle("install", str(bundle_b), "--store", str(store), "--version", "b",
                                          "--no-restart", "--trusted-key", pub)
            finally:
                server.proc.send_signal(signal.SIGCONT)
            assert switched.returncode == 0, switched.stderr
            assert os.readlink(store / "current") == "bundles/b"
            _stream_is_complete([first, *stream], LONG)
            # Still alive and still serving a, whose files nothing touched: every weight page is read again.
            assert server.proc.poll() is None, server.log()
            after = client.generate([1, 2, 3], sampling=greedy, max_tokens=32, ignore_eos=True).result().token_ids
            assert after == before
            info = client.model_info()
            assert (info.bundle_id, info.bundle_hash) == ("a", identity_a)
            # The restart, as `systemctl try-restart` does it: SIGTERM while requests run; they finish first.
            streams = [iter(client.generate([7, i], max_tokens=LONG, ignore_eos=True)) for i in range(4)]
            firsts = [next(s) for s in streams]
            server.proc.send_signal(signal.SIGSTOP)  # again frozen: SIGTERM is taken while all four run
            server.proc.send_signal(signal.SIGTERM)
            server.proc.send_signal(signal.SIGCONT)
            for first, rest in zip(firsts, streams):
                _stream_is_complete([first, *rest], LONG)
        assert server.wait(120) == 0, server.log()
        assert f"serving {store.resolve() / 'bundles' / 'a'} (bundle {identity_a})" in server.log()
    with ServerProcess(tmp_path / "second", store / "current", *serve_args) as server:
        server.wait_serving()
        with server.client() as client:
            info = client.model_info()
            assert (info.bundle_id, info.bundle_hash) == ("b", identity_b)
        assert server.terminate() == 0
        assert f"serving {store.resolve() / 'bundles' / 'b'} (bundle {identity_b})" in server.log()


def test_copying_over_the_served_folder_is_what_kills_a_service(tiny_bundle: Path, tmp_path: Path) -> None:
    """Why the versioned layout: the first thing `cp new/weights.bin live/` does is truncate the mapped file,
    and the next generation dies with SIGBUS."""
    live = shutil.copytree(tiny_bundle, tmp_path / "live")
    with ServerProcess(tmp_path / "run", live) as server:
        server.wait_serving()
        with server.client() as client:
            assert len(client.generate([1, 2, 3], max_tokens=8, ignore_eos=True).result().token_ids) == 8
            os.truncate(live / "weights.bin", 0)
            with pytest.raises(EdgeError):
                client.generate([1, 2, 3], max_tokens=8, ignore_eos=True).result()
        assert server.wait() == -signal.SIGBUS
