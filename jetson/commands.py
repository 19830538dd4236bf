"""`nemotron-edge jetson ...`: detect the board, show telemetry, install the service and bundles, warm up its caches."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from nemotron_jetson import bundles, install, warmup
from nemotron_jetson.detect import detect
from nemotron_jetson.telemetry import TegrastatsParser, TelemetrySample, TelemetrySource


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("jetson", help="Jetson tools: detect the board, telemetry, install the service")
    sub = parser.add_subparsers(dest="jetson_command", metavar="JETSON_COMMAND", required=True)

    p = sub.add_parser("detect", help="print the Jetson model, SoC and L4T/JetPack release")
    p.add_argument("--root", type=Path, default=Path("/"), help="read the board's files under this directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_detect)

    p = sub.add_parser("telemetry", help="print board telemetry (tegrastats, else sysfs) as JSON lines")
    p.add_argument("--once", action="store_true", help="print one sample and exit")
    p.add_argument("--root", type=Path, default=Path("/"), help="read sysfs and board files under this directory")
    p.add_argument("--input", type=Path, help="parse a captured tegrastats log instead ('-' for stdin)")
    p.add_argument("--interval-ms", type=int, default=1000, help="tegrastats sampling interval (default: 1000)")
    p.set_defaults(func=_telemetry)

    p = sub.add_parser("install", help="install the systemd service (user, dirs, venv, unit, config)")
    install.add_arguments(p)
    p.set_defaults(func=install.run_command)

    p = sub.add_parser("bundle", help="install a bundle as a new version and switch the service to it safely")
    bundles.add_arguments(p)
    p.set_defaults(func=bundles.run_command)

    p = sub.add_parser("warmup", help="build the TensorRT engine and timing caches for a bundle before the first start")
    warmup.add_arguments(p)
    p.set_defaults(func=warmup.run)


def _detect(args: argparse.Namespace) -> int:
    info = detect(args.root)
    if args.json:
        print(json.dumps({**dataclasses.asdict(info), "is_thor": info.is_thor}))
    else:
        print(info.describe())
    return 0


def _telemetry(args: argparse.Namespace) -> int:
    if args.input is not None:
        return _parse_log(args.input, args.once)
    info = detect(args.root)
    if not info.is_jetson:
        print("telemetry: not a Jetson (no /etc/nv_tegra_release, no tegra SoC in the device tree)", file=sys.stderr)
        return 1
    tegrastats = shutil.which("tegrastats")
    if tegrastats is None or args.root.resolve() != Path("/"):
        sample = TelemetrySource(args.root, info).latest()
        _print(sample)
        return 0
    with subprocess.Popen([tegrastats, "--interval", str(args.interval_ms)], stdout=subprocess.PIPE,
                          text=True) as process:
        try:
            _print_samples(process.stdout or (), args.once)
        except KeyboardInterrupt:
            pass
        finally:
            process.terminate()
    return 0


def _parse_log(path: Path, once: bool) -> int:
    try:
        if str(path) == "-":
            return _print_samples(sys.stdin, once)
        with path.open() as f:
            return _print_samples(f, once)
    except OSError as e:
        print(f"telemetry: cannot read {path}: {e.strerror}", file=sys.stderr)
        return 1


def _print_samples(lines: Iterable[str], once: bool) -> int:
    parser = TegrastatsParser()
    for line in lines:
        sample = parser.parse(line)
        if sample is not None:
            _print(sample)
            if once:
                break
    if parser.malformed:
        print(f"telemetry: {parser.malformed} malformed line(s) or field(s) skipped", file=sys.stderr)
    return 0


def _print(sample: TelemetrySample | None) -> None:
    print(json.dumps(dataclasses.asdict(sample) if sample is not None else None), flush=True)
