"""Shared fixtures: the synthetic tokenizer (as `tokenizers` and transformers load it), and synthetic
checkpoints and their exported bundles, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from nemotron_export.tokenizer_synth import build_tokenizer, load_chat_template, write_tokenizer_files


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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nemotron_export.synth import synth

    return synth("tiny", tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nemotron_export.bundle import ExportOptions, export_bundle

    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("bundle") / "tiny",
                         ExportOptions(max_batch=8, max_context=512), progress=False)


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nemotron_export.synth import synth

    return synth("small", tmp_path_factory.mktemp("ckpt") / "small", seed=0)


@pytest.fixture(scope="session")
def small_bundle(small_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `small` preset in fp32, the benchmark configuration."""
    from nemotron_export.bundle import ExportOptions, export_bundle

    return export_bundle(small_checkpoint, tmp_path_factory.mktemp("bundle") / "small-fp32",
                         ExportOptions(max_batch=8, max_context=1024), progress=False)
