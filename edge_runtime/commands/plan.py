"""`nemotron-edge plan`: print the memory plan for a config.json or an exported bundle under a budget."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_runtime.bundle.memory_plan import (
    DEFAULT_GROUP_SIZE,
    DEFAULT_PREFILL_CHUNK,
    RUNTIME_OVERHEAD_BYTES,
    WEIGHT_FORMATS,
    MemoryPlan,
    MemoryPlanError,
    plan_for_bundle,
    plan_memory,
)
from edge_runtime.bundle.reader import BundleError, open_bundle
from edge_runtime.bundle.model_config import ConfigError, ModelConfig
from edge_runtime.engine.providers import ProviderConfig
from edge_runtime.service.config import parse_providers
from edge_runtime.bundle.units import SizeError, format_bytes, parse_bytes

GRID_CONTEXTS = (2048, 8192, 32768, 131072)
DEFAULT_WEIGHTS = "fp16"
DEFAULT_MAX_BATCH = 8


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan",
        help="how many sequences of what context fit a memory budget",
        description="Memory plan: weight bytes, per-sequence state, working memory, and what fits the budget.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="a Hugging Face config.json (or the folder holding it)")
    source.add_argument("--bundle", type=Path, help="an exported bundle folder (reads its manifest.json)")
    p.add_argument("--budget", required=True, help="memory budget, e.g. 96GiB or 24GB")
    p.add_argument("--weights", choices=WEIGHT_FORMATS,
                   help=f"weight format (default: the bundle's, or {DEFAULT_WEIGHTS} with --config)")
    p.add_argument("--context", type=int, default=8192, help="tokens per sequence to plan for (default 8192)")
    p.add_argument("--group-size", type=int, help=f"int8/int4 block size (default: the bundle's, or {DEFAULT_GROUP_SIZE})")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help="sequences in one model call, each with its row of decode working memory (default 8, the exporter's); "
                        "more sequences take turns and cost only their state")
    p.add_argument("--prefill-chunk", type=int, default=DEFAULT_PREFILL_CHUNK, help="prefill chunk in tokens")
    p.add_argument("--providers", default="cpu",
                   help="execution providers as the service runs them, comma-separated (default cpu): on the CPU "
                        "provider alone, quantized weights are pre-packed, a copy per graph")
    p.add_argument("--overhead", default=str(RUNTIME_OVERHEAD_BYTES), help="runtime overhead (default 150MiB)")
    p.add_argument("--prefix-cache-budget", default="0", help="the prefix cache's share of the budget (default 0)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        plan = _plan(args)
    except (ConfigError, MemoryPlanError, SizeError, BundleError) as e:
        print(f"nemotron-edge plan: {e}", file=sys.stderr)
        return 2
    if args.json:
        out = plan.to_dict()
        out["grid"] = {str(c): plan.max_sequences_at(c) for c in _grid(plan)}
        print(json.dumps(out, indent=2))
    else:
        print(render(plan, source=str(args.bundle or args.config)))
    return 0


def _plan(args: argparse.Namespace) -> MemoryPlan:
    budget = _size("--budget", args.budget)
    overhead = _size("--overhead", args.overhead)
    try:
        providers = ProviderConfig(providers=list(parse_providers(args.providers.split(","))))
    except ValueError as e:
        raise MemoryPlanError(f"--providers: {e}") from None
    common = dict(
        budget_bytes=budget, context=args.context, max_batch=args.max_batch,
        prefill_chunk=args.prefill_chunk, overhead_bytes=overhead,
        prefix_cache_bytes=_size("--prefix-cache-budget", args.prefix_cache_budget),
    )
    if args.config is not None:
        weights = args.weights or DEFAULT_WEIGHTS
        return plan_memory(
            ModelConfig.from_file(args.config), weights, group_size=args.group_size or DEFAULT_GROUP_SIZE,
            prepacked_copies=providers.prepacked_copies(weights), **common,
        )
    bundle = open_bundle(args.bundle, verify=False)
    weights = bundle.weights["format"]
    if args.weights is not None and args.weights != weights:
        raise BundleError(f"--weights: the bundle holds {weights} weights, not {args.weights}")
    return plan_for_bundle(bundle, prepacked_copies=providers.prepacked_copies(weights), **common)


def _size(flag: str, text: str) -> int:
    try:
        return parse_bytes(text)
    except SizeError as e:
        raise SizeError(f"{flag}: {e}") from None


def _grid(plan: MemoryPlan) -> list[int]:
    return [c for c in GRID_CONTEXTS if c <= plan.max_position_embeddings]


def render(plan: MemoryPlan, source: str) -> str:
    """The plan as a table: exact bytes and a readable size per row, then sequences that fit by context."""
    quant = f", group {plan.group_size}" if plan.weights_format in ("int8", "int4") else ""
    rows: list[tuple[str, str, str]] = [
        (f"weights ({plan.parameter_count:,} parameters)", *_b(plan.weight_bytes)),
        ("pre-packed copies of the matmul weights", *_b(plan.prepacked_bytes)),
        ("8-bit matrix dequantized per call (accuracy level 0)", *_b(plan.dequantized_bytes)),
        ("per-sequence fixed state (conv + SSM)", *_b(plan.fixed_state_bytes_per_sequence)),
        ("K/V per token", *_b(plan.kv_bytes_per_token)),
        (f"per sequence at {plan.context} tokens", *_b(plan.sequence_bytes(plan.context))),
        ("working memory: prefill chunk (once)", *_b(plan.prefill_working_bytes)),
        ("batch row: decode working memory (per sequence)", *_b(plan.decode_working_bytes_per_sequence)),
        ("runtime overhead", *_b(plan.overhead_bytes)),
        ("prefix cache share", *_b(plan.prefix_cache_bytes)),
        ("left for sequences", *_b(plan.available_bytes)),
        (f"sequences that fit at {plan.context} tokens", f"{plan.max_sequences:,}", ""),
        ("longest context for one sequence", f"{plan.max_context(1):,}", "tokens"),
    ]
    width = max(len(r[0]) for r in rows)
    num = max(len(r[1]) for r in rows)
    lines = [
        f"memory plan for {source}: {plan.weights_format} weights{quant}, activations {plan.activation_dtype}, "
        f"budget {format_bytes(plan.budget_bytes)} ({plan.budget_bytes:,} bytes)"
        + (f", max batch {plan.max_batch}" if plan.max_batch is not None else ""),
        "",
    ]
    lines += [f"  {name:<{width}}  {value:>{num}}  {human}".rstrip() for name, value, human in rows]
    grid = _grid(plan)
    cells = [(f"{c:,}", f"{plan.max_sequences_at(c):,}") for c in grid]
    col = max(max(len(a), len(b)) for a, b in cells)
    lines += [
        "",
        "  sequences that fit, by context:",
        "  context    " + "  ".join(f"{a:>{col}}" for a, _ in cells),
        "  sequences  " + "  ".join(f"{b:>{col}}" for _, b in cells),
    ]
    return "\n".join(lines)


def _b(n: int) -> tuple[str, str]:
    return f"{n:,}", format_bytes(n)
