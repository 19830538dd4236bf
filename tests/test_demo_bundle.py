"""The embedded demo bundle is what the current exporter makes, and the device reads it without torch."""

from __future__ import annotations

import json

from edge_runtime.bundle.reader import open_bundle
from edge_runtime.bundle.demo import DEMO_BUNDLE
from nemotron_export.demo_bundle import build_demo_bundle


def test_demo_bundle_is_fresh(tmp_path):
    fresh = build_demo_bundle(tmp_path / "demo")
    shipped = json.loads((DEMO_BUNDLE / "manifest.json").read_text())
    rebuilt = json.loads((fresh / "manifest.json").read_text())
    shipped.pop("exporter_version"), rebuilt.pop("exporter_version")
    assert shipped == rebuilt, "stale demo bundle: regenerate it with `python -m nemotron_export.demo_bundle`"


def test_demo_bundle_verifies():
    bundle = open_bundle(DEMO_BUNDLE)
    assert bundle.has_tokenizer and bundle.chat_template
