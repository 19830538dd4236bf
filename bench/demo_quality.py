"""`python -m bench.demo_quality`: the demo model's task accuracy through the runtime, by thinking budget and format.

The trained demo checkpoint (models/demo, `nemotron-edge train-demo`) is exported to fp32, int8 and int4
bundles; each answers the same held-out conversations (export/demo_model/tasks.py, held-out split, seed 0)
through the engine and its chat front end, greedy, in each setting:
- thinking on, no budget; thinking off (`/no_think`: the template's `<think></think>`);
- strict budgets of 0, 8, 16, 32 and 64 reasoning tokens (no grace: the close `\\n</think>\\n\\n` is forced).
A reply is correct as `tasks.is_correct` says: the answer text equal to the reference after normalising
case and whitespace, or one tool call that parses and names the right tool with exactly the right
arguments. Beside it, per format, the teacher-forced top-1: how often the bundle's greedy next token is
the reference reply's next token, over the reasoning and answer of every conversation with thinking on.

Writes `<out>.json` (every figure and each setting's accuracy per task family), `<out>.md` (the table for
BENCHMARKS.md) and `<out>.png` (accuracy against budget; needs the `bench` extra, matplotlib).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from bench import artifacts
from edge_runtime.engine.engine import EngineConfig
from edge_runtime.engine.loading import LoadedEngine, load_engine
from edge_runtime.engine.providers import ProviderConfig
from edge_runtime.engine.scheduler import SchedulerConfig
from nemotron_export.demo_model.examples import ExampleBuilder, Mode
from nemotron_export.demo_model.evaluation import BUDGETS, SETTINGS, Setting, correct, request
from nemotron_export.demo_model.tasks import Conversation, Family, Split, conversations
from nemotron_export.demo_model.train import DEMO_CHECKPOINT


FORMATS = ("fp32", "int8", "int4")


def answers(loaded: LoadedEngine, convs: list[Conversation], setting: Setting) -> list[bool]:
    """Whether each conversation is answered right in `setting` (all submitted at once: the engine batches)."""
    seqs = [loaded.chat.submit(request(c, setting)) for c in convs]
    return [correct(c, s.wait()) for c, s in zip(convs, seqs)]


def teacher_forced_top1(bundle_dir: Path, convs: list[Conversation]) -> float:
    """Share of reply tokens (thinking on) that the bundle's argmax predicts when fed the reference reply up
    to them: the prompt is prefilled, then each reference token decoded, on the runtime's own runner."""
    from edge_runtime.bundle.reader import open_bundle
    from edge_runtime.engine.runner import OrtModelRunner
    from edge_runtime.engine.state_pool import StatePool

    bundle = open_bundle(bundle_dir, verify=False)
    builder = ExampleBuilder(Tokenizer.from_file(str(bundle.tokenizer_file("tokenizer.json"))))
    examples = [builder.build(c, Mode.THINK, random.Random(0)) for c in convs]
    pool = StatePool(bundle.state_layout, 1, max(len(e.ids) for e in examples))
    runner = OrtModelRunner(bundle, pool, ProviderConfig(custom_op_library=artifacts.kernel_library()[0]), max_rows=1)
    hits = total = 0
    for ex in examples:
        start = ex.weights.index(1.0)
        slot = pool.allocate()
        logits = runner.prefill([slot], [ex.ids[:start]], [0])
        for pos in range(start, len(ex.ids)):
            hits += int(np.argmax(logits[0]) == ex.ids[pos])
            total += 1
            if pos + 1 < len(ex.ids):
                logits = runner.decode([slot], [ex.ids[pos]], [pos])
        pool.release(slot)
    return hits / total


def task_accuracy(bundle: Path, convs: list[Conversation]) -> dict:
    loaded = load_engine(bundle, EngineConfig(scheduler=SchedulerConfig(max_queue=len(convs)), providers=ProviderConfig(
        custom_op_library=artifacts.kernel_library()[0])))
    try:
        out = {}
        for setting in SETTINGS:
            t0 = time.monotonic()
            ok = answers(loaded, convs, setting)
            by_family = {f.value: float(np.mean([o for o, c in zip(ok, convs) if c.family is f])) for f in Family}
            out[setting.name] = {"accuracy": float(np.mean(ok)), "by_family": by_family,
                                             "seconds": round(time.monotonic() - t0, 1)}
            print(f"  {setting.name}: {np.mean(ok):.3f} {by_family}", flush=True)
        return out
    finally:
        loaded.engine.shutdown()


def export_formats(checkpoint: Path, cache: Path, formats: list[str]) -> dict[str, Path]:
    """The checkpoint's bundle in each format, exported into `cache` unless already there for this checkpoint
    and exporter."""
    from nemotron_export.bundle import ExportOptions, export_bundle
    from nemotron_export.commands import GROUP_SIZE_BY_FORMAT
    from nemotron_export.onnx_graph import WeightFormat

    key = artifacts.exporter_fingerprint() + ":" + hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
    out = {}
    for fmt in formats:
        path, stamp = cache / f"demo-{fmt}", cache / f"demo-{fmt}.stamp"
        if not (path.exists() and stamp.exists() and stamp.read_text() == key):
            shutil.rmtree(path, ignore_errors=True)
            weights = WeightFormat(kind=fmt, group_size=GROUP_SIZE_BY_FORMAT.get(fmt, 32))
            export_bundle(checkpoint, path, ExportOptions(weights=weights, max_batch=16, max_context=1024), progress=False)
            stamp.write_text(key)
        out[fmt] = path
    return out


def table(results: dict) -> str:
    names = [s.name for s in SETTINGS]
    lines = ["| format | teacher-forced top-1 | " + " | ".join(names) + " |",
             "|--------|------|" + "------|" * len(names)]
    for fmt, r in results["formats"].items():
        lines.append(f"| {fmt} | {r['teacher_forced_top1']:.3f} | "
                     + " | ".join(f"{r['accuracy'][n]['accuracy']:.3f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for fmt, r in results["formats"].items():
        acc = r["accuracy"]
        line, = ax.plot(BUDGETS, [acc[f"budget {b}"]["accuracy"] for b in BUDGETS], marker="o", label=f"{fmt}, budget")
        ax.axhline(acc["on"]["accuracy"], color=line.get_color(), linestyle="--", linewidth=0.8)
        ax.axhline(acc["off"]["accuracy"], color=line.get_color(), linestyle=":", linewidth=0.8)
    ax.set_xlabel("thinking budget (tokens; dashed: no budget, dotted: thinking off)")
    ax.set_ylabel(f"correct answers ({results['conversations']} held-out)")
    ax.set_ylim(0, 1)
    ax.set_xticks(BUDGETS)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--cache", type=Path, default=artifacts.DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=artifacts.REPO / "bench" / "demo_quality")
    args = parser.parse_args()
    convs = list(conversations(Split.HELD_OUT, 0, args.count))
    results = {"checkpoint": str(args.checkpoint), "conversations": len(convs), "formats": {}}
    for fmt, bundle in export_formats(args.checkpoint, args.cache, args.formats).items():
        print(fmt, flush=True)
        results["formats"][fmt] = {"accuracy": task_accuracy(bundle, convs),
                                   "teacher_forced_top1": teacher_forced_top1(bundle, convs)}
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(table(results))
    plot(results, args.out.with_suffix(".png"))
    print(table(results))


if __name__ == "__main__":
    main()
