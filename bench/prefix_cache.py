"""`python -m bench.prefix_cache`: what the prefix state cache saves, against the same requests uncached, in one run.

1. Time to first token at batch 1 on the `small` preset (fp32 and int4 bundles, bench/artifacts.py): a
   request of a 2,000-token prefix that a first request left in the cache plus 32 new tokens, against the
   same request with the cache bypassed (`prefix_cache=False`), `--reps` new endings each; the engine's own
   TTFT (submission to first token), medians and their ratio.
2. A 10-turn conversation through the real service (`nemotron-edge serve` on a Unix socket, the client
   API): a system prompt with tools, then each turn the history (answers without reasoning) and a new user
   message. Per turn, the prompt tokens, those that came from the cache and those prefilled, and the time
   to first token, with the cache on and with every request bypassing it; the total time of each.
3. Memory: a service with a memory budget and a smaller `[cache] budget` answers 100 requests with distinct
   prefixes (each leaves two snapshots); the server's resident memory (VmRSS after every request, VmHWM at
   the end, from /proc) against the budget, and the cache's bytes and evictions from GetStatus.

Writes `<out>.json` and `<out>.md` (the tables for BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from bench import artifacts
from bench.service import Server
from edge_runtime.client import EdgeClient
from edge_runtime.engine.engine import Engine, EngineConfig
from edge_runtime.engine.providers import ProviderConfig
from edge_runtime.engine.records import GenerationRequest, SamplingParams

PREFIX, REST = 2000, 32
TURNS = 10
SYSTEM = ("You are the on-board assistant of a two-armed mobile robot in a warehouse. Keep answers short, "
          "name the arm you use, and call a tool when an action is needed. ") * 8
TOOLS = [{"name": "navigate_to", "description": "Drive to a named place.",
          "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}},
         {"name": "move_arm", "description": "Move an arm to a point.",
          "parameters": {"type": "object", "properties": {"arm": {"type": "string", "enum": ["left", "right"]},
                                                          "x": {"type": "number"}, "y": {"type": "number"}},
                         "required": ["arm", "x", "y"]}}]


def ttft(bundle: Path, reps: int, kernels: str | None) -> dict:
    engine = Engine(bundle, EngineConfig(prefix_cache_bytes=1 << 30, max_batch=1, max_context=PREFIX + 256,
                                         providers=ProviderConfig(custom_op_library=kernels)))
    vocab = engine.model_config.vocab_size
    rng = np.random.default_rng(0)
    prefix = [int(t) for t in rng.integers(100, vocab, PREFIX)]
    ending = lambda: [int(t) for t in rng.integers(100, vocab, REST)]

    def first_token_ms(prompt: list[int], **kw) -> tuple[float, int]:
        final = engine.generate(GenerationRequest(prompt, SamplingParams(greedy=True), max_tokens=1, ignore_eos=True, **kw))
        return final.timings.time_to_first_token_ms, final.usage.cached_prompt_tokens

    first_token_ms(prefix + ending(), capture_at=(PREFIX,))  # leaves the prefix in the cache (and warms up)
    cached, uncached = [], []
    for _ in range(reps):
        prompt = prefix + ending()
        ms, from_cache = first_token_ms(prompt)
        assert from_cache == PREFIX, from_cache
        cached.append(ms)
        uncached.append(first_token_ms(prompt, prefix_cache=False)[0])
    c, u = statistics.median(cached), statistics.median(uncached)
    return {"cached_ms": cached, "uncached_ms": uncached, "cached_median_ms": c, "uncached_median_ms": u,
            "speedup": u / c}


def conversation(bundle: Path, kernels: str | None, workdir: Path) -> dict:
    server = Server(workdir, bundle, kernels, "--prefix-cache-budget", "1GiB", "--max-sequences", "1")
    try:
        with EdgeClient(server.address) as client:
            return {"on": _turns(client, True), "off": _turns(client, False)}
    finally:
        server.stop()


def memory(bundle: Path, kernels: str | None, workdir: Path, budget: str, cache_budget: str, requests: int) -> dict:
    server = Server(workdir, bundle, kernels, "--prefix-cache-budget", cache_budget, budget=budget)
    try:
        with EdgeClient(server.address) as client:
            process = psutil.Process(server.proc.pid)
            rss = [process.memory_info().rss]
            for k in range(requests):
                system = f"Robot {k}: " + " ".join(f"rule {k}.{j} keep the {j}th shelf clear." for j in range(40))
                list(client.chat("Which shelf is clear?", system=system, reasoning=False, max_tokens=4))
                rss.append(process.memory_info().rss)
            status = client.status()
            hwm = _vm_hwm(server.proc.pid)
    finally:
        server.stop()
    cache = status.prefix_cache
    return {"budget_bytes": status.memory.budget_bytes, "cache_budget_bytes": cache.budget_bytes,
            "requests": requests, "rss_max": max(rss), "rss_after_load": rss[0], "vm_hwm": hwm,
            "cache_bytes": cache.bytes, "entries": cache.entries, "evictions": cache.evictions,
            "skipped": cache.skipped, "used_bytes": status.memory.used_bytes}


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc")


def _turns(client, cache: bool) -> list[dict]:
    messages = [{"role": "system", "content": SYSTEM}]
    rows = []
    for turn in range(TURNS):
        messages.append({"role": "user", "content": f"Step {turn + 1}: the crate is at x {turn + 2}, y {9 - turn}. "
                                                    "Which arm should reach for it, and where should I drive next?"})
        t0 = time.monotonic()
        final = list(client.chat(messages, tools=TOOLS, reasoning=False, max_tokens=16, ignore_eos=True,
                                 sampling={"temperature": 0.0}, prefix_cache=cache))[-1]
        u = final.usage
        rows.append({"turn": turn + 1, "prompt_tokens": u.prompt_tokens, "cached": u.cached_prompt_tokens,
                     "prefilled": u.prompt_tokens - u.cached_prompt_tokens,
                     "ttft_ms": final.timings.time_to_first_token_ms, "seconds": time.monotonic() - t0})
        messages.append({"role": "assistant", "content": final.answer_text})
    return rows


def tables(results: dict) -> str:
    lines = [f"Time to first token, batch 1, `small`: {PREFIX}-token cached prefix + {REST} new tokens, "
             f"against the same request uncached (medians of {results['reps']}).", "",
             "| bundle | cached TTFT | uncached TTFT | speedup |", "|--------|------|------|------|"]
    for fmt, r in results["ttft"].items():
        lines.append(f"| {fmt} | {r['cached_median_ms']:.0f} ms | {r['uncached_median_ms']:.0f} ms | {r['speedup']:.1f}x |")
    conv = results["conversation"]
    lines += ["", f"A {TURNS}-turn conversation through `nemotron-edge serve` and the client API (`small` "
              f"{results['conversation_format']}, system prompt and two tools, answers of 16 tokens, reasoning off):", "",
              "| turn | prompt tokens | from the cache | prefilled | TTFT (cache) | prefilled without cache | TTFT (no cache) |",
              "|------|------|------|------|------|------|------|"]
    for on, off in zip(conv["on"], conv["off"]):
        lines.append(f"| {on['turn']} | {on['prompt_tokens']} | {on['cached']} | {on['prefilled']} | "
                     f"{on['ttft_ms']:.0f} ms | {off['prefilled']} | {off['ttft_ms']:.0f} ms |")
    total = lambda rows: sum(r["seconds"] for r in rows)
    m = results.get("memory")
    lines += ["", f"Total: {total(conv['on']):.1f} s with the cache, {total(conv['off']):.1f} s without "
              f"({sum(r['prefilled'] for r in conv['on'])} against {sum(r['prefilled'] for r in conv['off'])} "
              "prompt tokens prefilled)."]
    if m:
        gib = lambda n: f"{n / 2**30:.2f} GiB"
        lines += ["", f"Memory: {m['requests']} requests with distinct prefixes to a service with a budget of "
                  f"{gib(m['budget_bytes'])} and a cache share of {gib(m['cache_budget_bytes'])}: VmRSS at most "
                  f"{gib(m['rss_max'])} (after load {gib(m['rss_after_load'])}), VmHWM {gib(m['vm_hwm'])}, "
                  f"{m['rss_max'] / m['budget_bytes']:.2f} of the budget; the cache holds {m['entries']} snapshots "
                  f"in {gib(m['cache_bytes'])} after {m['evictions']} evictions ({m['skipped']} captures skipped); "
                  f"GetStatus used_bytes {gib(m['used_bytes'])}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--formats", nargs="+", default=["fp32", "int4"])
    parser.add_argument("--budget", default="1GiB", help="the memory stage's service budget")
    parser.add_argument("--cache-budget", default="96MiB", help="the memory stage's [cache] budget")
    parser.add_argument("--requests", type=int, default=100, help="distinct prefixes in the memory stage")
    parser.add_argument("--cache", type=Path, default=artifacts.DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=artifacts.REPO / "bench" / "prefix_cache")
    args = parser.parse_args()
    kernels, why = artifacts.kernel_library()
    print(f"native kernels: {why}", flush=True)
    results = {"reps": args.reps, "kernels": why, "ttft": {}}
    for fmt in args.formats:
        results["ttft"][fmt] = ttft(artifacts.bundle(args.cache, "small", fmt), args.reps, kernels)
        print(fmt, json.dumps({k: v for k, v in results["ttft"][fmt].items() if not k.endswith("_ms")}), flush=True)
    results["conversation_format"] = args.formats[-1]
    served = artifacts.bundle(args.cache, "small", args.formats[-1])
    with tempfile.TemporaryDirectory() as tmp:
        results["conversation"] = conversation(served, kernels, Path(tmp))
    with tempfile.TemporaryDirectory() as tmp:
        results["memory"] = memory(served, kernels, Path(tmp), args.budget, args.cache_budget, args.requests)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(tables(results))
    print(tables(results))


if __name__ == "__main__":
    main()
