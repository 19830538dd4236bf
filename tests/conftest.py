"""Shared fixtures: the native kernel library, the synthetic tokenizer (as `tokenizers` and transformers load
it), and synthetic checkpoints and their exported bundles, built once per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from tokenizers import Tokenizer

from nemotron_export.tokenizer_synth import build_tokenizer, load_chat_template, write_tokenizer_files

# No verdict may depend on how fast this machine is: no per-example deadline, no "too slow" health check.
settings.register_profile("any-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("any-machine")


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def kernel_lib() -> str:
    """Builds (or reuses) kernels/build/libnemotron_edge_ops.so with kernels/build.sh."""
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("g++ not found: the custom-op kernel library cannot be built here")
    proc = subprocess.run(["bash", str(ROOT / "kernels" / "build.sh")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"kernels/build.sh failed:\n{proc.stdout}\n{proc.stderr}"
    lib = ROOT / "kernels" / "build" / "libnemotron_edge_ops.so"
    assert lib.is_file()
    return str(lib)


@pytest.fixture(scope="session")
def synth_tokenizer() -> Tokenizer:
    return build_tokenizer(4096)


@pytest.fixture(scope="session")
def tokenizer_dir(synth_tokenizer: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth_tokenizer")
    write_tokenizer_files(synth_tokenizer, out, load_chat_template())
    return out


@pytest.fixture(scope="session")
def hf_tokenizer(tokenizer_dir: Path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))


def _checkpoint(factory: pytest.TempPathFactory, preset: str) -> Path:
    from nemotron_export.synth import synth

    return synth(preset, factory.mktemp("ckpt") / preset, seed=0)


def _bundle(factory: pytest.TempPathFactory, checkpoint: Path, max_context: int, weights: str = "fp32",
            accuracy_level: int | None = None) -> Path:
    """`checkpoint` exported as `nemotron-edge export --weights WEIGHTS --no-gptq [--accuracy-level L]`
    exports it: int4's mixed plan and sizes as by default, without GPTQ's minutes (these fixtures serve
    memory and graph checks; tests/test_export_quantized.py measures accuracy)."""
    from nemotron_export.bundle import ExportOptions, export_bundle
    from nemotron_export.commands import GROUP_SIZE_BY_FORMAT
    from nemotron_export.onnx_graph import WeightFormat

    fmt = WeightFormat(weights, group_size=GROUP_SIZE_BY_FORMAT.get(weights, 32),
                       **({} if accuracy_level is None else {"accuracy_level": accuracy_level}))
    name = f"{checkpoint.name}-{weights}" + ("" if accuracy_level is None else f"-acc{accuracy_level}")
    return export_bundle(checkpoint, factory.mktemp("bundle") / name,
                         ExportOptions(fmt, max_batch=8, max_context=max_context, gptq=False), progress=False)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory, "tiny")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bundle(tmp_path_factory, tiny_checkpoint, max_context=512)


@pytest.fixture(scope="session")
def tiny_long_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny` with room for prompts that carry tool schemas (and for their answers)."""
    return _bundle(tmp_path_factory, tiny_checkpoint, max_context=2048)


@pytest.fixture(scope="session")
def tiny_int4_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bundle(tmp_path_factory, tiny_checkpoint, max_context=512, weights="int4")


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory, "small")


@pytest.fixture(scope="session")
def small_bundle(small_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `small` preset in fp32, the benchmark configuration."""
    return _bundle(tmp_path_factory, small_checkpoint, max_context=1024)


@pytest.fixture(scope="session")
def small_int4_bundle(small_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bundle(tmp_path_factory, small_checkpoint, max_context=1024, weights="int4")


@pytest.fixture(scope="session")
def small_int8_acc0_bundle(small_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """int8 at MatMulNBits accuracy level 0: the CPU provider dequantizes its 8-bit blocks on every call."""
    return _bundle(tmp_path_factory, small_checkpoint, max_context=1024, weights="int8", accuracy_level=0)
