"""Jetson tooling: device detection, telemetry parsing, install and warm-up helpers. No torch."""
