"""`python -m bench.report [bench/results.json]`: the results as the Markdown tables of BENCHMARKS.md.

Every number is a median over the runs in results.json; every ratio compares runs of the same run: the
median of per-round ratios for interleaved measurements, else a ratio of medians (bench/timing.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def num(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def _x(r: dict | None) -> str:
    return "" if r is None else f"{r['value']:.2f}x"


def mark(r: dict | None) -> str:
    if r is None or r["target"] is None:
        return ""
    return f"{r['target']}: {'met' if r['met'] else '**missed**'}"


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _med(case: dict, key: str) -> str:
    m = case["measurements"].get(key)
    return num(m["median"]) if m else "-"


def _runs(case: dict, key: str) -> int:
    return len(case["measurements"][key]["runs"]) if key in case["measurements"] else 0


def decode(c: dict, s: dict) -> str:
    b = s["batch"]
    labels = [k[:-3] for k in c["measurements"] if k.endswith(" b1")]
    r = c["ratios"]
    rows = [[v, _med(c, f"{v} b1"), _x(r.get(f"{v} b1 / transformers b1")), mark(r.get(f"{v} b1 / transformers b1")),
             _med(c, f"{v} b{b}"), _x(r.get(f"{v} b{b} / transformers b{b}")), _x(r.get(f"{v} b{b} / b1")),
             mark(r.get(f"{v} b{b} / b1"))] for v in labels]
    for row in rows:
        if row[0] == "transformers":
            row[2:4], row[5:7] = ["1.00x", ""], ["1.00x", _x(r.get(f"transformers b{b} / b1"))]
    return table(["variant", "b1 tok/s", "b1 vs transformers", "target", f"b{b} tok/s (aggregate)",
                   f"b{b} vs transformers", f"b{b} / b1", "target"], rows)


def prefill(c: dict, s: dict) -> str:
    lengths = s["prefill_lengths"]
    variants = list(dict.fromkeys(k.rsplit(" ", 1)[0] for k in c["measurements"] if not k.startswith("transformers")))
    rows = [["transformers (one forward)", *[_med(c, f"transformers {n}") for n in lengths], *[""] * len(lengths)]]
    for v in variants:
        rows.append([v, *[_med(c, f"{v} {n}") for n in lengths],
                     *[_x(c["ratios"].get(f"{v} {n} / transformers {n}")) + (" (" + mark(c["ratios"].get(f"{v} {n} / transformers {n}")) + ")"
                       if c["ratios"].get(f"{v} {n} / transformers {n}", {}).get("target") else "") for n in lengths]])
    return table(["variant, mode", *[f"{n} tok/s" for n in lengths], *[f"{n} vs transformers" for n in lengths]], rows)


def service(c: dict, s: dict) -> str:
    interval = c["details"].get("stream_interval_ms")
    rows = [["in-process, batch 1 (engine stepped by the caller)", _med(c, "in-process b1"), ""]]
    if "gRPC 1 stream, interval 0" in c["measurements"]:
        rows.append(["gRPC, 1 stream, --stream-interval-ms 0 (a message per token)",
                     _med(c, "gRPC 1 stream, interval 0"), ""])
    for n in s["streams"]:
        key = "gRPC 1 stream" if n == 1 else f"gRPC {n} streams"
        ratio = c["ratios"].get(f"gRPC {n} streams / 1 stream")
        paced = f" (stream interval {interval} ms)" if interval is not None else ""
        rows.append([f"gRPC, {n} concurrent stream{'s' if n > 1 else ''}{paced}", _med(c, key),
                     _x(ratio) + (" of 1 stream" if ratio else "")])
    if "HTTP 1 stream" in c["measurements"]:
        rows.append([f"OpenAI-compatible HTTP, 1 stream (server-sent events{', ' + str(interval) + ' ms interval' if interval is not None else ''}; the `openai` client)",
                     _med(c, "HTTP 1 stream"), ""])
    r = c["ratios"].get("in-process b1 / gRPC 1 stream")
    text = table(["path", "aggregate tok/s", ""], rows)
    if r:
        text += (f"\n\ngRPC cost at batch 1: in-process / gRPC = {_x(r)} ({(r['value'] - 1) * 100:+.1f}% time), "
                 f"{mark(r)}")
    r0 = c["ratios"].get("in-process b1 / gRPC 1 stream, interval 0")
    if r0:
        text += f"; with a message per token (interval 0) {_x(r0)}"
    rh = c["ratios"].get("in-process b1 / HTTP 1 stream")
    if rh:
        text += (f"\n\nHTTP cost at batch 1: in-process / HTTP streaming = {_x(rh)} ({(rh['value'] - 1) * 100:+.1f}% time), "
                 f"{mark(rh)}")
    cpu = c["details"].get("cpu_ms_per_token")
    if cpu:
        text += "\n\nCPU time per token at batch 1 (all threads): " + ", ".join(f"{k} {v:.2f} ms" for k, v in cpu.items())
    return text


def thinking(c: dict, s: dict) -> str:
    rows = []
    ended = c["details"].get("thinking_ended", {})
    for budget in s["budgets"]:
        r = c["ratios"].get(f"single / two calls {budget}")
        rows.append([str(budget), _med(c, f"single pass {budget}"), _med(c, f"two calls {budget}"),
                     _med(c, f"call 2 prefill {budget}"), _x(r), mark(r), _med(c, f"two calls transformers {budget}"),
                     _x(c["ratios"].get(f"single / two calls transformers {budget}")),
                     "; ".join(ended.get(f"single {budget}", {})), "; ".join(ended.get(f"two calls {budget}", {}))])
    return table(["budget B", "single pass s", "two calls s", "of which call 2's prefill s", "single / two", "target",
                   "two calls on transformers s", "single / two on transformers",
                   "single pass: thinking ended by", "two calls: how call 1 ended"], rows)


def memory(c: dict, s: dict) -> str:
    mib = lambda key: f"{c['measurements'][key]['median'] / 2**20:.0f}" if key in c["measurements"] else "-"
    labels = [k[: -len(" loaded")] for k in c["measurements"] if k.endswith(" loaded") and " planned" not in k]
    top = lambda key: f"{max(c['measurements'][key]['runs']) / 2**20:.0f}"
    rows = [[v, mib(f"{v} loaded"), mib(f"{v} planned loaded"), _x(c["ratios"].get(f"{v} loaded / planned")),
             mib(f"{v} peak"), top(f"{v} peak"), mib(f"{v} planned peak"), _x(c["ratios"].get(f"{v} peak / planned")),
             str(_runs(c, f"{v} peak"))] for v in labels]
    return table(["variant", "RSS after load MiB", "plan: weights + overhead MiB", "measured / plan",
                   f"peak RSS MiB ({s['memory_batch']} x {s['memory_context']} tokens)", "largest peak MiB",
                   "plan total MiB", "median peak / plan", "processes"], rows)


def bandwidth(c: dict, s: dict) -> str:
    m = c["measurements"]
    bw = table(["bandwidth (numpy, arrays of %d MiB)" % (s["bandwidth_bytes"] >> 20), "GB/s"],
                [[k, _med(c, k)] for k in m if k.startswith(("copy", "read"))])
    labels = [k[:-3] for k in m if k.endswith(" b1")]
    rows = []
    for v in labels:
        b = c["details"][f"{v} bytes per token"]
        rows.append([v, f"{b['total'] / 2**20:.1f}", _med(c, f"{v} ceiling (copy)"), _med(c, f"{v} ceiling (read)"),
                     _med(c, f"{v} b1"), f"{c['ratios'][f'{v} b1 / ceiling (copy)']['value'] * 100:.0f}%",
                     f"{c['ratios'][f'{v} b1 / ceiling (read)']['value'] * 100:.0f}%", mark(c["ratios"][f"{v} b1 / ceiling (copy)"])])
    return bw + "\n\n" + table(["variant", "MiB per token", "ceiling tok/s (copy bw)", "ceiling tok/s (read bw)",
                                 "measured b1 tok/s", "fraction (copy)", "fraction (read)", "target"], rows)


def profile(c: dict, s: dict) -> str:
    parts = []
    for v, d in c["details"].items():
        if not isinstance(d, dict) or "by_op_share" not in d:
            continue
        plain, wall, run, kern = (c["measurements"][f"{v} {k}"]["median"]
                                  for k in ("wall", "wall, profiled", "model_run", "kernels"))
        head = (f"**{v}**, per model call: unprofiled wall {plain:.1f} ms; profiled wall {wall:.1f} ms"
                f" = engine outside ONNX Runtime {wall - run:.1f} ms"
                f" + ONNX Runtime Run {run:.1f} ms (kernels {kern:.1f} ms in {d['kernels_per_call']} kernel calls,"
                f" between kernels {run - kern:.1f} ms)")
        rows = [[op, f"{ms:.2f}", f"{d['by_op_share'][op] * 100:.0f}%"] for op, ms in d["by_op_ms_per_call"].items()]
        parts.append(head + "\n\n" + table(["op type", "kernel ms / call", "share of kernel time"], rows))
    return "\n\n".join(parts)


def generic(c: dict, s: dict) -> str:
    rows = [[k, m["unit"], num(m["median"]), str(len(m["runs"]))] for k, m in c["measurements"].items()]
    return table(["measurement", "unit", "median", "runs"], rows)


RENDER = {"decode": decode, "prefill": prefill, "service": service, "thinking": thinking, "memory": memory,
          "bandwidth": bandwidth, "profile": profile}


def targets(results: dict) -> str:
    rows = [[name, key, _x(r), r["target"], "met" if r["met"] else "**missed**"]
            for name, c in results["cases"].items() for key, r in c["ratios"].items() if r["target"]]
    return table(["case", "ratio", "value", "target", ""], rows)


def render(results: dict) -> str:
    s = results["meta"]["settings"]
    out = ["### Targets", "", targets(results)]
    if "spinning" in s:
        out += ["", f"Our engines ran with ONNX Runtime thread spinning `{s['spinning']}`; `+n` rows and the service "
                    "case with `never`, the service's default."]
    for name, c in results["cases"].items():
        out += ["", f"### {name}", "", RENDER.get(name, generic)(c, s), "",
                f"_load average (1/5/15 min) at start {c['load']['start']}, at end {c['load']['end']}; "
                f"{c['seconds']:.0f} s_"]
        out += [f"- {n}" for n in c["notes"]]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results.json")
    print(render(json.loads(path.read_text())))
