"""Subcommands of the `nemotron-edge` CLI, one module each (see edge_runtime.cli); they may import any package."""
