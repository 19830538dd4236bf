"""Install bundles on the device so that an update never changes a file the running service has mapped.

    nemotron-edge jetson bundle install BUNDLE [--version V] [--store DIR] [--no-restart] [--keep N]
    nemotron-edge jetson bundle use VERSION [--store DIR] [--no-restart]        (switch back: roll back)

Layout under the store (default /var/lib/nemotron-edge, the unit's StateDirectory):

    bundles/<version>/          one folder per installed bundle; never modified once installed
    current -> bundles/<version>    what the service serves: [model] bundle = "/var/lib/nemotron-edge/current"

The service maps weights.bin. Copying a new bundle over the folder it serves truncates that file under the
mapping and the service dies with SIGBUS. Here a new bundle is copied to a folder of its own (under a
temporary name), checked there (every file's sha256 against the manifest, and the signature when trusted
keys are configured), fsynced and renamed into place; then `current` is switched atomically (a new link
at a temporary name renamed over it). The service resolves `current` once, at start (commands/serve.py),
so it keeps reading the old version's untouched files until `systemctl try-restart` restarts it: systemd
sends SIGTERM, the service drains its running requests (service/server.py), and the new process serves the
new version. Old versions are pruned down to `--keep`, never the current one nor one that a process still
maps (/proc/*/maps).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.bundle.reader import MANIFEST_FILE, Bundle, BundleError, open_bundle
from edge_runtime.bundle.signature import (SIGNATURE_FILE, KeyFileError, SignatureStatus, TrustedKey,
                                           check_signature, load_trusted_keys, open_trusted_bundle)
from edge_runtime.service.config import ConfigError, load_config
from edge_runtime.bundle.units import format_bytes

DEFAULT_STORE = Path("/var/lib/nemotron-edge")
BUNDLES_DIR = "bundles"
CURRENT_LINK = "current"
LOCK_FILE = ".bundles.lock"
PARTIAL_MARK = ".partial-"
UNIT = "nemotron-edge.service"
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class BundleStoreError(RuntimeError):
    """A step of installing or switching failed; the message names the path or command and why."""


@dataclass(frozen=True)
class StoreOptions:
    store: Path = DEFAULT_STORE
    trusted_keys: tuple[TrustedKey, ...] = ()
    restart: bool = True  # systemctl try-restart after switching (drained: the unit's SIGTERM drains)
    keep: int = 2  # installed versions kept, the current one included

    @property
    def bundles(self) -> Path:
        return self.store / BUNDLES_DIR

    @property
    def current(self) -> Path:
        return self.store / CURRENT_LINK


def current_version(options: StoreOptions) -> str | None:
    """The version `current` points at, or None when there is no link yet."""
    try:
        target = os.readlink(options.current)
    except FileNotFoundError:
        return None
    except OSError:
        raise BundleStoreError(f"{options.current}: exists and is not a symlink; move it away (a bundle copied "
                               "there by hand?) so it can become the link to the installed version") from None
    return Path(target).name


def install(source: Path, options: StoreOptions, version: str | None = None, out=print) -> str:
    """Copy the bundle at `source` into a new version folder, check it, switch `current` to it, restart,
    prune. Returns the version name."""
    if options.keep < 1:
        raise BundleStoreError(f"--keep: must be at least 1 (the current version), got {options.keep}")
    bundle = _check_source(source, options)
    version = version or bundle.identity
    if not VERSION_NAME.fullmatch(version):
        raise BundleStoreError(f"--version {version!r}: use 1-100 letters, digits, '.', '_' or '-', not starting "
                               "with '.' or '-'")
    options.bundles.mkdir(parents=True, exist_ok=True)
    with _locked(options):
        current_version(options)  # refuses a `current` that is not a link before anything is copied
        _remove_partials(options, out)
        target = options.bundles / version
        if target.exists():
            installed = _open_checked(target, options, verify_files=False)
            if installed.identity != bundle.identity:
                raise BundleStoreError(f"{target}: version {version!r} is installed with other content "
                                       f"({installed.identity}, not {bundle.identity}); installed versions are "
                                       "never modified: choose another --version")
            out(f"already installed: {target}")
        else:
            _copy_in(bundle, target, options, out)
        _activate(version, options, out)
    return version


def use(version: str, options: StoreOptions, out=print) -> None:
    """Switch `current` to an installed version (after checking its signature when keys are configured)."""
    if not VERSION_NAME.fullmatch(version) or not (options.bundles / version).is_dir():
        installed = ", ".join(_versions(options)) or "none"
        raise BundleStoreError(f"{options.bundles / version}: no such installed version (installed: {installed})")
    with _locked(options):
        _open_checked(options.bundles / version, options, verify_files=False)
        _activate(version, options, out)


def _check_source(source: Path, options: StoreOptions) -> Bundle:
    """The source bundle's manifest, its signature checked (opening it refuses file entries that would leave
    the folder and sizes that disagree with the files, before the copy is sized from them)."""
    return _open_checked(source, options, verify_files=False)


def _open_checked(path: Path, options: StoreOptions, verify_files: bool) -> Bundle:
    if options.trusted_keys:
        if verify_files:
            return open_trusted_bundle(path, options.trusted_keys)
        check = check_signature(path, options.trusted_keys)
        if check.status is not SignatureStatus.TRUSTED:
            raise BundleError(f"refusing bundle: {check.detail}")
    return open_bundle(path, verify=verify_files)


def _copy_in(bundle: Bundle, target: Path, options: StoreOptions, out) -> None:
    names = [MANIFEST_FILE, *([SIGNATURE_FILE] if (bundle.path / SIGNATURE_FILE).exists() else []),
             *bundle.manifest["files"]]
    needed = sum(int(entry["bytes"]) for entry in bundle.manifest["files"].values())
    free = shutil.disk_usage(options.bundles).free
    if needed > free:
        raise BundleStoreError(f"{options.bundles}: {format_bytes(free)} free, the bundle needs "
                               f"{format_bytes(needed)}; remove old versions (--keep 1) or free space")
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}{PARTIAL_MARK}", dir=options.bundles))
    try:
        out(f"copying {bundle.path} ({format_bytes(needed)}) to {partial}")
        for name in names:
            _copy_file(bundle.path / name, partial / name)
        out("checking the copy: every file's sha256" + (" and the signature" if options.trusted_keys else ""))
        _open_checked(partial, options, verify_files=True)
        partial.chmod(0o755)  # mkdtemp makes it private; the service user reads it
        _fsync_dir(partial)
        os.rename(partial, target)
        _fsync_dir(options.bundles)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    out(f"installed {target}")


def _copy_file(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
    with target.open("rb") as f:
        os.fsync(f.fileno())
    target.chmod(0o444)  # read-only: an installed version is never modified


def _activate(version: str, options: StoreOptions, out) -> None:
    previous = current_version(options)
    _switch(version, options)
    out(f"{options.current} -> {BUNDLES_DIR}/{version}" + (f" (was {previous})" if previous else ""))
    if options.restart:
        out(f"systemctl try-restart {UNIT}: running requests drain first, then it serves {version}")
        _systemctl("try-restart", UNIT)
    elif previous and previous != version:
        out(f"not restarted (--no-restart): a running service serves {previous} until it restarts")
    _prune(options, out)


def _switch(version: str, options: StoreOptions) -> None:
    current_version(options)  # refuses a `current` that is not a link
    link = options.current
    temporary = options.store / f".{CURRENT_LINK}.{os.getpid()}.tmp"
    temporary.unlink(missing_ok=True)
    os.symlink(f"{BUNDLES_DIR}/{version}", temporary)  # relative: the store may be moved or mounted elsewhere
    os.replace(temporary, link)
    _fsync_dir(options.store)


def _prune(options: StoreOptions, out) -> None:
    versions = _versions(options)  # newest first
    keep = set(versions[:options.keep]) | {current_version(options)} | mapped_versions(options.bundles)
    for version in versions:
        if version not in keep:
            shutil.rmtree(options.bundles / version)
            out(f"removed old version {options.bundles / version}")


def _versions(options: StoreOptions) -> list[str]:
    """Installed versions, newest first."""
    if not options.bundles.is_dir():
        return []
    folders = [p for p in options.bundles.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]
    return [p.name for p in sorted(folders, key=lambda p: p.stat().st_mtime_ns, reverse=True)]


def mapped_versions(bundles: Path) -> set[str]:
    """Versions with a file mapped by some process (unreadable processes are skipped: root reads them all).
    Removing a mapped file would not crash its process (unlinking keeps the inode), but would keep its
    space in use and take away the version it runs."""
    prefix = str(bundles.resolve()) + "/"
    found: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith(prefix):
                found.add(fields[5][len(prefix):].split("/", 1)[0])
    return found


def _remove_partials(options: StoreOptions, out) -> None:
    """Folders left by an interrupted install (we hold the lock: no install is running)."""
    for p in options.bundles.iterdir():
        if p.name.startswith(".") and PARTIAL_MARK in p.name and p.is_dir():
            shutil.rmtree(p)
            out(f"removed {p}, left by an interrupted install")


@contextlib.contextmanager
def _locked(options: StoreOptions) -> Iterator[None]:
    """One install or switch at a time per store."""
    path = options.store / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BundleStoreError(f"{path}: another install or switch is running on this store") from None
        yield
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _systemctl(*args: str) -> None:
    command = ["systemctl", *args]
    try:
        subprocess.run(command, check=True)
    except FileNotFoundError:
        raise BundleStoreError("systemctl not found: restart the service yourself, or pass --no-restart") from None
    except subprocess.CalledProcessError as e:
        raise BundleStoreError(f"`{' '.join(command)}` failed with exit code {e.returncode} (journalctl -u {UNIT}; "
                               "roll back with `nemotron-edge jetson bundle use VERSION`)") from None


# ---- command line -------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bundle_command", metavar="BUNDLE_COMMAND", required=True)
    p = sub.add_parser("install", help="copy a bundle into a new version folder, check it, switch `current` to it")
    p.add_argument("source", type=Path, help="the exported bundle directory")
    p.add_argument("--version", help="name of the version folder (default: the bundle's identity, 16 hex digits)")
    p.add_argument("--keep", type=int, default=2,
                   help="installed versions to keep, the current one included (default 2)")
    _common(p)
    p = sub.add_parser("use", help="switch `current` to an installed version (roll back) and restart the service")
    p.add_argument("version", help="an installed version: a folder name under STORE/bundles")
    _common(p)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", type=Path, default=DEFAULT_STORE,
                   help=f"where bundles/ and current live (default {DEFAULT_STORE})")
    p.add_argument("--config", type=Path, default=None,
                   help="service config whose [model] trusted_keys are checked "
                        "(default: /etc/nemotron-edge/config.toml if it exists)")
    p.add_argument("--trusted-key", action="append", default=[], metavar="PUB",
                   help="Ed25519 public key (PEM) the bundle must be signed by, repeatable (default: the config's)")
    p.add_argument("--no-restart", dest="restart", action="store_false",
                   help="switch only; the running service keeps its version until it restarts")


def run_command(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        keys = load_trusted_keys(args.trusted_key or config.trusted_keys)
        options = StoreOptions(args.store, keys, args.restart, getattr(args, "keep", 2))
        if config.bundle is not None and config.bundle != options.current:
            print(f"note: the service config serves {config.bundle}, not {options.current}: set "
                  f'[model] bundle = "{options.current}" to serve what is installed here', file=sys.stderr)
        if args.bundle_command == "install":
            install(args.source, options, args.version)
        else:
            use(args.version, options)
    except (BundleError, KeyFileError, ConfigError) as e:
        print(f"nemotron-edge jetson bundle: {e}", file=sys.stderr)
        return 2
    except BundleStoreError as e:
        print(f"nemotron-edge jetson bundle: {e}", file=sys.stderr)
        return 1
    except PermissionError as e:
        print(f"nemotron-edge jetson bundle: {e.filename}: permission denied (run as root)", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"nemotron-edge jetson bundle: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return 1
    return 0
