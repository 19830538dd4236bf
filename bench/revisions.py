"""Decode speed of two revisions of this repository, interleaved in one run: did a change cost speed?

Each revision is checked out into a temporary git worktree and runs in its own worker process (the same
Python environment, the revision's own `edge_runtime` first on the path), which loads an engine on its
bundle once and then, per request from the driver, decodes `new_tokens` greedy tokens for `batch`
prompts and reports the wall time. Rounds alternate which revision goes first; a ratio is the median of
the per-round ratios (after over before, tokens/s), as everywhere in bench/timing.py.

Both sides run `--bundle` unless `--before-bundle` or `--after-bundle` gives a side its own (a change of
the bundle schema: each revision needs a bundle its own exporter wrote, of the same checkpoint and format).

    python -m bench.revisions --before a8ab354 --after HEAD --bundle BUNDLE [--rounds 15] [--batches 1 8]
    python -m bench.revisions --before a8ab354 --after HEAD --before-bundle OLD --after-bundle NEW
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Runs in a worker: the request path as both sides spell it (the public API, or the modules it came from).
WORKER = r"""
import json, sys, time
try:
    from edge_runtime import Engine, EngineConfig, GenerationRequest, SamplingParams
except ImportError:
    from edge_runtime.engine import Engine, EngineConfig
    from edge_runtime.request import GenerationRequest
    from edge_runtime.sampler import SamplingParams
import numpy as np

bundle, max_batch, prompt_tokens, new_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
engine = Engine(bundle, EngineConfig(max_batch=max_batch))
vocab = engine.model_config.vocab_size
prompts = [[int(t) for t in np.random.RandomState(i).randint(100, vocab, prompt_tokens)] for i in range(max_batch)]
import edge_runtime
print("ready", edge_runtime.__file__, flush=True)
for line in sys.stdin:
    batch = int(line)
    requests = [GenerationRequest(p, SamplingParams(greedy=True), max_tokens=new_tokens, ignore_eos=True)
                for p in prompts[:batch]]
    t0 = time.perf_counter()
    handles = [engine.submit(r) for r in requests]
    engine.run_until_done(handles)
    seconds = time.perf_counter() - t0
    tokens = [len(h.final.token_ids) for h in handles]
    assert tokens == [new_tokens] * batch, tokens
    print(json.dumps({"tok_s": batch * new_tokens / seconds}), flush=True)
"""


class Worker:
    def __init__(self, rev: str, tree: Path, bundle: Path, max_batch: int, prompt_tokens: int, new_tokens: int):
        self.rev = rev
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), rev], check=True)
        self.tree = tree
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(bundle), str(max_batch), str(prompt_tokens), str(new_tokens)],
            cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        ready = self.proc.stdout.readline().split()
        if ready[:1] != ["ready"] or not ready[1].startswith(str(tree)):
            raise RuntimeError(f"{rev}: the worker did not start on its own tree: {ready}")

    def decode(self, batch: int) -> float:
        self.proc.stdin.write(f"{batch}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.rev}: the worker died")
        return json.loads(line)["tok_s"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(self.tree)], check=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True)
    p.add_argument("--after", default="HEAD")
    p.add_argument("--bundle", type=Path, help="the bundle of both sides, unless a side has its own")
    p.add_argument("--before-bundle", type=Path, help="the bundle of --before (default: --bundle)")
    p.add_argument("--after-bundle", type=Path, help="the bundle of --after (default: --bundle)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--warmups", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    args = p.parse_args(argv)
    bundles = {"before": args.before_bundle or args.bundle, "after": args.after_bundle or args.bundle}
    missing = [side for side, bundle in bundles.items() if bundle is None]
    if missing:
        p.error(f"no bundle for {' and '.join(missing)}: give --bundle or --{'-bundle and --'.join(missing)}-bundle")
    with tempfile.TemporaryDirectory() as tmp:
        workers = [Worker(rev, Path(tmp) / name, bundles[name].resolve(), max(args.batches), args.prompt_tokens,
                          args.new_tokens) for name, rev in (("before", args.before), ("after", args.after))]
        try:
            ratios: dict[int, list[float]] = {b: [] for b in args.batches}
            speeds: dict[str, list[float]] = {f"{w.rev} b{b}": [] for w in workers for b in args.batches}
            for k in range(args.warmups + args.rounds):
                for b in args.batches:
                    order = workers if k % 2 == 0 else workers[::-1]
                    got = {w.rev: w.decode(b) for w in order}
                    if k >= args.warmups:
                        ratios[b].append(got[args.after] / got[args.before])
                        for w in workers:
                            speeds[f"{w.rev} b{b}"].append(got[w.rev])
                print(f"round {k + 1}/{args.warmups + args.rounds}", file=sys.stderr, flush=True)
        finally:
            for w in workers:
                w.close()
    # One bundle is reported as before; two are named per side, so that no key claims one bundle for both.
    named = ({"bundle": str(bundles["before"])} if bundles["before"] == bundles["after"]
             else {f"{side}_bundle": str(bundle) for side, bundle in bundles.items()})
    result = {**named, "rounds": args.rounds, "new_tokens": args.new_tokens,
              "median_tok_s": {name: round(statistics.median(v), 1) for name, v in speeds.items()},
              "after_over_before": {f"b{b}": round(statistics.median(r), 3) for b, r in ratios.items()}}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
