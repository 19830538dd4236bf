"""Which execution providers run a bundle's graphs, and their options: CPU by default; CUDA; TensorRT
(engine and timing caches, fp16, optimization profiles spanning the manifest's limits); how ONNX Runtime's
idle threads spin, whether it pre-packs weights (which the memory plan counts), and whether the native
kernel library (kernels/) loads."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.bundle.checks import GRAPHS
from edge_runtime.bundle.reader import Bundle
from edge_runtime.engine.state_pool import StateDevice

FLOAT_FORMATS = ("fp32", "fp16", "bf16")
SPINNING = ("always", "in_run", "brief", "never")
BRIEF_SPIN_US = 20  # "brief": how long an idle worker spins before it blocks


@dataclass
class ProviderConfig:
    """Which execution providers run the graphs, in order of preference, and their documented options."""

    providers: list[str] = field(default_factory=lambda: ["cpu"])
    intra_op_threads: int = 0  # 0 = ONNX Runtime's default (one per core)
    cuda: dict[str, str] = field(default_factory=dict)
    tensorrt: dict[str, str] = field(default_factory=dict)
    custom_op_library: str | None = None
    # ONNX Runtime pre-packs constant weights once per session, a second copy each. For float weights
    # we turn that off, so the mapped weights.bin is the only copy, at the cost of MatMul packing the
    # weights on every call (BENCHMARKS.md, fp32+k against fp32+k+p, has both sides).
    # MatMulNBits needs its pre-packed layout to be fast, so quantized bundles keep it (None = decide by
    # the bundle's weight format).
    disable_prepacking: bool | None = None
    # When ONNX Runtime's idle worker threads spin (SPINNING): "always" is its default, spinning on after a
    # Run returns; each session has its own pool, so after a prefill call its threads take cores from the
    # decode session and from every other process on the robot. "in_run" spins only between the kernels
    # of a Run; "brief" too, but at most BRIEF_SPIN_US each time; "never" (ours) blocks at once.
    # `python -m bench.spinning` (BENCHMARKS.md) measures each: spinning gains a little on an idle machine
    # and loses when other work shares the cores, and a robot's CPU is rarely idle.
    spinning: str = "never"

    def __post_init__(self) -> None:
        if self.spinning not in SPINNING:
            raise ValueError(f"spinning: {self.spinning!r} is not one of {', '.join(SPINNING)}")

    def prepacking_disabled(self, weight_format: str) -> bool:
        if self.disable_prepacking is not None:
            return self.disable_prepacking
        return weight_format in FLOAT_FORMATS

    def prepacked_copies(self, weight_format: str) -> int:
        """Copies of the matmul weights the sessions pre-pack beside weights.bin, for the memory plan: one per
        graph on the CPU provider with pre-packing on. The GPU providers copy every weight to device memory
        instead, which the plan counts as the weights themselves (not measured on a GPU)."""
        return 0 if self.providers != ["cpu"] or self.prepacking_disabled(weight_format) else len(GRAPHS)

    def kernel_library(self) -> str | None:
        """The native kernel library the sessions register, if any: only CPU-only sessions do."""
        return self.custom_op_library if registers_kernels(self.providers) else None

    def state_device(self) -> StateDevice:
        """Where the state pool lives: the first provider's device (CUDA memory for CUDA and TensorRT)."""
        if self.providers and self.providers[0] in ("cuda", "tensorrt"):
            return StateDevice("cuda", int(self.cuda.get("device_id", 0)))
        return StateDevice()

    def ort_providers(self, bundle: Bundle, graph: str) -> list:
        out: list = []
        for name in self.providers:
            if name == "cpu":
                out.append("CPUExecutionProvider")
            elif name == "cuda":
                out.append(("CUDAExecutionProvider", {"device_id": "0", **self.cuda}))
            elif name == "tensorrt":
                out.append(("TensorrtExecutionProvider", tensorrt_options(bundle, graph, self.tensorrt)))
            else:
                raise ValueError(f"providers: unknown execution provider {name!r}; use cpu, cuda or tensorrt")
        return out


def registers_kernels(providers: Sequence[str]) -> bool:
    """Whether sessions on these providers register the native kernels. They are CPU kernels: in a GPU
    session they would pull our ops onto the CPU, so there the function bodies run on the GPU instead."""
    return list(providers) == ["cpu"]


def custom_op_library_error(path: str | Path) -> str | None:
    """Why ONNX Runtime cannot register the native kernel library at `path` (missing, being rebuilt, built for
    another ONNX Runtime), or None when it can, as `OrtModelRunner` does for CPU sessions."""
    if not Path(path).is_file():
        return "no such file"
    import onnxruntime as ort

    try:
        ort.SessionOptions().register_custom_ops_library(str(path))
    except Exception as e:  # ONNX Runtime raises a plain RuntimeError (Fail) with the loader's message
        return str(e)
    return None


def tensorrt_options(bundle: Bundle, graph: str, user: dict[str, str]) -> dict[str, str]:
    """TensorRT EP options (names as documented by ONNX Runtime): caches under the configured directory,
    fp16, and explicit optimization profiles spanning batch 1..max_batch and context up to max_context."""
    cache = Path(user.get("cache_dir", os.environ.get("NEMOTRON_EDGE_STATE_DIR", "/var/lib/nemotron-edge")))
    limits = bundle.limits
    mb, mc = limits["max_batch"], limits["max_context"]
    specs = bundle.state_layout
    def profile(batch: int, seq: int, capacity: int) -> str:
        shapes = [f"input_ids:{batch}x{1 if graph == 'decode' else seq}", f"past_lengths:{batch}"]
        if graph == "prefill":
            shapes.append(f"lengths:{batch}")
        for s in specs:
            dims = [batch, *s.shape]
            if s.per_token:
                dims[2] = capacity
            shapes.append(f"{s.name}:" + "x".join(str(d) for d in dims))
        return ",".join(shapes)
    opts = {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache / "trt-engines"),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache / "trt-timing"),
        "trt_fp16_enable": "True",
        "trt_profile_min_shapes": profile(1, 1, 1),
        "trt_profile_opt_shapes": profile(max(1, mb // 2), min(512, mc), mc),
        "trt_profile_max_shapes": profile(mb, mc, mc),
    }
    opts.update({k: v for k, v in user.items() if k != "cache_dir"})
    return opts
