"""Exported bundles on ONNX Runtime (CPU) against the reference PyTorch model (nemotron_export.model), fp32.

Both sides run the same schedule: a right-padded prefill of one or three rows of different lengths, then
greedy decode steps (the reference's argmax fed to both, so one near-tie cannot fork the two runs). The ORT
side goes through the runtime's own OrtModelRunner + StatePool; the reference side keeps its states in a
twin of the pool (K/V rows written at each row's own past length). Logits must agree to a max relative
error (max|a-b| / max|b|) of 1e-4 at the prefill and at every decode step, and so must the final states:
conv, ssm (float32) and the K/V of every position each row has seen.

Also: each custom op is exactly one node per Mamba layer in the domain nemotron_edge, and every graph
carries the ops' function bodies, so stock ONNX Runtime runs it (the parity itself proves that it does).
And fp16 / bf16 bundles of tiny run on CPU within stated tolerances.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edge_runtime.bundle.reader import open_bundle
from edge_runtime.bundle.model_config import MAMBA, ModelConfig
from edge_runtime.engine.runner import OrtModelRunner
from edge_runtime.engine.state_pool import StatePool
from nemotron_export import ops
from nemotron_export.bundle import ExportOptions, export_bundle
from nemotron_export.checkpoint import load_checkpoint
from nemotron_export.onnx_graph import WeightFormat
from nemotron_export.pooled_reference import PooledReference
from nemotron_export.ssm import process_dt
from nemotron_export.synth import random_weights, synth, write_checkpoint
from nemotron_export.threads import one_torch_thread

TOL = 1e-4
DECODE_STEPS = 32
MAX_CONTEXT = 512

# Different pattern (attention first, two Mamba layers back to back), odd widths, conv kernel 3, chunk 8,
# no conv bias, biases on every projection and an active dt clamp (dt is drawn from [0.01, 0.1], the
# limit cuts it at 0.05): the paths the tiny preset does not take. Tied embeddings get their own test.
ODD_CONFIG = ModelConfig(
    vocab_size=300, hidden_size=96, intermediate_size=160, pattern="*M-MM",
    num_attention_heads=6, num_key_value_heads=3, head_dim=16,
    mamba_num_heads=12, mamba_head_dim=8, n_groups=4, ssm_state_size=8, conv_kernel=3, chunk_size=8,
    use_conv_bias=False, mamba_proj_bias=True, attention_bias=True, mlp_bias=True, tie_word_embeddings=False,
    time_step_limit=(0.0, 0.05), max_position_embeddings=1024,
)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with one_torch_thread():
        yield


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _odd_weights(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """random_weights, with biases, norm weights and D moved off their zero/one init so they count."""
    w = random_weights(cfg, seed)
    rng = np.random.default_rng(seed + 1)
    for name, t in w.items():
        if name.endswith(".bias"):
            w[name] = torch.from_numpy(rng.standard_normal(t.shape, np.float32) * np.float32(0.02))
        elif name.endswith((".D", "norm.weight", "norm_f.weight")):
            w[name] = torch.from_numpy(1 + rng.standard_normal(t.shape, np.float32) * np.float32(0.2))
    return w


def make_pool(bundle, rows: int, max_context: int = MAX_CONTEXT) -> StatePool:
    """`rows` slots of `max_context` tokens."""
    return StatePool(bundle.state_layout, rows, max_context)


class Setup:
    """One exported bundle, its runtime, and the reference model it came from."""

    def __init__(self, ckpt: Path, bundle: Path, rows: int):
        self.model = load_checkpoint(ckpt, progress=False)
        self.cfg = self.model.cfg
        self.bundle = open_bundle(bundle)
        self.pool = make_pool(self.bundle, rows)
        self.runner = OrtModelRunner(self.bundle, self.pool)
        self.worst: dict[str, float] = {}  # largest relative error seen, logits / states

    def report(self, what: str) -> str:
        line = f"{what}: max rel err " + ", ".join(f"{k} {v:.2e}" for k, v in sorted(self.worst.items()))
        print("\n" + line)
        self.worst = {}
        return line

    def compare(self, lengths: list[int], decode_steps: int, seed: int, split: int | None = None) -> list[str]:
        """Prefill rows of `lengths` (in two calls when `split` is set: the first `split` tokens of each row,
        then the rest, the second call continuing from the first's states), then greedy decode. Returns the
        failures, each naming the step and the error."""
        rng = np.random.default_rng(seed)
        prompts = [rng.integers(0, self.cfg.vocab_size, n).tolist() for n in lengths]
        slots = [self.pool.allocate() for _ in prompts]
        try:
            return self._compare(slots, prompts, decode_steps, split)
        finally:
            for s in slots:
                self.pool.release(s)

    def _compare(self, slots, prompts, decode_steps, split) -> list[str]:
        ref = PooledReference(self.model, len(prompts), MAX_CONTEXT)
        where = f"lengths {[len(p) for p in prompts]}" + (f" split at {split}" if split else "")
        errors: list[str] = []

        def check(what: str, got: np.ndarray, want: np.ndarray) -> None:
            err = rel_err(got, want)
            kind = "logits" if what.endswith("logits") else "states"
            self.worst[kind] = max(self.worst.get(kind, 0.0), err)
            if not err <= TOL:
                errors.append(f"{where}: {what}: max rel err {err:.3g}")

        past = [0] * len(prompts)
        pieces = [prompts] if split is None else [[p[:split] for p in prompts], [p[split:] for p in prompts]]
        for k, chunks in enumerate(pieces):
            got = self.runner.prefill(slots, chunks, past)
            want = ref.prefill(chunks, past)
            check(f"prefill call {k} logits", got, want)
            past = [a + len(c) for a, c in zip(past, chunks)]
        for step in range(decode_steps):
            tokens = want.argmax(-1).tolist()
            got = self.runner.decode(slots, tokens, past)
            want = ref.decode(tokens, past)
            check(f"decode step {step} logits", got, want)
            past = [a + 1 for a in past]

        states = [self.pool.read(slot) for slot in slots]
        for spec in self.bundle.state_layout:
            mine = np.stack([state[spec.name] for state in states])
            theirs = ref.states[spec.name].numpy()
            if spec.kind == "ssm":
                assert mine.dtype == np.float32 and theirs.dtype == np.float32, f"{spec.name} must be float32"
            if spec.per_token:
                for row, n in enumerate(past):
                    check(f"final {spec.name} row {row}", mine[row, :, :n], theirs[row, :, :n])
            else:
                check(f"final {spec.name}", mine, theirs)
        return errors


def _lengths(chunk: int) -> list[int]:
    return [1, 7, chunk - 1, chunk, chunk + 1, 3 * chunk + 5]


# ---- tiny and the odd config: every length, batch 1 and batch 3, 32 decode steps --------------------------------


@pytest.fixture(scope="module")
def odd_checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "odd", ODD_CONFIG, _odd_weights(ODD_CONFIG, 3), None)


@pytest.fixture(scope="module")
def odd_bundle(odd_checkpoint, tmp_path_factory) -> Path:
    return export_bundle(odd_checkpoint, tmp_path_factory.mktemp("bundle") / "odd",
                         ExportOptions(max_batch=3, max_context=MAX_CONTEXT), progress=False)


@pytest.fixture(scope="module", params=["tiny", "odd"])
def setup(request) -> Setup:
    if request.param == "tiny":
        return Setup(request.getfixturevalue("tiny_checkpoint"), request.getfixturevalue("tiny_bundle"), rows=3)
    return Setup(request.getfixturevalue("odd_checkpoint"), request.getfixturevalue("odd_bundle"), rows=3)


def test_single_rows_every_length(setup: Setup):
    errors: list[str] = []
    for n in _lengths(setup.cfg.chunk_size):
        errors += setup.compare([n], DECODE_STEPS, seed=n)
    setup.report(f"{setup.cfg.pattern} batch 1, lengths {_lengths(setup.cfg.chunk_size)}")
    assert not errors, "\n".join(errors)


def test_right_padded_batches_of_three(setup: Setup):
    c = setup.cfg.chunk_size
    batches = [[1, 7, c - 1], [c, 3 * c + 5, c + 1], [3 * c + 5, 1, c]]
    errors: list[str] = []
    for k, lengths in enumerate(batches):
        errors += setup.compare(lengths, DECODE_STEPS, seed=100 + k)
    setup.report(f"{setup.cfg.pattern} batch 3, lengths {batches}")
    assert not errors, "\n".join(errors)


def test_chunked_prefill_with_different_past_lengths(setup: Setup):
    """A second prefill call on top of the first: rows continue from their own conv/ssm state and attend to
    their own past K/V (rows end the first call at different lengths)."""
    c = setup.cfg.chunk_size
    errors = setup.compare([2 * c + 3, c + 4, c + 2], 4, seed=7, split=c + 1)
    errors += setup.compare([c + 9, 2 * c, 3 * c + 5], 4, seed=8, split=5)
    assert not errors, "\n".join(errors)


def test_odd_config_clamp_is_active(odd_checkpoint):
    """The odd config's dt limit really cuts dt (else its Clip path would go untested)."""
    model = load_checkpoint(odd_checkpoint, progress=False)
    mixer = model.backbone.layers[1].mixer
    raw = torch.nn.functional.softplus(mixer.dt_bias.float())
    assert raw.max().item() > ODD_CONFIG.time_step_limit[1]
    dt = process_dt(torch.zeros(1, 12), mixer.dt_bias, ODD_CONFIG.time_step_limit)
    assert dt.max().item() <= np.float32(ODD_CONFIG.time_step_limit[1])


def test_tied_embeddings(tmp_path_factory):
    """tie_word_embeddings: the checkpoint holds no separate lm_head; the head is the embedding table."""
    cfg = replace(ODD_CONFIG, tie_word_embeddings=True, pattern="M*-")
    weights = _odd_weights(cfg, 4)
    del weights["lm_head.weight"]  # as transformers saves a tied model
    root = tmp_path_factory.mktemp("tied")
    ckpt = write_checkpoint(root / "ckpt", cfg, weights, None)
    model = load_checkpoint(ckpt, progress=False)
    head, table = model.lm_head.weight.detach().numpy(), model.backbone.embeddings.weight.detach().numpy()
    assert np.array_equal(head, table), (
        f"tied checkpoint: after loading, lm_head.weight is not the embedding table (max |diff| "
        f"{np.nanmax(np.abs(head - table)):.3g}, lm_head finite: {bool(np.isfinite(head).all())})")
    bundle = export_bundle(ckpt, root / "bundle", ExportOptions(max_batch=3, max_context=MAX_CONTEXT), progress=False)
    errors = Setup(ckpt, bundle, rows=3).compare([2 * cfg.chunk_size + 5, 1, 7], 8, seed=4)
    assert not errors, "\n".join(errors)


# ---- the real widths: nano-9b-v2-slice ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def nano_setup(tmp_path_factory) -> Setup:
    root = tmp_path_factory.mktemp("nano")
    ckpt = synth("nano-9b-v2-slice", root / "ckpt", seed=0, with_tokenizer=False)
    bundle = export_bundle(ckpt, root / "bundle", ExportOptions(max_batch=3, max_context=MAX_CONTEXT), progress=False)
    return Setup(ckpt, bundle, rows=3)


def test_nano_slice_parity(nano_setup: Setup):
    """Head dim 80, 128 heads, 8 groups, chunk 128: batch 1 of 3*chunk+5 tokens, batch 3 around a chunk edge.
    Four decode steps each (the widths, not the step count, are what this preset adds)."""
    c = nano_setup.cfg.chunk_size
    errors = nano_setup.compare([3 * c + 5], 4, seed=1)
    errors += nano_setup.compare([c + 1, 7, c - 1], 4, seed=2)
    nano_setup.report("nano-9b-v2-slice")
    assert not errors, "\n".join(errors)


# ---- graph structure ---------------------------------------------------------------------------------------


def _graph_checks(bundle_dir: Path, cfg: ModelConfig) -> list[str]:
    problems: list[str] = []
    mamba = cfg.layers_of(MAMBA)
    want = {"prefill": {"CausalConv1d": len(mamba), "SsdChunkScan": len(mamba), "SsmStep": 0, "MambaDecodeStep": 0},
            "decode": {"CausalConv1d": 0, "SsdChunkScan": 0, "SsmStep": 0, "MambaDecodeStep": len(mamba)}}
    for graph, counts in want.items():
        model = onnx.load(str(bundle_dir / f"{graph}.onnx"), load_external_data=False)
        custom = [n for n in model.graph.node if n.op_type in ops.CUSTOM_OPS or n.domain == ops.DOMAIN]
        for n in custom:
            if n.domain != ops.DOMAIN:
                problems.append(f"{graph}: node {n.name} ({n.op_type}) in domain {n.domain!r}, not {ops.DOMAIN}")
        for op_type, count in counts.items():
            got = sum(n.op_type == op_type for n in custom)
            if got != count:
                problems.append(f"{graph}: {got} {op_type} nodes, want {count} (one per Mamba layer {mamba})")
        # one node per layer: each Mamba layer's state names appear on exactly one custom node
        for i in mamba:
            if graph == "decode":
                problems += _decode_step_checks(custom, i, cfg)
                continue
            conv = [n for n in custom if n.op_type == "CausalConv1d" and f"present.{i}.conv" in n.output]
            scan = [n for n in custom if n.op_type in ("SsdChunkScan", "SsmStep") and f"present.{i}.ssm" in n.output]
            if len(conv) != 1 or len(scan) != 1:
                problems.append(f"{graph}: layer {i}: {len(conv)} conv and {len(scan)} scan nodes")
                continue
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv[0].attribute}
            if attrs.get("channels") != cfg.conv_dim:
                problems.append(f"{graph}: layer {i}: CausalConv1d channels {attrs.get('channels')} != {cfg.conv_dim}")
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in scan[0].attribute}
            if attrs.get("chunk_size") != cfg.chunk_size:
                problems.append(f"{graph}: layer {i}: chunk_size {attrs.get('chunk_size')} != {cfg.chunk_size}")
        imports = {o.domain: o.version for o in model.opset_import}
        if imports.get(ops.DOMAIN) != ops.VERSION:
            problems.append(f"{graph}: opset_import {ops.DOMAIN} = {imports.get(ops.DOMAIN)}, want {ops.VERSION}")
        functions = {(f.domain, f.name): f for f in model.functions}
        for name in ops.CUSTOM_OPS:
            f = functions.get((ops.DOMAIN, name))
            if f is None:
                problems.append(f"{graph}: no function body for {ops.DOMAIN}.{name}")
                continue
            # bodies use standard ops, our helper functions that themselves ship in model.functions, or the
            # ONNX Runtime contrib op DecodeAttention is declared to call
            for n in f.node:
                if n.domain not in ("", "ai.onnx") and (n.domain, n.op_type) not in functions \
                        and (n.domain, n.op_type) not in ops.RUNTIME_OPS_IN_BODIES:
                    problems.append(f"{graph}: {name} body uses {n.domain}.{n.op_type}, which nothing defines")
    return problems


def _decode_step_checks(custom: list[onnx.NodeProto], i: int, cfg: ModelConfig) -> list[str]:
    """Layer i of the decode graph: one MambaDecodeStep carrying both of its states and its static shapes."""
    step = [n for n in custom if n.op_type == "MambaDecodeStep"
            and f"past.{i}.conv" in n.input and f"past.{i}.ssm" in n.input]
    if len(step) != 1:
        return [f"decode: layer {i}: {len(step)} MambaDecodeStep nodes"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in step[0].attribute}
    lo, hi = cfg.time_step_limit
    clamps = lo > 0 or np.isfinite(hi)
    want = {"channels": cfg.conv_dim, "n_groups": cfg.n_groups,
            "epsilon": float(np.float32(cfg.layer_norm_epsilon)),
            **({"dt_min": float(np.float32(lo)), "dt_max": float(np.float32(min(hi, 3.0e38)))} if clamps else {})}
    if attrs != want:
        return [f"decode: layer {i}: MambaDecodeStep attributes {attrs}, want {want}"]
    return []


def test_custom_ops_one_node_per_mamba_layer_with_bodies(tiny_bundle, odd_bundle, odd_checkpoint, tiny_checkpoint):
    problems = _graph_checks(tiny_bundle, ModelConfig.from_file(tiny_checkpoint))
    problems += _graph_checks(odd_bundle, ModelConfig.from_file(odd_checkpoint))
    assert not problems, "\n".join(problems)


def test_nano_slice_graph_structure(nano_setup: Setup):
    problems = _graph_checks(nano_setup.bundle.path, nano_setup.cfg)
    assert not problems, "\n".join(problems)


def test_tiny_graphs_pass_the_onnx_checker(tiny_bundle):
    ops.register_schemas()
    for graph in ("prefill", "decode"):
        onnx.checker.check_model(str(tiny_bundle / f"{graph}.onnx"), full_check=True)


# ---- fp16 and bf16 bundles on CPU --------------------------------------------------------------------------

# fp16: weights AND activations in half precision (the SSM state stays float32): a few 1e-3 of the logit
# scale is the precision of half; 1e-2 leaves room. bf16: weights stored bf16, computed in float32, so it
# equals the reference run with its matmul weights rounded to bf16 (to 1e-4), and the unrounded one to ~1e-2.
FP16_TOL = 1e-2
BF16_TOL = 3e-2


@pytest.fixture(scope="module")
def half_setups(tiny_checkpoint, tmp_path_factory) -> dict[str, Setup]:
    out = {}
    for kind in ("fp16", "bf16"):
        bundle = export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("bundle") / f"tiny-{kind}",
                               ExportOptions(weights=WeightFormat(kind), max_batch=3, max_context=MAX_CONTEXT),
                               progress=False)
        out[kind] = Setup(tiny_checkpoint, bundle, rows=3)
    return out


def _bf16_rounded(model):
    """The reference with every projection weight rounded to bf16 the way the exporter rounds it."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for module in rounded.modules():
            if isinstance(module, torch.nn.Linear):
                bits = module.weight.detach().float().numpy().view(np.uint32)
                bits = ((bits + 0x8000) >> 16 << 16).astype(np.uint32)
                module.weight.copy_(torch.from_numpy(bits.view(np.float32)))
    return rounded


@pytest.mark.parametrize("kind,tol", [("fp16", FP16_TOL), ("bf16", BF16_TOL)])
def test_half_precision_bundles_run_on_cpu(half_setups, kind, tol):
    setup = half_setups[kind]
    assert setup.bundle.weights["format"] == kind
    c = setup.cfg.chunk_size
    lengths = [3 * c + 5, 7, c]
    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, setup.cfg.vocab_size, n).tolist() for n in lengths]
    slots = [setup.pool.allocate() for _ in prompts]
    ref = PooledReference(setup.model, 3, MAX_CONTEXT)
    got, want = setup.runner.prefill(slots, prompts, [0] * 3), ref.prefill(prompts, [0] * 3)
    errs = [rel_err(got, want)]
    past = list(lengths)
    for _ in range(8):
        tokens = want.argmax(-1).tolist()
        got, want = setup.runner.decode(slots, tokens, past), ref.decode(tokens, past)
        errs.append(rel_err(got, want))
        past = [p + 1 for p in past]
    for s in slots:
        setup.pool.release(s)
    print(f"\n{kind} tiny bundle vs fp32 reference: max rel err {max(errs):.2e} (tolerance {tol})")
    assert max(errs) <= tol, f"{kind}: logits off by {max(errs):.3g} (tolerance {tol}); per call {errs}"
    assert got.dtype == np.float32


def test_bf16_bundle_equals_bf16_rounded_reference(half_setups):
    setup = half_setups["bf16"]
    model = _bf16_rounded(setup.model)
    ref_setup = replace_model(setup, model)
    errors = ref_setup.compare([3 * setup.cfg.chunk_size + 5, 1, 7], 8, seed=11)
    assert not errors, "\n".join(errors)


def replace_model(setup: Setup, model) -> Setup:
    clone = object.__new__(Setup)
    clone.__dict__.update(setup.__dict__, model=model)
    return clone
