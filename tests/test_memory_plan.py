"""The memory plan counts the real model's parameters and state exactly and says what fits a budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_runtime.cli import main
from edge_runtime.bundle.memory_plan import (
    LM_HEAD,
    MATMUL,
    RUNTIME_OVERHEAD_BYTES,
    MemoryPlanError,
    Tensor,
    WeightStorage,
    parameter_count,
    parameter_tensors,
    plan_memory,
)
from edge_runtime.bundle.model_config import ModelConfig
from edge_runtime.bundle.reader import SCHEMA_VERSION
from edge_runtime.engine.providers import ProviderConfig
from edge_runtime.bundle.state_layout import state_layout

REAL_CONFIG = Path("/work/shared/reference/nemotron-nano-9b-v2.config.json")
GiB = 1024**3


@pytest.fixture(scope="module")
def real() -> ModelConfig:
    return ModelConfig.from_file(REAL_CONFIG)


def test_parameter_count_matches_the_published_8_89b(real):
    assert parameter_count(real) == pytest.approx(8.89e9, rel=0.01)


def test_parameter_tensors_have_hf_shapes(real):
    shapes = {t.name: t.shape for t in parameter_tensors(real)}
    assert shapes["backbone.layers.0.mixer.in_proj.weight"] == (10240 + 12288 + 128, 4480)
    assert shapes["backbone.layers.0.mixer.conv1d.weight"] == (12288, 1, 4)
    assert shapes["backbone.layers.0.mixer.out_proj.weight"] == (4480, 10240)
    attn = real.layers_of("*")[0]
    assert shapes[f"backbone.layers.{attn}.mixer.k_proj.weight"] == (1024, 4480)
    assert shapes[f"backbone.layers.{attn}.mixer.o_proj.weight"] == (4480, 5120)
    assert shapes["backbone.layers.1.mixer.down_proj.weight"] == (4480, 15680)
    assert shapes["lm_head.weight"] == (131072, 4480)


def test_ssm_state_and_kv_per_token_of_the_real_model(real):
    plan = plan_memory(real, "fp16", 64 * GiB, 8192)
    ssm = 27 * 128 * 80 * 128 * 4
    conv = 27 * (10240 + 2 * 8 * 128) * 3 * 2
    assert plan.fixed_state_bytes_per_sequence == ssm + conv
    assert plan.kv_bytes_per_token == 4 * 2 * 8 * 128 * 2 == 16 * 1024
    assert plan.sequence_bytes(8192) == ssm + conv + 8192 * 16 * 1024


def test_fp16_weights_are_two_bytes_per_parameter(real):
    plan = plan_memory(real, "fp16", 64 * GiB, 8192)
    assert plan.weight_bytes == 2 * parameter_count(real)
    assert plan_memory(real, "fp32", 64 * GiB, 8192).weight_bytes == 4 * parameter_count(real)


def test_int4_projection_is_4_5_bits_per_weight(real):
    proj = next(t for t in parameter_tensors(real) if t.role == MATMUL)
    fp16 = WeightStorage("fp16", "float16").tensor_bytes(proj)
    int4 = WeightStorage("int4", "float16", group_size=32).tensor_bytes(proj)
    int8 = WeightStorage("int8", "float16", group_size=32).tensor_bytes(proj)
    assert int4 / fp16 == pytest.approx(4.5 / 16)
    assert int8 / fp16 == pytest.approx(8.5 / 16)
    with_zeros = WeightStorage("int4", "float16", group_size=32, zero_points=True).tensor_bytes(proj)
    assert with_zeros / fp16 == pytest.approx(4.625 / 16)  # a 4-bit zero point per block of 32


def test_blocks_are_padded_to_whole_groups():
    t = Tensor("w", (2, 33), MATMUL)  # 33 inputs -> 2 blocks of 32
    assert WeightStorage("int4", "float32", group_size=32).tensor_bytes(t) == 2 * 2 * 16 + 2 * 2 * 4


def test_lm_head_at_8_bits_and_embeddings_as_int8_rows(real):
    """int4 bundles keep lm_head at 8 bits (8.5 bits per weight with group-32 scales in float16); quantized
    embeddings are int8 rows with one float32 scale each."""
    plan = plan_memory(real, "int4", 64 * GiB, 8192)
    table = real.vocab_size * real.hidden_size
    unquantized_head = plan_memory(real, "int4", 64 * GiB, 8192, quantize_lm_head=False)
    assert unquantized_head.weight_bytes - plan.weight_bytes == pytest.approx(2 * table - table * 8.5 / 8)
    quantized_emb = plan_memory(real, "int4", 64 * GiB, 8192, quantize_embeddings=True)
    assert plan.weight_bytes - quantized_emb.weight_bytes == 2 * table - (table + 4 * real.vocab_size)
    # Everything besides embedding, lm_head and projections is small: the rest is ~4.5/16 of fp16.
    fp16 = plan_memory(real, "fp16", 64 * GiB, 8192).weight_bytes
    expected = (fp16 - 4 * table) * 4.5 / 16 + 2 * table + table * 8.5 / 8
    assert plan.weight_bytes == pytest.approx(expected, rel=0.01)


def test_tied_embeddings_have_no_lm_head(real):
    tied = ModelConfig.from_hf_dict({**real.to_hf_dict(), "tie_word_embeddings": True})
    assert not any(t.role == LM_HEAD for t in parameter_tensors(tied))
    assert parameter_count(real) - parameter_count(tied) == real.vocab_size * real.hidden_size


@pytest.mark.parametrize("weights", ["fp16", "int8", "int4"])
@pytest.mark.parametrize("budget_gib", [24, 64, 110])
def test_plan_of_the_real_model_is_consistent(real, weights, budget_gib):
    budget = budget_gib * GiB
    plan = plan_memory(real, weights, budget, 8192, prefill_chunk=128)
    n = plan.max_sequences
    assert n >= 1
    assert plan.fits(n, 8192) and not plan.fits(n + 1, 8192)
    assert plan.total_bytes(n, 8192) <= budget < plan.total_bytes(n + 1, 8192)
    longest = plan.max_context(1)
    assert plan.fits(1, longest)
    assert longest == real.max_position_embeddings or not plan.fits(1, longest + 1)
    assert plan.overhead_bytes == RUNTIME_OVERHEAD_BYTES


def test_smaller_weights_fit_more_sequences(real):
    fits = [plan_memory(real, w, 24 * GiB, 32768, prefill_chunk=64).max_sequences for w in ("fp16", "int8", "int4")]
    assert fits[0] < fits[1] < fits[2]


def test_max_batch_bounds_the_batch_rows_not_the_sequences(real):
    """Sequences beyond max_batch rows take turns in the rows: each costs its state, no more."""
    plan = plan_memory(real, "int4", 110 * GiB, 2048, max_batch=8)
    unbounded = plan_memory(real, "int4", 110 * GiB, 2048)
    assert plan.max_sequences >= unbounded.max_sequences > 8
    assert plan.fits(plan.max_sequences, 2048) and not plan.fits(plan.max_sequences + 1, 2048)
    extra = plan.total_bytes(20, 2048) - plan.total_bytes(19, 2048)
    assert extra == plan.sequence_bytes(2048)
    assert plan.total_bytes(8, 2048) - plan.total_bytes(7, 2048) == plan.sequence_bytes(2048) + plan.decode_working_bytes_per_sequence
    longest = plan.max_context(200)
    assert plan.fits(200, longest) and not plan.fits(200, longest + 1)


def test_manifest_state_specs_override_the_config_layout(real):
    # A bundle whose K/V is float32 costs twice the K/V per token of the config's float16 layout.
    specs = state_layout(real, "float32")
    plan = plan_memory(real, "int4", 64 * GiB, 8192, activation_dtype="float32", state_specs=specs)
    assert plan.kv_bytes_per_token == 32 * 1024


def test_budget_too_small_for_the_weights_says_by_how_much(real):
    plan = plan_memory(real, "fp16", 64 * GiB, 8192)
    short = (plan.base_bytes - 8 * GiB) / GiB
    with pytest.raises(MemoryPlanError, match=rf"^budget_bytes: 8\.00 GiB is {short:.2f} GiB short"):
        plan_memory(real, "fp16", 8 * GiB, 8192)


def test_cpu_sessions_prepack_quantized_weights_only():
    """Quantized bundles on the CPU provider keep pre-packing (prefill and decode: two copies); float bundles
    turn it off unless forced; the GPU providers pre-pack nothing on the host."""
    cpu = ProviderConfig()
    assert cpu.prepacked_copies("int4") == cpu.prepacked_copies("int8") == 2
    assert cpu.prepacked_copies("fp32") == cpu.prepacked_copies("bf16") == 0
    assert ProviderConfig(disable_prepacking=False).prepacked_copies("fp32") == 2
    assert ProviderConfig(providers=["cuda", "cpu"]).prepacked_copies("int4") == 0


def test_prepacked_copies_count_before_any_sequence(real):
    plain = plan_memory(real, "int4", 64 * GiB, 8192)
    packed = plan_memory(real, "int4", 64 * GiB, 8192, prepacked_copies=2)
    assert plain.prepacked_bytes == 0
    # Every projection and lm_head is a MatMulNBits weight; the fp16 embedding table and the norms are not.
    table = real.vocab_size * real.hidden_size * 2
    assert 0.99 * 2 * (plain.weight_bytes - table) < packed.prepacked_bytes < 2 * (plain.weight_bytes - table)
    assert packed.base_bytes - plain.base_bytes == packed.prepacked_bytes
    assert packed.max_sequences < plain.max_sequences


def _matmul_weight_bytes_in_graphs(bundle: Path) -> int:
    """Bytes of the stored tensors that the graphs feed to MatMul (B) or MatMulNBits (B, scales), read from
    the ONNX graphs themselves: what a pre-packing session copies."""
    import onnx

    from edge_runtime.bundle.reader import open_bundle

    b = open_bundle(bundle)
    stored = {t["name"]: t["nbytes"] for t in b.weights["tensors"]}
    fed = {name for graph in ("prefill", "decode")
           for node in onnx.load(b.graph_path(graph), load_external_data=False).graph.node
           if node.op_type in ("MatMul", "MatMulNBits") for name in node.input[1:3] if name in stored}
    assert fed
    return sum(stored[n] for n in fed)


@pytest.mark.parametrize("fixture", ["tiny_bundle", "tiny_int4_bundle"])
def test_bundle_plan_counts_the_matmul_weights_of_its_graphs(fixture, request):
    from edge_runtime.bundle.reader import open_bundle
    from edge_runtime.bundle.memory_plan import plan_for_bundle

    path = request.getfixturevalue(fixture)
    plan = plan_for_bundle(open_bundle(path), GiB, 512, max_batch=8, prepacked_copies=2)
    assert plan.prepacked_bytes == 2 * _matmul_weight_bytes_in_graphs(path)
    assert plan.resident_weight_bytes == (path / "weights.bin").stat().st_size + plan.prepacked_bytes


def test_plan_command_counts_the_providers_prepacking(tiny_int4_bundle, capsys):
    base = ["plan", "--bundle", str(tiny_int4_bundle), "--budget", "1GiB", "--context", "512", "--json"]
    assert main(base) == 0
    assert json.loads(capsys.readouterr().out)["prepacked_bytes"] == 2 * _matmul_weight_bytes_in_graphs(tiny_int4_bundle)
    assert main(base + ["--providers", "cuda,cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["prepacked_bytes"] == 0
    assert main(base + ["--providers", "gpu"]) == 2
    assert "--providers: unknown provider 'gpu'" in capsys.readouterr().err


def test_prefill_working_memory_grows_with_context_and_step_tokens(real):
    """Our graphs materialise attention scores over the context for each prompt token of a step."""
    small_ctx = plan_memory(real, "int4", 110 * GiB, 2048, prefill_chunk=256)
    long_ctx = plan_memory(real, "int4", 110 * GiB, 32768, prefill_chunk=256)
    half_step = plan_memory(real, "int4", 110 * GiB, 32768, prefill_chunk=128)
    assert long_ctx.prefill_working_bytes > small_ctx.prefill_working_bytes
    assert half_step.prefill_working_bytes * 2 == long_ctx.prefill_working_bytes


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"weights": "fp8"}, "weights"),
        ({"context": 0}, "context"),
        ({"context": 131073}, "context"),
        ({"group_size": 0}, "group_size"),
        ({"max_batch": 0}, "max_batch"),
        ({"activation_dtype": "float64"}, "activation_dtype"),
        ({"weights": "fp32", "activation_dtype": "float16"}, "activation_dtype"),
    ],
)
def test_bad_arguments_name_the_field(real, kwargs, field):
    args = {"weights": "int4", "budget_bytes": 64 * GiB, "context": 8192, **kwargs}
    with pytest.raises(MemoryPlanError, match=f"^{field}:"):
        plan_memory(real, **args)


def test_plan_command_prints_the_table(capsys):
    assert main(["plan", "--config", str(REAL_CONFIG), "--budget", "96GiB", "--weights", "int4"]) == 0
    out = capsys.readouterr().out
    assert "weights (8,888,227,328 parameters)" in out
    assert "K/V per token" in out and "16,384" in out
    assert "131,072" in out and "sequences that fit at 8192 tokens" in out


def test_plan_command_json_matches_the_library(real, capsys):
    assert main(["plan", "--config", str(REAL_CONFIG), "--budget", "48GiB", "--weights", "int8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # the command's defaults: batch 8, the CPU provider (two sessions pre-pack int8 weights)
    plan = plan_memory(real, "int8", 48 * GiB, 8192, max_batch=8, prepacked_copies=2)
    assert out["max_sequences"] == plan.max_sequences
    assert out["weight_bytes"] == plan.weight_bytes and out["prepacked_bytes"] == plan.prepacked_bytes
    assert out["grid"]["131072"] == plan.max_sequences_at(131072)


def test_plan_command_reads_a_bundle(tiny_bundle, capsys):
    from edge_runtime.bundle.reader import open_bundle
    from edge_runtime.bundle.memory_plan import plan_for_bundle

    assert main(["plan", "--bundle", str(tiny_bundle), "--budget", "1GiB", "--context", "2048", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    bundle = open_bundle(tiny_bundle)
    expected = plan_for_bundle(bundle, GiB, 2048, max_batch=8)
    assert out["weight_bytes"] == (tiny_bundle / "weights.bin").stat().st_size == expected.weight_bytes
    assert out["kv_bytes_per_token"] == sum(s.bytes_per_sequence(1) for s in bundle.state_layout if s.per_token)
    assert out["max_sequences"] == expected.max_sequences


def test_plan_command_errors_name_what_is_wrong(tmp_path, capsys):
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION, "config": {}}))
    assert main(["plan", "--bundle", str(tmp_path), "--budget", "64GiB"]) == 2
    assert "custom op domain" in capsys.readouterr().err
    assert main(["plan", "--config", str(REAL_CONFIG), "--budget", "lots"]) == 2
    assert "--budget:" in capsys.readouterr().err
    assert main(["plan", "--config", str(REAL_CONFIG), "--budget", "4GiB"]) == 2
    assert "short of" in capsys.readouterr().err
