"""An interrupted export leaves no bundle, and `export --resume` finishes it to the same bytes.

- SIGKILL: an int4 export (sensitivity pass, then GPTQ carrying the calibration rows' hidden states from
  layer to layer) of a 16-layer checkpoint of tiny widths, run by the CLI in a subprocess, is killed once
  its journal shows layers measured, resumed (`--resume`) and killed again once it shows layers written,
  then resumed to the end: every file is byte-identical to an uninterrupted export's. After each kill
  there is no --out directory, only `<out>.partial/` with its journal.
- A failure (an exception, Ctrl-C) at each stage of an export, once the stage has done its work: no --out
  directory; the partial directory is removed when no unit of weights.bin was finished yet, else kept,
  and --resume completes it to the bytes of an uninterrupted export.
- Refusals, each saying what to do: a partial directory without --resume; --resume with other options
  or from another checkpoint; a damaged journal (cut, a tensor outside weights.bin, more layers than the
  model); saved hidden states of the wrong shape; weights.bin shorter than its journal; a partial
  directory another export holds.
- Streaming: the bytes do not depend on the block of rows the embedding table and lm_head are read and
  converted in (the real model's take 18 blocks each).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from nemotron_export import bundle as bundle_mod
from nemotron_export import weights_file
from nemotron_export.bundle import ExportOptions, export_bundle
from nemotron_export.journal import JOURNAL_FILE, RESUME_DIR, ResumeError, partial_path
from nemotron_export.onnx_graph import WeightFormat
from nemotron_export.synth import PRESETS, random_weights, write_checkpoint
from nemotron_export.threads import one_torch_thread
from nemotron_export.weights_file import WeightsWriter

BIN = Path(sys.executable).parent / "nemotron-edge"
DEEP = replace(PRESETS["tiny"], pattern=PRESETS["tiny"].pattern * 2)  # 16 layers: room to kill between them
# One torch thread in every export subprocess: the same arithmetic in each (so the same GPTQ codes), and
# no oversubscribed cores on a small machine.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
KILL_DEADLINE_S = 600  # only so that a hung export cannot hang the suite; no verdict depends on it


def hashes(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name in (name, f"{name}.partial")
                  or p.name.startswith(f".{name}.partial"))


def journal_of(out: Path) -> dict:
    return json.loads((partial_path(out) / RESUME_DIR / JOURNAL_FILE).read_text())


# ---- SIGKILL and --resume, through the CLI ----------------------------------------------------------------


@pytest.fixture(scope="module")
def deep_checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("deep") / "ckpt", DEEP, random_weights(DEEP, seed=4), None)


def export_command(ckpt: Path, out: Path, *extra: str) -> list[str]:
    cmd = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "edge_runtime.cli"]
    return [*cmd, "export", str(ckpt), "--out", str(out), "--weights", "int4", "--calibration", "random", *extra]


def kill_when(cmd: list[str], out: Path, condition) -> dict:
    """Run `cmd` and SIGKILL it as soon as its journal meets `condition`; returns that journal."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    journal = partial_path(out) / RESUME_DIR / JOURNAL_FILE
    deadline = time.monotonic() + KILL_DEADLINE_S
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                seen = json.loads(journal.read_text())  # replaced atomically: a whole journal or none
            except (FileNotFoundError, json.JSONDecodeError):
                seen = None
            if seen is not None and condition(seen):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return seen
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    pytest.fail(f"the export ended (exit {proc.returncode}) before its journal met the condition")


def test_sigkill_twice_then_resume_gives_the_uninterrupted_bytes(deep_checkpoint, tmp_path):
    """The uninterrupted export and the last resume run in-process (one torch thread too: same arithmetic),
    the two killed ones through the CLI."""
    options = ExportOptions(WeightFormat("int4"), calibration="random")
    with one_torch_thread():
        reference = export_bundle(deep_checkpoint, tmp_path / "reference", options, progress=False)
    out = tmp_path / "bundle"
    layers = DEEP.num_layers

    seen = kill_when(export_command(deep_checkpoint, out), out, lambda j: j["measured"] >= 3)
    assert not out.exists() and partial_path(out).is_dir()
    after = journal_of(out)
    assert 3 <= after["measured"] < layers and after["units_done"] == 0, (seen, after)

    seen = kill_when(export_command(deep_checkpoint, out, "--resume"), out, lambda j: j["units_done"] >= 4)
    assert not out.exists()
    after = journal_of(out)
    assert after["measured"] == layers and 4 <= after["units_done"] < layers + 2, (seen, after)
    assert os.path.getsize(partial_path(out) / "weights.bin") >= after["weights_bytes"]

    with one_torch_thread():
        export_bundle(deep_checkpoint, out, options, progress=False, resume=True)
    assert not partial_path(out).exists()
    assert hashes(out) == hashes(reference)


# ---- failures at each stage, in-process --------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny checkpoint without tokenizer."""
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "base", PRESETS["tiny"], random_weights(PRESETS["tiny"], 5),
                            None)


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory) -> dict[str, str]:
    return hashes(export_bundle(base, tmp_path_factory.mktemp("ref") / "bundle", progress=False))


STAGES = {  # the steps of an export once its partial directory exists, and where each is looked up
    "embedding": (WeightsWriter, "embedding"),  # the first unit of weights.bin: nothing finished before it
    "layer": (WeightsWriter, "layer"),  # failing at the third layer, written but not yet journaled
    "head": (WeightsWriter, "head"),
    "build_graphs": (bundle_mod, "build_graphs"),
    "save_model": (bundle_mod.onnx, "save_model"),
    "_copy_tokenizer": (bundle_mod, "_copy_tokenizer"),
    "_manifest": (bundle_mod, "_manifest"),
    "write_manifest": (bundle_mod.bundle_format, "write_manifest"),
}


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_at_each_stage_leaves_no_bundle_and_resumes(base, reference, tmp_path, monkeypatch, stage, error):
    target, attr = STAGES[stage]
    real = getattr(target, attr)
    calls = []

    def failing(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        if stage != "layer" or len(calls) == 3:
            raise error(f"injected failure in {stage}")

    monkeypatch.setattr(target, attr, failing)
    out = tmp_path / "bundle"
    with pytest.raises(error, match="injected"):
        export_bundle(base, out, progress=False)
    monkeypatch.undo()
    if stage == "embedding":
        assert leftovers(tmp_path, "bundle") == []
        return
    assert leftovers(tmp_path, "bundle") == ["bundle.partial"]
    assert export_bundle(base, out, progress=False, resume=True) == out
    assert leftovers(tmp_path, "bundle") == ["bundle"]
    assert hashes(out) == reference


@pytest.fixture
def interrupted(base, tmp_path, monkeypatch) -> Path:
    """`out` whose export stopped after its second layer."""
    real = WeightsWriter.layer

    def failing(self, i, *args):
        if i == 2:
            raise KeyboardInterrupt("injected")
        real(self, i, *args)

    monkeypatch.setattr(WeightsWriter, "layer", failing)
    out = tmp_path / "bundle"
    with pytest.raises(KeyboardInterrupt):
        export_bundle(base, out, progress=False)
    monkeypatch.undo()
    assert journal_of(out)["units_done"] == 3  # the embedding table and two layers
    return out


def test_partial_export_without_resume_is_refused(base, interrupted):
    with pytest.raises(FileExistsError, match=r"bundle\.partial: an interrupted export .* --resume, or delete it"):
        export_bundle(base, interrupted, progress=False)
    assert journal_of(interrupted)["units_done"] == 3


def test_resume_with_other_options_is_refused(base, interrupted):
    with pytest.raises(ResumeError, match=r"options\.weights\.kind: 'fp32' there, 'int8' now"):
        export_bundle(base, interrupted, ExportOptions(WeightFormat("int8")), progress=False, resume=True)
    with pytest.raises(ResumeError, match=r"options\.max_context: 4096 there, 1024 now"):
        export_bundle(base, interrupted, ExportOptions(max_context=1024), progress=False, resume=True)


def test_resume_from_another_checkpoint_is_refused(interrupted, tmp_path):
    """Same names and shapes, other weights (another seed)."""
    other = write_checkpoint(tmp_path / "other", PRESETS["tiny"], random_weights(PRESETS["tiny"], 6), None)
    with pytest.raises(ResumeError, match=r"another checkpoint \(checkpoint\.weights\.model\.safetensors\.sample_sha256"):
        export_bundle(other, interrupted, progress=False, resume=True)


@pytest.mark.parametrize("damage", ["cut", "tensor-outside-weights", "more-layers-than-the-model"])
def test_damaged_journal_is_refused(base, interrupted, damage):
    path = partial_path(interrupted) / RESUME_DIR / JOURNAL_FILE
    journal = json.loads(path.read_text())
    if damage == "cut":
        path.write_text('{"version": 1, "units_done": ')
        want = "not a valid export journal .* delete"
    elif damage == "tensor-outside-weights":
        journal["tensors"]["backbone.layers.0.norm.weight"]["nbytes"] = journal["weights_bytes"]
        path.write_text(json.dumps(journal))
        want = r"not a valid export journal \(tensor backbone.layers.0.norm.weight is not within"
    else:
        journal["units_done"] = 100
        path.write_text(json.dumps(journal))
        want = "its journal counts more layers than the model has; the partial export is damaged: delete it"
    with pytest.raises(ResumeError, match=want):
        export_bundle(base, interrupted, progress=False, resume=True)


def test_damaged_hidden_states_are_refused(base, tmp_path, monkeypatch):
    """int4 with GPTQ stopped after two layers: the hidden states entering the third, replaced by an array
    of another shape, are refused by name before they are used."""
    real = WeightsWriter.layer

    def failing(self, i, *args):
        if i == 2:
            raise KeyboardInterrupt("injected")
        real(self, i, *args)

    options = ExportOptions(WeightFormat("int4"), calibration="random")
    out = tmp_path / "bundle"
    monkeypatch.setattr(WeightsWriter, "layer", failing)
    with pytest.raises(KeyboardInterrupt):
        export_bundle(base, out, options, progress=False)
    monkeypatch.undo()
    saved = partial_path(out) / RESUME_DIR / "gptq-2.npy"
    assert np.load(saved).shape == (64, 128, PRESETS["tiny"].hidden_size)
    np.save(saved, np.zeros((2, 2)))
    with pytest.raises(ResumeError, match=r"gptq-2.npy: unreadable \(float64\[2, 2\], expected float32\[64, 128, 128\]\)"):
        export_bundle(base, out, options, progress=False, resume=True)


def test_weights_shorter_than_the_journal_are_refused(base, interrupted):
    os.truncate(partial_path(interrupted) / "weights.bin", 100)
    with pytest.raises(ResumeError, match="weights.bin: 100 bytes, the journal counts .* damaged"):
        export_bundle(base, interrupted, progress=False, resume=True)


def test_partial_export_in_use_is_refused(base, interrupted):
    fd = os.open(partial_path(interrupted) / RESUME_DIR, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ResumeError, match="another export is writing it"):
            export_bundle(base, interrupted, progress=False, resume=True)
    finally:
        os.close(fd)
    assert journal_of(interrupted)["units_done"] == 3


def test_resume_without_a_partial_export_exports(base, reference, tmp_path):
    assert hashes(export_bundle(base, tmp_path / "bundle", progress=False, resume=True)) == reference


# ---- streaming ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [WeightFormat("fp16"), WeightFormat("bf16"), WeightFormat("int8", quantize_embeddings=True),
                                 WeightFormat("int8", quantize_lm_head=False)],
                         ids=["fp16", "bf16-transposed-head", "int8-rows", "int8-float-head"])
def test_bytes_do_not_depend_on_the_row_block(base, tmp_path, monkeypatch, fmt):
    whole = export_bundle(base, tmp_path / "whole", ExportOptions(fmt), progress=False)
    monkeypatch.setattr(weights_file, "ROW_BLOCK_ELEMENTS", 3 * 128 + 5)  # 3 rows of 128: 1024 rows end in a short block
    blocks = export_bundle(base, tmp_path / "blocks", ExportOptions(fmt), progress=False)
    assert hashes(blocks) == hashes(whole)
