"""The partial directory of an export and its progress journal: what `nemotron-edge export --resume` continues.

An export works in `<out>.partial/` and renames it to `<out>` once complete, so a directory that looks
like a bundle is one. After each unit of weights.bin it finishes (the embedding table, a layer, the head)
and, for int4, each layer its sensitivity pass measures, the exporter syncs weights.bin and replaces
`resume/journal.json` atomically: the counts done, weights.bin's length and weight table so far, the
int4 measurements, and the export's identity (options, exporter version, checkpoint and tokenizer files)
that a resume must match. Hidden states a calibration pass carries into the next layer are saved beside
it (`resume/<pass>-<layer>.npy`) before the journal that counts the layer, and the previous layer's are
deleted after it. A resume truncates weights.bin to the journal's length: whatever a killed run wrote
after its last journal entry is written again. An flock on `resume/` keeps a second export out of a
partial directory in use.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bundle.reader import WEIGHTS_FILE

RESUME_DIR, JOURNAL_FILE = "resume", "journal.json"
JOURNAL_VERSION = 1
MAX_JOURNAL_BYTES = 64 << 20  # a 9B int4 journal is well under 1 MB


class ResumeError(ValueError):
    """A partial export that cannot be continued; the message says why and what to do."""


@dataclass
class Journal:
    """`units_done`: units of weights.bin written (embedding table, layers, head); `weights_bytes`,
    `tensors`, `blocks`: weights.bin's length and table after them; `measured`, `costs`: layers of int4's
    sensitivity pass done and their projections' costs (nemotron_export.calibrate.ProjectionCost.to_dict)."""

    identity: dict[str, Any]
    units_done: int = 0
    weights_bytes: int = 0
    tensors: dict[str, dict] = field(default_factory=dict)
    blocks: dict[str, dict] = field(default_factory=dict)
    measured: int = 0
    costs: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> "Journal":
        if not path.is_file():
            raise ResumeError(f"{path}: missing; the partial export cannot be continued: delete "
                              f"{path.parent.parent} and export again")
        if path.stat().st_size > MAX_JOURNAL_BYTES:
            raise ResumeError(f"{path}: {path.stat().st_size} bytes, more than a journal holds "
                              f"({MAX_JOURNAL_BYTES}); delete {path.parent.parent} and export again")
        try:
            raw = json.loads(path.read_text())
            if raw.pop("version") != JOURNAL_VERSION:
                raise ValueError("unknown journal version")
            journal = cls(**raw)
            ints = (journal.units_done, journal.weights_bytes, journal.measured)
            if not all(type(v) is int and v >= 0 for v in ints) or not all(
                    isinstance(d, dict) for d in (journal.identity, journal.tensors, journal.blocks, journal.costs)):
                raise ValueError("a count is not a non-negative integer or a table is not an object")
            for name, entry in journal.tensors.items():
                offset, nbytes = entry.get("offset"), entry.get("nbytes")
                if not (type(offset) is int and type(nbytes) is int and 0 <= offset
                        and 0 <= nbytes <= journal.weights_bytes - offset):
                    raise ValueError(f"tensor {name} is not within the {journal.weights_bytes} bytes journaled")
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as e:
            raise ResumeError(f"{path}: not a valid export journal ({e}); delete {path.parent.parent} "
                              "and export again") from None
        return journal

    def write(self, path: Path) -> None:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # asdict() would deep-copy
        _write_atomically(path, json.dumps({"version": JOURNAL_VERSION, **fields}).encode())


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def first_difference(old: Any, new: Any, path: str = "") -> str | None:
    """Where two JSON values first differ ("options.weights.kind: 'int8' there, 'int4' now"), or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if key not in old or key not in new:
                return f"{path}{key}: {'absent' if key not in old else 'present'} there, " \
                       f"{'absent' if key not in new else 'present'} now"
            found = first_difference(old[key], new[key], f"{path}{key}.")
            if found:
                return found
        return None
    return None if old == new else f"{path.rstrip('.')}: {old!r} there, {new!r} now"


class PartialExport:
    """`<out>.partial/` of an export in progress, locked while open (`start` ... `close`); `weights_fd`:
    its weights.bin, open for writing."""

    def __init__(self, path: Path, journal: Journal, lock_fd: int, weights_fd: int):
        self.path, self.journal, self._lock_fd, self.weights_fd = path, journal, lock_fd, weights_fd

    @classmethod
    def start(cls, out: Path, identity: dict[str, Any], resume: bool) -> "PartialExport":
        """A new partial directory for `out`, or with `resume` the one there, checked against `identity`
        (a fresh one when there is none); without `resume` an existing one is refused (hours of int4
        calibration may be in it)."""
        path = partial_path(out)
        if not path.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=out.parent))
            try:
                tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is read by the service user
                (tmp / RESUME_DIR).mkdir()
                Journal(identity).write(tmp / RESUME_DIR / JOURNAL_FILE)
                (tmp / WEIGHTS_FILE).touch()
                os.rename(tmp, path)  # the directory appears with its journal or not at all
            except OSError as e:
                shutil.rmtree(tmp, ignore_errors=True)
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise FileExistsError(f"{path}: another export of {out.name} began meanwhile") from None
                raise
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        elif not resume:
            raise FileExistsError(f"{path}: an interrupted export of {out.name} is there; continue it with "
                                  "--resume, or delete it")
        lock_fd = cls._lock(path)
        try:
            journal = Journal.read(path / RESUME_DIR / JOURNAL_FILE)
            difference = first_difference(journal.identity, identity)
            if difference:
                raise ResumeError(f"--resume: {path} holds an export begun with other options or from another "
                                  f"checkpoint ({difference}); resume with the same ones, or delete it")
            size = (path / WEIGHTS_FILE).stat().st_size if (path / WEIGHTS_FILE).exists() else -1
            if size < journal.weights_bytes:
                raise ResumeError(f"{path / WEIGHTS_FILE}: {max(size, 0)} bytes, the journal counts "
                                  f"{journal.weights_bytes}; the partial export is damaged: delete {path}")
            weights_fd = os.open(path / WEIGHTS_FILE, os.O_RDWR)
            os.ftruncate(weights_fd, journal.weights_bytes)
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(path, journal, lock_fd, weights_fd)

    @staticmethod
    def _lock(path: Path) -> int:
        fd = os.open(path / RESUME_DIR, os.O_RDONLY) if (path / RESUME_DIR).is_dir() else -1
        if fd < 0:
            raise ResumeError(f"{path}: no {RESUME_DIR}/ journal; the partial export cannot be continued: "
                              "delete it and export again")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ResumeError(f"{path}: another export is writing it") from None
        return fd

    def commit(self, carry: tuple[str, int, np.ndarray] | None = None, drop: tuple[str, int] | None = None) -> None:
        """Record the journal as it is now, after weights.bin's bytes are on disk: `carry` (pass, layer,
        hidden states entering that layer) saved before it, `drop` (pass, layer) deleted after it."""
        os.fsync(self.weights_fd)
        if carry is not None:
            name, layer, array = carry
            buffer = self.path / RESUME_DIR / f"{name}-{layer}.npy.tmp"
            with buffer.open("wb") as f:
                np.save(f, array)
                f.flush()
                os.fsync(f.fileno())
            os.replace(buffer, self._state(name, layer))
        self.journal.write(self.path / RESUME_DIR / JOURNAL_FILE)
        if drop is not None:
            self._state(*drop).unlink(missing_ok=True)

    def carried(self, name: str, layer: int, shape: tuple[int, ...]) -> np.ndarray:
        """The float32 hidden states [`shape`] a pass saved for `layer`, checked before they are read."""
        path = self._state(name, layer)
        try:
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
            if mapped.shape != shape or mapped.dtype != np.float32:
                raise ValueError(f"{mapped.dtype}{list(mapped.shape)}, expected float32{list(shape)}")
            return np.array(mapped)
        except (OSError, ValueError) as e:
            raise ResumeError(f"{path}: unreadable ({e}); the partial export is damaged: delete {self.path}") from None

    def _state(self, name: str, layer: int) -> Path:
        return self.path / RESUME_DIR / f"{name}-{layer}.npy"

    def finish(self, out: Path) -> Path:
        """The journal goes, then the directory becomes `out`."""
        shutil.rmtree(self.path / RESUME_DIR)
        os.replace(self.path, out)
        return out

    def clear_outputs(self) -> None:
        """Delete every file but weights.bin: what a run that stopped after the weights may have left
        (graphs, tokenizer, manifest, signature) is written again."""
        for p in self.path.iterdir():
            if p.is_file() and p.name != WEIGHTS_FILE:
                p.unlink()

    def close(self) -> None:
        for fd in (self.weights_fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self.weights_fd = self._lock_fd = -1

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
