"""nemotron-edge's device runtime: loads an exported bundle and generates on ONNX Runtime, in process or as a
gRPC service. Never imports torch.

The names below are the public API; import them from here (`from edge_runtime import Engine, Chat`), so
that a move inside the packages breaks nobody. They load on first use: a client that imports only
`EdgeClient` never loads ONNX Runtime.

  in process   Engine, EngineConfig, EngineStatus, Sequence (a submitted request: cancel, wait, events),
               load_engine, LoadedEngine, ProviderConfig, SchedulerConfig
  chat         Chat, ChatRequest, ThinkingDefaults, RequestLimits, ResponseFormat, FormatKind
  records      GenerationRequest, SamplingParams, ThinkingConfig, Priority, Delta, ToolCallRecord, Final,
               Usage, Timings, Event, Channel, FinishReason, ThinkingEnd, GrammarOutcome, RequestError,
               QueueFullError, EngineUnavailableError
  bundles      open_bundle, Bundle, BundleError, DEMO_BUNDLE
  the service  EdgeClient, EdgeError (the client; `nemotron-edge serve` runs the server)

Packages: `bundle/` (the bundle and the model it describes), `engine/` (generation in process), `service/`
(the gRPC service), `client/`, `api/` (edge.proto's generated code and its enum tables), `commands/` (the
CLI's subcommands); `cli.py` and `doctor.py` are entry points.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "edge_runtime.engine.engine": ("Engine", "EngineConfig", "EngineStatus"),
    "edge_runtime.engine.sequence": ("Sequence",),
    "edge_runtime.engine.loading": ("load_engine", "LoadedEngine"),
    "edge_runtime.engine.providers": ("ProviderConfig",),
    "edge_runtime.engine.scheduler": ("SchedulerConfig",),
    "edge_runtime.engine.chat": ("Chat", "ChatRequest", "ThinkingDefaults"),
    "edge_runtime.engine.limits": ("RequestLimits",),
    "edge_runtime.engine.answer_format": ("ResponseFormat", "FormatKind"),
    "edge_runtime.engine.records": (
        "GenerationRequest", "SamplingParams", "ThinkingConfig", "Priority", "Delta", "ToolCallRecord", "Final",
        "Usage", "Timings", "Event", "Channel", "FinishReason", "ThinkingEnd", "GrammarOutcome", "RequestError",
        "QueueFullError", "EngineUnavailableError",
    ),
    "edge_runtime.bundle.reader": ("open_bundle", "Bundle"),
    "edge_runtime.bundle.checks": ("BundleError",),
    "edge_runtime.bundle.demo": ("DEMO_BUNDLE",),
    "edge_runtime.client": ("EdgeClient", "EdgeError"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'edge_runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
