"""The `nemotron-edge` command line: one subcommand per module, each registered by that module's `register()`.

A command module exposes `register(subparsers) -> None`, which adds its parser and sets `func` to a
callable taking the parsed arguments and returning an exit code. Registering imports no torch: the
workstation commands (synth, export) import the exporter only when they run, and say how to install it
when it is missing, so the device's `nemotron-edge --help` works without it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: list[str] = [
    "edge_runtime.commands.generate",
    "edge_runtime.commands.chat",
    "edge_runtime.commands.plan",
    "edge_runtime.commands.serve",
    "edge_runtime.commands.doctor",
    "nemotron_jetson.commands",
    "nemotron_export.commands",  # synth, export: need the `export` extra when they run
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nemotron-edge",
        description="Run NVIDIA-Nemotron-Nano-9B-v2 on the edge: export, plan, generate, chat, serve.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
