"""`nemotron-edge serve`: the gRPC service (see service/server.py for what it does and in which order).

Settings come from the TOML config (--config, default /etc/nemotron-edge/config.toml when it exists) with
every flag of service.config.add_arguments overriding it. Without --bundle (and no bundle in the config)
the demo bundle shipped inside the package is served, so `nemotron-edge serve --listen unix:/tmp/e.sock`
works straight after `pip install`.

A bundle path that is a symlink (the `current` link of a versioned install, docs/jetson.md) is resolved once,
at start: the process reads every file of the version it started on, however the link is switched later;
a restart (systemctl try-restart drains first) picks up the new version.

Exit codes: 0 after a drain (SIGTERM/SIGINT), 1 when the bundle cannot be loaded, 2 for a bad setting
(config file, flag, listen address, token file) — reported before anything is loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from edge_runtime.bundle.signature import KeyFileError, load_trusted_keys
from edge_runtime.bundle.demo import DEMO_BUNDLE
from edge_runtime.service.auth import TokenFileError, read_token
from edge_runtime.service.server import ListenError, check_listen, run_service
from edge_runtime.service.config import ConfigError, ServiceConfig, add_arguments, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve the model over gRPC (Unix socket by default)",
        description="Serve chat and generation over gRPC: health, reflection, metrics, systemd notify and drain.")
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        bundle = resolve_bundle(config)
        check_listen(config)
        load_trusted_keys(config.trusted_keys)
        if config.auth_token_file is not None:
            read_token(config.auth_token_file)
    except (ConfigError, ListenError, TokenFileError, KeyFileError) as e:
        print(f"nemotron-edge serve: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    telemetry = _telemetry()
    try:
        return asyncio.run(run_service(config, bundle, telemetry=telemetry))
    except ListenError as e:  # binding failed (address in use, socket directory not writable)
        print(f"nemotron-edge serve: {e}", file=sys.stderr)
        return 2


def resolve_bundle(config: ServiceConfig) -> Path:
    """The bundle directory to serve, every symlink on its path resolved (once, here)."""
    if config.bundle is not None:
        if not config.bundle.is_dir():
            raise ConfigError(f"--bundle: {config.bundle} is not a directory")
        return config.bundle.resolve()
    if not (DEMO_BUNDLE / "manifest.json").is_file():
        raise ConfigError(f"--bundle: none given and the demo bundle is not installed at {DEMO_BUNDLE}; "
                          "export one with `nemotron-edge export` and pass --bundle DIR")
    return DEMO_BUNDLE


def _telemetry():
    """Board telemetry for GetStatus on a Jetson; nothing elsewhere."""
    try:
        from nemotron_jetson.telemetry import TelemetrySource

        source = TelemetrySource()
    except Exception as e:  # telemetry is a nicety: never a reason not to serve
        logging.getLogger(__name__).warning("no board telemetry: %s", e)
        return None
    return source if source.info.is_jetson else None
