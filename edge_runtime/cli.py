"""The `nemotron-edge` command line: one subcommand per module, each registered by that module's `register()`.

A command module exposes `register(subparsers) -> None`, which adds its parser and sets `func` to a
callable taking the parsed arguments and returning an exit code. Workstation-only commands (synth, export)
live in `nemotron_export` and need torch; they are listed here but imported only when torch is present,
so the device's `nemotron-edge --help` works without it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Device-side command modules (no torch).
RUNTIME_COMMANDS: list[str] = [
    "edge_runtime.commands.generate",
    "edge_runtime.commands.chat",
    "edge_runtime.commands.plan",
    "nemotron_jetson.commands",
    "edge_runtime.commands.doctor",
    "edge_runtime.commands.serve",
]
# Workstation-side command modules (need the `export` extra).
EXPORT_COMMANDS: list[str] = [
    "nemotron_export.commands",
]
EXPORT_ONLY_DEPENDENCIES = {"torch", "onnx", "onnxscript", "safetensors", "tqdm"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nemotron-edge",
        description="Run NVIDIA-Nemotron-Nano-9B-v2 on the edge: export, plan, generate, chat, serve.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in RUNTIME_COMMANDS:
        module = _import_optional(name)
        if module is not None:
            module.register(sub)
    for name in EXPORT_COMMANDS:
        module = _import_optional(name)
        if module is not None:
            module.register(sub)
        else:
            _register_missing_export(sub)
    return parser


def _import_optional(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in EXPORT_ONLY_DEPENDENCIES:
            return None
        raise


def _register_missing_export(sub: argparse._SubParsersAction) -> None:
    for cmd in ("synth", "export"):
        p = sub.add_parser(cmd, help=f"{cmd} (needs the exporter: pip install 'nemotron-edge[export]' torch==2.13.0)")
        p.set_defaults(func=_need_export_extra)


def _need_export_extra(args: argparse.Namespace) -> int:
    print(
        f"nemotron-edge {args.command}: the exporter is not installed on this machine. "
        "Install it with: pip install 'nemotron-edge[export]' torch==2.13.0",
        file=sys.stderr,
    )
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
