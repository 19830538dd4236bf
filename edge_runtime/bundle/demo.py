"""The embedded demo bundle: a small model of the real architecture, trained on robot-assistant tasks
(`nemotron-edge train-demo`, checkpoint in models/demo), shipped inside the package in int8 so that
`nemotron-edge serve` works on a fresh machine with no export step and no torch. Regenerate it with
`python -m nemotron_export.demo_bundle` (a test fails when it is stale against the current exporter)."""

from __future__ import annotations

from pathlib import Path

DEMO_BUNDLE = Path(__file__).resolve().parent.parent / "demo_bundle"


def resolve_bundle(path: str | Path | None) -> Path:
    """The bundle to load: `path`, or the demo bundle when none is given."""
    return Path(path) if path else DEMO_BUNDLE
