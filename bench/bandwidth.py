"""The memory-bandwidth ceiling of decode, measured on this machine in the same run.

Bandwidth: numpy over arrays of `bandwidth_bytes` (1 GiB by default, far beyond this CPU's 300 MiB L3),
the pages touched before timing:
- copy: `np.copyto` of one array into another, counted as read + write (2 x bytes / s), on one thread
  and split over `threads` threads (numpy releases the GIL while copying);
- read: `max()` over the array viewed as uint8 (a SIMD compare per 64 bytes: bound by memory, not by
  arithmetic), on one thread and split over `threads` threads.
The machine's copy and read bandwidths are the larger of the one-thread and many-thread medians.

Ceiling of decode at batch 1 = bandwidth / bytes that must cross the memory bus per token: all of
weights.bin once, plus the sequence's state: the conv and SSM states read and written, the K/V of the
mean context read and one token's K/V written. The decode case's batch-1 tokens/s over that ceiling is
the fraction reported. A weights file smaller than the L3 cache can beat a DRAM ceiling (fp32 `small`:
272 MiB of weights against 300 MiB of L3); the report says so where it happens.
"""

from __future__ import annotations

import threading

import numpy as np

from bench.settings import Settings
from bench.timing import Case, timed
from bench.variants import Env, Variant
from edge_runtime.bundle.reader import open_bundle
from edge_runtime.bundle.state_layout import bytes_per_token, fixed_bytes_per_sequence

FP32_TARGET = ">= 0.7"


def _split(n: int, parts: int) -> list[slice]:
    return [slice(i * n // parts, (i + 1) * n // parts) for i in range(parts)]


def _parallel(fn, parts: list[slice]) -> None:
    threads = [threading.Thread(target=fn, args=(p,)) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def measure_bandwidth(case: Case, nbytes: int, threads: int, reps: int) -> dict[str, float]:
    src = np.full(nbytes // 8, 1.0)
    dst = np.zeros_like(src)
    slices = _split(len(src), threads)
    u8 = src.view(np.uint8)
    copy_1 = case.measure("copy 1 thread", "GB/s", lambda: 2 * nbytes / timed(lambda: np.copyto(dst, src)) / 1e9, reps)
    copy_n = case.measure(f"copy {threads} threads", "GB/s", lambda: 2 * nbytes / timed(
        lambda: _parallel(lambda s: np.copyto(dst[s], src[s]), slices)) / 1e9, reps)
    byte_slices = _split(len(u8), threads)
    read_1 = case.measure("read 1 thread", "GB/s", lambda: nbytes / timed(lambda: u8.max()) / 1e9, reps)
    read_n = case.measure(f"read {threads} threads", "GB/s", lambda: nbytes / timed(
        lambda: _parallel(lambda s: u8[s].max(), byte_slices)) / 1e9, reps)
    return {"copy": max(copy_1, copy_n), "read": max(read_1, read_n)}


def bytes_per_decode_token(bundle_path, context: int) -> dict[str, int]:
    bundle = open_bundle(bundle_path, verify=False)
    specs = bundle.state_layout
    weights = int(bundle.manifest["files"][bundle.weights["file"]]["bytes"])
    fixed, kv = fixed_bytes_per_sequence(specs), bytes_per_token(specs)
    state = 2 * fixed + kv * context + kv
    return {"weights": weights, "state": state, "total": weights + state}


def bandwidth(env: Env, s: Settings, decode_case: dict | None) -> dict:
    case = Case("bandwidth", warmups=1)
    bw = measure_bandwidth(case, s.bandwidth_bytes, s.threads, max(3, s.reps))
    case.details.update(array_bytes=s.bandwidth_bytes, bandwidth_gbps=bw)
    if decode_case is None:
        case.notes.append("decode was not run: no fraction of the ceiling")
        return case.finish()
    mean_context = s.prompt_tokens + s.new_tokens // 2
    best = lambda kind: max((f"{kind} 1 thread", f"{kind} {s.threads} threads"), key=lambda k: case.measurements[k]["median"])
    for key, m in decode_case["measurements"].items():
        if not key.endswith(" b1") or key.startswith("transformers"):
            continue
        v = Variant.parse(key[:-3])
        b = bytes_per_decode_token(env.bundle(v.fmt), mean_context)
        case.details[f"{v.label} bytes per token"] = b
        case.record(f"{v.label} b1", "tok/s", m["runs"])
        for name in ("copy", "read"):
            source = best(name)
            runs = [gbps * 1e9 / b["total"] for gbps in case.measurements[source]["runs"]]
            case.record(f"{v.label} ceiling ({name})", "tok/s", runs, bandwidth=source)
            case.ratio(f"{v.label} b1 / ceiling ({name})", f"{v.label} b1", f"{v.label} ceiling ({name})",
                       FP32_TARGET if v.fmt == "fp32" and name == "copy" else None)
    return case.finish()
