"""What "ours" means in a row: a bundle format, with or without the native custom-op kernels.

A variant is written `fp32`, `int4`, `int4-acc0` (stock ONNX Runtime: the custom ops run as their
ONNX function bodies) or with `+k` (`int4+k`: kernels/build/libnemotron_edge_ops.so registered),
`+p` to force ONNX Runtime's weight prepacking on (the runtime turns it off for float bundles so that the
weights are resident once; `fp32+k+p` shows what that costs in speed), and `+n` for the service's default
thread policy, spinning "never".
Every engine runs ONNX Runtime's CPU provider with `threads` intra-op threads, as transformers runs
with torch.set_num_threads(threads), and with the run's `spinning` (bench.settings: "brief", spinning
between kernels as torch's OpenMP threads spin between parallel regions) unless the variant says `+n`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import artifacts
from edge_runtime.engine.engine import Engine, EngineConfig
from edge_runtime.engine.providers import ProviderConfig
from edge_runtime.engine.records import GenerationRequest
from edge_runtime.engine.sampler import SamplingParams
from edge_runtime.engine.scheduler import SchedulerConfig

GREEDY = SamplingParams(greedy=True)


@dataclass(frozen=True)
class Variant:
    fmt: str
    kernels: bool = False
    prepack: bool = False
    never_spin: bool = False

    @classmethod
    def parse(cls, text: str) -> "Variant":
        fmt, *flags = text.split("+")
        if fmt not in artifacts.FORMATS or not set(flags) <= {"k", "p", "n"}:
            raise ValueError(f"variant {text!r}: use FORMAT[+k][+p][+n], FORMAT one of {', '.join(artifacts.FORMATS)}")
        return cls(fmt, "k" in flags, "p" in flags, "n" in flags)

    @property
    def label(self) -> str:
        return self.fmt + ("+k" if self.kernels else "") + ("+p" if self.prepack else "") + ("+n" if self.never_spin else "")


@dataclass(frozen=True)
class Env:
    """What every case needs: where the bundles are, the threads, the kernel library (None: not available)."""

    cache: Path
    preset: str
    threads: int
    kernel_library: str | None
    spinning: str  # ProviderConfig.spinning of every engine, unless a variant says +n

    def bundle(self, fmt: str) -> Path:
        return artifacts.bundle(self.cache, self.preset, fmt)

    @property
    def checkpoint(self) -> Path:
        return artifacts.checkpoint(self.cache, self.preset)

    @property
    def vocab(self) -> int:
        return json.loads((self.checkpoint / "config.json").read_text())["vocab_size"]

    def preferred(self, fmt: str) -> Variant:
        """`fmt` with the native kernels when they are available."""
        return Variant(fmt, kernels=self.kernel_library is not None)

    def available(self, variants: list[Variant]) -> list[Variant]:
        return [v for v in variants if not v.kernels or self.kernel_library]

    def providers(self, v: Variant) -> ProviderConfig:
        return ProviderConfig(intra_op_threads=self.threads, custom_op_library=self.kernel_library if v.kernels else None,
                              disable_prepacking=False if v.prepack else None,
                              spinning="never" if v.never_spin else self.spinning)

    def engine(self, v: Variant, max_batch: int, scheduler: SchedulerConfig | None = None, **config) -> Engine:
        return Engine(self.bundle(v.fmt), EngineConfig(max_batch=max_batch, providers=self.providers(v),
                                                       scheduler=scheduler or SchedulerConfig(), **config))


def prompt_ids(seed: int, n: int, vocab: int) -> list[int]:
    """n token ids drawn from the ordinary vocabulary (ids below 100 hold the special tokens)."""
    return [int(t) for t in np.random.RandomState(seed).randint(100, vocab, n)]


def generate_batch(engine: Engine, prompts: list[list[int]], new_tokens: int) -> None:
    """Greedy, EOS ignored, every prompt one request submitted together; checks every request got its tokens."""
    handles = [engine.submit(GenerationRequest(p, GREEDY, max_tokens=new_tokens, ignore_eos=True)) for p in prompts]
    engine.run_until_done(handles)
    bad = [h.final for h in handles if h.final is None or len(h.final.token_ids) != new_tokens]
    if bad:
        raise RuntimeError(f"generation ended early: {bad[0]}")
