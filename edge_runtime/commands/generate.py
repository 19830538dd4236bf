"""`nemotron-edge generate`: one raw-prompt (or token-id) generation, in process, streamed to stdout."""

from __future__ import annotations

import argparse
import json
import sys

from edge_runtime.bundle.reader import BundleError
from edge_runtime.bundle.signature import KeyFileError, load_trusted_keys
from edge_runtime.bundle.demo import resolve_bundle
from edge_runtime.engine.engine import Engine, EngineConfig
from edge_runtime.engine.records import Delta, GenerationRequest, RequestError
from edge_runtime.engine.sampler import SamplingParams


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate from a raw prompt or token ids, in process")
    p.add_argument("--bundle", help="bundle directory (default: the embedded demo bundle)")
    p.add_argument("--trusted-key", action="append", default=[], metavar="PUB",
                   help="Ed25519 public key (PEM) the bundle must be signed by, repeatable")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (needs a bundle with a tokenizer)")
    src.add_argument("--token-ids", help="comma-separated prompt token ids, e.g. 1,2,3")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--greedy", action="store_true", help="greedy decoding (the default unless --temperature is given)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-sequence token")
    p.add_argument("--json", action="store_true", help="print one JSON object: token_ids, text, finish_reason, usage")
    p.set_defaults(func=run)


def parse_token_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise RequestError("--token-ids", f"expected comma-separated integers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    try:
        return generate(Engine(resolve_bundle(args.bundle), EngineConfig(trusted_keys=load_trusted_keys(args.trusted_key))), args)
    except (BundleError, RequestError, KeyFileError) as e:
        print(f"nemotron-edge generate: {e}", file=sys.stderr)
        return 2


def generate(engine: Engine, args: argparse.Namespace) -> int:
    """The generation `args` ask for, on `engine`, printed; the exit code. A failed generation prints its error."""
    if args.prompt is not None:
        if engine.tokenizer is None:
            raise RequestError("--prompt", "this bundle has no tokenizer; use --token-ids")
        prompt_ids = engine.tokenizer.encode(args.prompt, add_special_tokens=False).ids
    else:
        prompt_ids = parse_token_ids(args.token_ids)
    sampling = SamplingParams(greedy=True) if args.greedy or args.temperature is None else SamplingParams(
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    request = GenerationRequest(prompt_ids, sampling, max_tokens=args.max_new_tokens,
                                stop_strings=args.stop, ignore_eos=args.ignore_eos)
    stream = None if args.json else (lambda e: isinstance(e, Delta) and print(e.text, end="", flush=True))
    handle = engine.submit(request, stream)
    engine.run_until_done([handle])
    final = handle.final
    if args.json:
        out = {"token_ids": final.token_ids, "finish_reason": final.finish_reason,
               "usage": {"prompt_tokens": final.usage.prompt_tokens, "completion_tokens": final.usage.completion_tokens}}
        if engine.tokenizer is not None:
            out["text"] = final.answer_text
        if final.error is not None:
            out["error"] = final.error
        print(json.dumps(out))
    else:
        print()
    if final.finish_reason == "error":
        print(f"nemotron-edge generate: {final.error}", file=sys.stderr)
        return 1
    return 0
