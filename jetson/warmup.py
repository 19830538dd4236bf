"""`nemotron-edge jetson warmup`: build the TensorRT engine and timing caches for a bundle before the service
first starts, so its first start (and TimeoutStartSec) does not pay for the build.

It opens the bundle exactly as the service would (same config file, same execution providers and cache
directories), then runs one prefill of a full chunk and a few decode steps, which makes ONNX Runtime's
TensorRT execution provider build and cache its engines for the configured optimization profiles. On a
machine without TensorRT it still runs (on the providers available) and says which ran.
"""

from __future__ import annotations

import argparse
import sys
import time

from edge_runtime.bundle.reader import BundleError
from edge_runtime.bundle.demo import resolve_bundle
from edge_runtime.engine.records import GenerationRequest
from edge_runtime.engine.sampler import SamplingParams
from edge_runtime.service.config import ConfigFileError, config_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edge_runtime.service.config import add_arguments as add_service_arguments

    add_service_arguments(p)


def run(args: argparse.Namespace) -> int:
    from edge_runtime.engine.engine import Engine

    try:
        config = config_from_args(args)
        bundle = resolve_bundle(config.bundle)
        print(f"warm-up: opening {bundle} with providers {', '.join(config.providers)}", flush=True)
        started = time.monotonic()
        engine = Engine(bundle, config.engine_config())
        print(f"warm-up: sessions ready in {time.monotonic() - started:.1f} s on {engine.runner.active_providers}", flush=True)
        chunk = min(engine.scheduler.config.prefill_chunk, engine.max_context - 9)
        started = time.monotonic()
        final = engine.generate(GenerationRequest([0] * chunk, SamplingParams(greedy=True), max_tokens=8, ignore_eos=True))
        print(f"warm-up: {chunk}-token prefill and {len(final.token_ids)} decode steps in "
              f"{time.monotonic() - started:.1f} s; caches are in place", flush=True)
    except (BundleError, ConfigFileError, ValueError) as e:
        print(f"nemotron-edge jetson warmup: {e}", file=sys.stderr)
        return 2
    return 0 if final.finish_reason == "length" else 1
