"""`nemotron-edge doctor`: check this machine for the service and print a fix for each problem."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_runtime.doctor import FAIL, PASS, run_checks
from edge_runtime.service.config import ConfigError, ServiceConfig, apply_overrides, load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor", help="check Python, packages, native kernels, GPU, bundle, memory and socket for the service")
    parser.add_argument("--config", type=Path, default=None,
                        help="service config to check against (default: /etc/nemotron-edge/config.toml if it exists)")
    parser.add_argument("--bundle", default=None, help="bundle directory to verify (overrides the config)")
    parser.add_argument("--budget", default=None, help="memory budget to check, e.g. 24GiB (overrides the config)")
    parser.add_argument("--custom-op-library", default=None,
                        help="native kernel library to check (overrides the config)")
    parser.add_argument("--http-listen", action="append", default=None, metavar="ADDRESS",
                        help="OpenAI-compatible HTTP API address to check, repeatable (overrides the config)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = ServiceConfig()
    error = None
    try:
        config = load_config(args.config)
        config = apply_overrides(config, bundle=args.bundle, memory_budget=args.budget,
                                 custom_op_library=args.custom_op_library, http_listen=args.http_listen)
    except ConfigError as e:
        error = str(e)
    results = run_checks(config, config_error=error)
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"[{r.status}] {r.name:<{width}}  {r.detail}")
        if r.fix and r.status != PASS:
            print(f"       {'':<{width}}  fix: {r.fix}")
    failures = sum(r.status == FAIL for r in results)
    print(f"{failures} failure(s), {sum(r.status == 'WARN' for r in results)} warning(s)")
    return 1 if failures else 0
