"""Command line of bench/real_size (the package docstring says what each stage measures)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
from pathlib import Path

from bench import artifacts
from bench.real_size import agreement, engine_stages, exports
from bench.real_size.engine_run import RunSpec

STAGES = ("synth", "export", "plan", "run", "agreement")


class Results:
    """`<work>/real_size.json`, rewritten whole (atomically) after every stage."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        os.replace(tmp, self.path)

    def put(self, stage: str, key: str | None, value: dict) -> None:
        from bench.run import machine, versions

        entry = {**value, "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "git": versions()["git"]}
        if key is None:
            self.data[stage] = entry
        else:
            self.data.setdefault(stage, {})[key] = entry
        self.data["machine"] = machine()
        self.save()


def limits(pairs: list[str]) -> dict[str, float]:
    out = {}
    for pair in pairs:
        name, _, minutes = pair.partition("=")
        if name not in exports.VARIANTS or not minutes:
            raise SystemExit(f"--limit-minutes: expected VARIANT=MINUTES with VARIANT one of {list(exports.VARIANTS)}, "
                             f"got {pair!r}")
        out[name] = float(minutes)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.real_size", description=__doc__)
    p.add_argument("--work", type=Path, required=True, help="folder for the checkpoint, bundles, logs and results")
    p.add_argument("--checkpoint", type=Path,
                   help="export this checkpoint (e.g. the published one) instead of synthesizing <work>/ckpt")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--variants", nargs="+", choices=list(exports.VARIANTS), default=["int8", "int4-rtn"])
    p.add_argument("--limit-minutes", nargs="*", default=[], metavar="VARIANT=MINUTES",
                   help="stop that variant's export after so many minutes (a later run resumes it)")
    p.add_argument("--drop", nargs="*", choices=list(exports.VARIANTS), default=[],
                   help="delete these variants' bundles once measured (disk: a bf16 bundle is 18 GB)")
    p.add_argument("--agreement-variants", nargs="*", choices=list(exports.VARIANTS), default=["int4-rtn"],
                   help="bundles compared with transformers (each also on the small preset)")
    p.add_argument("--budget", default="22GiB", help="this machine's memory budget for the plan and the runs")
    p.add_argument("--context", type=int, default=1024, help="the runs' engine context")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--redo", nargs="*", choices=STAGES, default=[], help="measure these stages again")
    args = p.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results = Results(work / "real_size.json")
    ckpt = args.checkpoint.resolve() if args.checkpoint else work / "ckpt"
    minutes = limits(args.limit_minutes)

    if not args.checkpoint and "synth" in args.stages and ("synth" not in results.data or "synth" in args.redo or not ckpt.exists()):
        if ckpt.exists():
            shutil.rmtree(ckpt)
        print(f"synth --preset {exports.PRESET} -> {ckpt}", flush=True)
        results.put("synth", None, exports.synth(work, ckpt))
    if "export" in args.stages:
        for name in args.variants:
            done = results.data.get("export", {}).get(name)
            bundle = work / f"bundle-{name}"
            if done and done.get("complete") and "export" not in args.redo and (bundle.exists() or name in args.drop):
                continue
            if done and done.get("complete") and bundle.exists():
                shutil.rmtree(bundle)
                done = None
            print(f"export {name} -> {bundle}", flush=True)
            results.put("export", name, exports.export(work, ckpt, exports.VARIANTS[name], minutes.get(name),
                                                       None if "export" in args.redo else done))
    bundles = {name: work / f"bundle-{name}" for name in args.variants if (work / f"bundle-{name}" / "manifest.json").exists()}
    if "plan" in args.stages:
        for name, bundle in bundles.items():
            if name not in results.data.get("plan", {}) or "plan" in args.redo:
                results.put("plan", name, engine_stages.plan(bundle, args.budget))
    if "run" in args.stages:
        from edge_runtime.bundle.units import parse_bytes

        lib, why = artifacts.kernel_library()
        for name, bundle in bundles.items():
            if name in results.data.get("run", {}) and "run" not in args.redo:
                continue
            if "bandwidth" not in results.data or "run" in args.redo:
                results.put("bandwidth", None, engine_stages.bandwidth(args.threads))
            print(f"run {name}", flush=True)
            spec = RunSpec(str(bundle), parse_bytes(args.budget), args.context, (1, 4), prefill_tokens=512,
                           prefill_reps=2, decode_tokens=16, threads=args.threads, spinning="brief", kernel_library=lib)
            results.put("run", name, {**engine_stages.run(work, name, spec, results.data["bandwidth"]["copy"]),
                                      "kernel_library_status": why})
    if "agreement" in args.stages:
        for name in args.agreement_variants:
            if name not in bundles or (name in results.data.get("agreement", {}) and "agreement" not in args.redo):
                continue
            print(f"agreement {name}", flush=True)
            small = exports.small_bundle(work, exports.VARIANTS[name])
            results.put("agreement", name, {
                "full": agreement.agreement(work, name, ckpt, bundles[name]),
                "small": agreement.agreement(work, f"small-{name}", small.parent / "small-ckpt", small)})
    for name in args.drop:
        if name in bundles and (name in results.data.get("run", {}) or "run" not in args.stages):
            shutil.rmtree(bundles[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
