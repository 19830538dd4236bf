"""`python -m bench.spinning [--reps N]`: decode speed under each thread-spinning setting (ProviderConfig.spinning).

`ProviderConfig.spinning`: "always" (ONNX Runtime's default: idle worker threads spin on after a Run
returns), "in_run" (they spin between the kernels of a Run and stop when it returns), "brief" (the same,
at most 20 us each time; the benchmark's setting), "never" (the runtime's default: they block at once). int4 with the native kernels, greedy decode of 128 tokens after a
16-token prompt at batch 1 and batch 8, as the decode case measures it. Every measurement runs in a fresh
process, since a pool left spinning slows whatever runs next in its process; settings alternate round by
round. Twice: on an otherwise idle machine, and beside one process that keeps a core busy (a robot's
other work). Prints the median tok/s of each setting and its ratio to "always".
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from bench import artifacts
from bench.settings import Settings
from bench.variants import Env, Variant, generate_batch, prompt_ids
from edge_runtime.engine.engine import Engine, EngineConfig
from edge_runtime.engine.providers import SPINNING

BUSY_LOOP = "while True: pass"


def _child(spinning: str, batch: int, s: Settings) -> float:
    """tok/s of one warmed-up generation in this process."""
    env = Env(artifacts.DEFAULT_CACHE, s.preset, s.threads, artifacts.kernel_library()[0], spinning)
    v = Variant("int4", kernels=env.kernel_library is not None)
    engine = Engine(env.bundle(v.fmt), EngineConfig(max_batch=batch, providers=env.providers(v)))
    prompts = [prompt_ids(i, s.prompt_tokens, env.vocab) for i in range(batch)]
    generate_batch(engine, prompts, s.new_tokens)
    start = time.perf_counter()
    generate_batch(engine, prompts, s.new_tokens)
    return batch * s.new_tokens / (time.perf_counter() - start)


def _measure(spinning: str, batch: int) -> float:
    out = subprocess.run([sys.executable, "-m", "bench.spinning", "--child", spinning, str(batch)],
                         capture_output=True, text=True, cwd=artifacts.REPO, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3, help="rounds per load and batch")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    s = Settings()
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]), s)))
        return
    artifacts.bundle(artifacts.DEFAULT_CACHE, s.preset, "int4")  # exported once, before any timing
    print("| load | batch | " + " | ".join(f"{m} tok/s" for m in SPINNING) + " | "
          + " | ".join(f"{m} / always" for m in SPINNING[1:]) + " |")
    print("|---" * (2 + 2 * len(SPINNING) - 1) + "|")
    for load in ("idle", "one core busy"):
        busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if load != "idle" else None
        try:
            for batch in (1, s.batch):
                runs = {m: [] for m in SPINNING}
                for _ in range(args.reps):
                    for m in SPINNING:
                        runs[m].append(_measure(m, batch))
                med = {m: statistics.median(r) for m, r in runs.items()}
                print(f"| {load} | {batch} | " + " | ".join(f"{med[m]:.0f}" for m in SPINNING) + " | "
                      + " | ".join(f"{med[m] / med['always']:.2f}x" for m in SPINNING[1:]) + " |", flush=True)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()


if __name__ == "__main__":
    main()
