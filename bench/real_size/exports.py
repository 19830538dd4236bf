"""The writing stages of the real-size measurement: `synth --preset nano-9b-v2` and one export per variant,
each a child process measured from outside (bench/real_size/measured_process.py).

An export's progress is read from its journal (`<out>.partial/resume/journal.json`, export/journal.py)
about once a second: the time at which each layer of int4's sensitivity pass and each unit of weights.bin
(embedding table, layers, head) was finished. An export stopped by `--limit-minutes` keeps its partial
directory; the next run of the stage continues it with `export --resume`, and the timelines of all runs
add up. So does a partial export left by a killed bench, whose earlier time is then unknown
(`unrecorded_earlier_run`). Until it completes, its total time is extrapolated from the finished units, in proportion to
their parameters (export.bundle.unit_params), and reported as an estimate.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from bench.real_size.measured_process import Measured, cli, run_measured
from nemotron_export.bundle import unit_params
from nemotron_export.checkpoint import open_checkpoint
from nemotron_export.journal import JOURNAL_FILE, RESUME_DIR, partial_path

PRESET = "nano-9b-v2"


@dataclass(frozen=True)
class Variant:
    name: str
    args: tuple[str, ...]


VARIANTS = {v.name: v for v in (
    Variant("fp16", ("--weights", "fp16")),
    Variant("bf16", ("--weights", "bf16")),
    Variant("int8", ("--weights", "int8")),
    Variant("int4-rtn", ("--weights", "int4", "--no-gptq")),
    Variant("int4", ("--weights", "int4")),
)}


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def synth(work: Path, ckpt: Path) -> dict:
    log = work / "synth.log"
    m = run_measured(cli("synth", "--preset", PRESET, "--out", str(ckpt)), log)
    if m.exit_code != 0:
        raise RuntimeError(f"synth failed (exit {m.exit_code}); see {log}")
    return {"seconds": m.seconds, "peak_rss": m.peak_rss, "bytes": directory_bytes(ckpt)}


class JournalWatch:
    """Samples an export's journal: when each sensitivity layer and weights.bin unit was finished,
    in seconds of export time (`offset`: the time earlier runs of the same export took)."""

    def __init__(self, journal: Path, offset: float, events: list[dict]):
        self.journal, self.offset, self.events = journal, offset, events
        self.last = (events[-1]["measured"], events[-1]["units_done"]) if events else (0, 0)

    def __call__(self, elapsed: float) -> None:
        try:
            j = json.loads(self.journal.read_text())
        except (OSError, ValueError):
            return  # not written yet, or replaced while we read
        now = (int(j.get("measured", 0)), int(j.get("units_done", 0)))
        if now != self.last:
            self.last = now
            self.events.append({"seconds": self.offset + elapsed, "measured": now[0], "units_done": now[1]})


def estimate(events: list[dict], units: list[int], layers: int, int4: bool) -> dict:
    """Seconds of each stage, measured where it finished, extrapolated from its finished part otherwise."""
    def stage(key: str, sizes: list[int], start_s: float) -> dict:
        done = [e for e in events if e[key] > 0]
        if not done:
            return {"seconds": None, "done": 0, "of": len(sizes)}
        last = next(e for e in done if e[key] == done[-1][key])  # when the stage's last finished item was
        n, spent = last[key], last["seconds"] - start_s
        if n == len(sizes):
            return {"seconds": spent, "done": n, "of": len(sizes), "estimated": False}
        # Stages are paced by the layers' parameters (matmuls over calibration rows, quantizing, writing).
        return {"seconds": spent * sum(sizes) / sum(sizes[:n]), "done": n, "of": len(sizes), "estimated": True}

    out = {}
    start = 0.0
    if int4:
        layer_sizes = units[1:-1]
        out["sensitivity"] = stage("measured", layer_sizes, 0.0)
        measured_all = [e for e in events if e["measured"] == layers]
        start = measured_all[0]["seconds"] if measured_all else None
    if start is not None:
        out["writing"] = stage("units_done", units, start)
    return out


def export(work: Path, ckpt: Path, variant: Variant, limit_minutes: float | None, previous: dict | None) -> dict:
    """One run of `variant`'s export (continuing an earlier stopped run of it), merged into `previous`."""
    out = work / f"bundle-{variant.name}"
    partial = partial_path(out)
    # A partial export with a journal is continued even when no record of it exists (the bench itself was
    # killed, not stopped by its limit): its earlier time is then unknown, and the result says so.
    resuming = (partial / RESUME_DIR / JOURNAL_FILE).exists() and not (previous or {}).get("complete")
    unrecorded = resuming and previous is None
    if not resuming:
        previous = None
        if partial.exists():
            shutil.rmtree(partial)
    runs = list(previous["runs"]) if previous else []
    events = list(previous["events"]) if previous else []
    offset = sum(r["seconds"] for r in runs)
    args = cli("export", str(ckpt), "--out", str(out), *variant.args, *(("--resume",) if resuming else ()))
    watch = JournalWatch(partial / RESUME_DIR / JOURNAL_FILE, offset, events)
    m: Measured = run_measured(args, work / f"export-{variant.name}.log",
                               limit_minutes * 60 if limit_minutes else None, watch)
    complete = m.exit_code == 0 and (out / "manifest.json").exists()
    if not complete and not m.interrupted:
        raise RuntimeError(f"export {variant.name} failed (exit {m.exit_code}); see {work}/export-{variant.name}.log")
    c = open_checkpoint(ckpt)
    if complete:  # the journal went with the partial directory: the end is the last unit, graphs and manifest
        events.append({"seconds": offset + m.seconds, "measured": c.cfg.num_layers if "int4" in variant.args else 0,
                       "units_done": c.cfg.num_layers + 2})
    runs.append({"seconds": m.seconds, "peak_rss": m.peak_rss, "interrupted": m.interrupted, "resumed": resuming})
    result = {"variant": variant.name, "args": list(variant.args), "complete": complete, "runs": runs,
              "events": events, "seconds": sum(r["seconds"] for r in runs),
              "peak_rss": max(r["peak_rss"] for r in runs),
              "stages": estimate(events, unit_params(c), c.cfg.num_layers, "int4" in variant.args),
              "unrecorded_earlier_run": unrecorded or bool(previous and previous.get("unrecorded_earlier_run"))}
    if complete:
        result["bundle_bytes"] = directory_bytes(out)
        result["weights_bytes"] = (out / "weights.bin").stat().st_size
    return result


def small_bundle(work: Path, variant: Variant) -> Path:
    """The `small` preset's checkpoint and its bundle of `variant` (made once): agreement's yardstick."""
    ckpt, bundle = work / "small-ckpt", work / f"small-bundle-{variant.name}"
    for args, out in ((("synth", "--preset", "small", "--out", str(ckpt)), ckpt),
                      (("export", str(ckpt), "--out", str(bundle), *variant.args), bundle)):
        if not out.exists():
            m = run_measured(cli(*args), work / "small.log")
            if m.exit_code != 0:
                raise RuntimeError(f"{' '.join(args)} failed; see {work}/small.log")
    return bundle
