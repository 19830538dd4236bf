"""Engine assembly: open a bundle into a warmed-up, running engine, with its chat front end and the request
limits for its context. The service and the commands that serve use it; settings come in as the engine's
own records (the service's config file turns into them, edge_runtime/service/config.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.engine.chat import Chat, ThinkingDefaults
from edge_runtime.engine.engine import Engine, EngineConfig
from edge_runtime.engine.limits import RequestLimits
from edge_runtime.engine.records import FinishReason, GenerationRequest, RequestError, SamplingParams


@dataclass(frozen=True)
class LoadedEngine:
    engine: Engine
    chat: Chat | None  # None: the bundle has no tokenizer or chat template (token-id requests only)
    limits: RequestLimits


def load_engine(bundle: Path, config: EngineConfig, thinking: ThinkingDefaults | None = None,
                limits: Callable[[int], RequestLimits] = RequestLimits.for_context,
                pinned_prompts: tuple[str, ...] = ()) -> LoadedEngine:
    """Open the bundle, warm up with one tiny generation (prefill and decode both run once, so the first real
    request pays no session initialisation) and the grammar compiler's tokenizer (so the first constrained
    request pays no walk over the vocabulary), then start the engine thread. `limits`: the request limits for
    the engine's context. `pinned_prompts`: system prompts whose conversations' shared head is prefilled now
    and kept in the prefix cache for good."""
    engine = Engine(bundle, config)
    bos = engine.model_config.bos_token_id
    warm = engine.generate(GenerationRequest(prompt_ids=[bos if bos is not None else 0], max_tokens=2, ignore_eos=True,
                                             sampling=SamplingParams(greedy=True), request_id="warm-up"))
    if warm.finish_reason is not FinishReason.LENGTH:
        raise RuntimeError(f"warm-up generation failed: {warm.finish_reason} {warm.error or ''}".strip())
    if engine.grammars is not None:
        engine.grammars.tokenizer
    engine.start()
    request_limits = limits(engine.max_context)
    chat = Chat(engine, thinking, request_limits.render) \
        if engine.tokenizer is not None and engine.bundle.chat_template else None
    if pinned_prompts and (chat is None or engine.cache is None):
        raise RequestError("pinned_prompts", "need the prefix cache on and a bundle with a chat template")
    for prompt in pinned_prompts:
        pinned = chat.pin(prompt)
        if pinned.finish_reason is not FinishReason.LENGTH:
            raise RuntimeError(f"pinning a prompt failed: {pinned.finish_reason} {pinned.error or ''}".strip())
    return LoadedEngine(engine, chat, request_limits)
