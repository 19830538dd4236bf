"""`python -m bench.run [--quick] [--cases decode,prefill,...] [--out bench/results.json]`

Builds (or reuses) the checkpoint and bundles under --cache, runs the cases in order, writes the results
after each case (a crash keeps what was measured), and prints the report (bench/report.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from bench import artifacts
from bench.settings import CASES, FULL, QUICK, Settings
from bench.timing import loadavg
from bench.variants import Env, Variant


def machine() -> dict:
    info: dict = {"python": platform.python_version()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        for key in ("Model name", "CPU(s)", "Thread(s) per core", "L2 cache", "L3 cache", "Hypervisor vendor"):
            if key in fields:
                info[key] = fields[key].strip()
        mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        info["MemTotal"] = mem.split(":", 1)[1].strip()
    except (OSError, StopIteration, ValueError):
        pass
    return info


def versions() -> dict:
    import numpy
    import onnxruntime

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=artifacts.REPO, capture_output=True, text=True)
    return {"onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__, "git": commit.stdout.strip()}


def formats_needed(s: Settings) -> list[str]:
    variants = [*s.decode_variants, *s.batch1_only_variants, *s.prefill_variants]
    return sorted({Variant.parse(v).fmt for v in variants} | {s.service_format} | set(s.memory_formats) | {f for f, _, _ in s.profile_runs})


def run(s: Settings, cache: Path = artifacts.DEFAULT_CACHE, out: Path | None = None, command: str = "") -> dict:
    from bench import bandwidth, cases, memory, profile, service, thinking

    lib, why = artifacts.kernel_library()
    env = Env(Path(cache).resolve(), s.preset, s.threads, lib, s.spinning)
    t0 = time.perf_counter()
    for fmt in formats_needed(s):
        env.bundle(fmt)
    results: dict = {"meta": {
        "command": command, "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "versions": versions(), "kernel_library": lib, "kernel_library_status": why,
        "settings": asdict(s), "build_s": round(time.perf_counter() - t0, 1), "load": {"start": loadavg()},
    }, "cases": {}}
    runners = {"decode": cases.decode, "prefill": cases.prefill, "service": service.service,
               "thinking": thinking.thinking, "memory": memory.memory, "profile": profile.profile,
               "bandwidth": lambda e, st: bandwidth.bandwidth(e, st, results["cases"].get("decode"))}
    for name in s.cases:
        print(f"[bench] {name} (load {' '.join(map(str, loadavg()))})", file=sys.stderr, flush=True)
        results["cases"][name] = runners[name](env, s)
        results["meta"]["load"]["end"] = loadavg()
        results["meta"]["duration_s"] = round(time.perf_counter() - t0, 1)
        if out is not None:
            out.write_text(json.dumps(results, indent=1) + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one repetition, shorter generations, fewer variants")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from: {', '.join(CASES)}")
    p.add_argument("--out", type=Path, default=Path("bench/results.json"))
    p.add_argument("--cache", type=Path, default=artifacts.DEFAULT_CACHE)
    p.add_argument("--reps", type=int, help="timed runs of each measurement")
    args = p.parse_args(argv)
    s = QUICK if args.quick else FULL
    names = tuple(c.strip() for c in args.cases.split(",") if c.strip())
    unknown = set(names) - set(CASES)
    if unknown:
        p.error(f"--cases: unknown {', '.join(sorted(unknown))}; choose from {', '.join(CASES)}")
    s = replace(s, cases=names, reps=args.reps or s.reps)
    command = "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv)
    results = run(s, args.cache, args.out, command.strip())
    from bench.report import render

    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
