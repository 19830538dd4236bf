"""The native kernel library for the nemotron_edge custom ops (kernels/nemotron_edge_ops.cc).

Each op is run as a one-node model twice, with and without the library registered: without it ONNX
Runtime expands the model-local function body (the reference), with it the registered kernel runs.
A whole bundle gives the same logits, states and greedy tokens either way, and ORT's profiler shows
each op executing as a single node when the library is registered.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from nemotron_export import ops

F32, F16, I64, I32 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64, TensorProto.INT32
ONNX_OF = {np.float32: F32, np.float16: F16}


# ---- one-node models ---------------------------------------------------------------------------------

def one_node_model(op_type: str, inputs: list[tuple[str, int, list]], outputs: list[tuple[str, int]],
                   **attrs) -> bytes:
    """A graph of one custom-op node that carries the ops' function bodies, as every bundle does."""
    node = helper.make_node(op_type, [n for n, _, _ in inputs], [n for n, _ in outputs], domain=ops.DOMAIN, **attrs)
    graph = helper.make_graph(
        [node], op_type,
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs])
    model = helper.make_model(graph, functions=ops.function_protos(),
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(ops.DOMAIN, ops.VERSION),
                                             helper.make_opsetid("com.microsoft", 1)])
    return model.SerializeToString()


def session(model: bytes | str, lib: str | None, profile_dir: Path | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    if lib:
        so.register_custom_ops_library(lib)
    if profile_dir is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_dir / "ort")
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def executed_ops(sess: ort.InferenceSession) -> list[str]:
    """Op types of the nodes ORT executed (one entry per node per run), from its profile."""
    path = sess.end_profiling()
    events = json.loads(Path(path).read_text())
    os.remove(path)
    return [e["args"]["op_name"] for e in events
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]


def both(model: bytes, feeds: dict[str, np.ndarray], lib: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return session(model, None).run(None, feeds), session(model, lib).run(None, feeds)


def assert_close(ref: np.ndarray, got: np.ndarray, rtol: float, what: str) -> None:
    """Max abs error relative to the reference's magnitude (values near zero make elementwise rtol useless)."""
    assert ref.shape == got.shape and ref.dtype == got.dtype, what
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    err = np.abs(ref64 - got64).max() / max(np.abs(ref64).max(), 1e-30)
    assert err <= rtol, f"{what}: max abs error / max |ref| = {err:.3g} > {rtol}"


def tol(dtype) -> float:
    return 1e-5 if dtype == np.float32 else 2e-3


# ---- CausalConv1d ------------------------------------------------------------------------------------

def conv_inputs(rng, dtype, b, t, c, k, lengths):
    ot = ONNX_OF[dtype]
    model = one_node_model(
        "CausalConv1d",
        [("x", ot, ["b", "t", c]), ("conv_state", ot, ["b", c, k - 1]), ("weight", ot, [c, k]), ("bias", ot, [c]),
         ("lengths", I64, ["b"])],
        [("y", ot), ("new_state", ot)], channels=c)
    feeds = {"x": rng.standard_normal((b, t, c)).astype(dtype),
             "conv_state": rng.standard_normal((b, c, k - 1)).astype(dtype),
             "weight": (0.5 * rng.standard_normal((c, k))).astype(dtype),
             "bias": rng.standard_normal(c).astype(dtype),
             "lengths": np.asarray(lengths, np.int64)}
    return model, feeds


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("t,lengths", [(1, [1, 1, 1]), (1, [1, 0, 1]), (5, [5, 2, 0]), (37, [37, 20, 1])],
                         ids=["decode", "decode-padded", "short-chunk", "long-chunk"])
def test_causal_conv1d_matches_function_body(kernel_lib, dtype, t, lengths):
    # One valid token a row, t <= 8 and t > 8 take the kernel's three code paths; lengths < t is right
    # padding, 0 an empty row.
    rng = np.random.default_rng(t)
    model, feeds = conv_inputs(rng, dtype, b=3, t=t, c=24, k=4, lengths=lengths)
    ref, got = both(model, feeds, kernel_lib)
    assert_close(ref[0], got[0], tol(dtype), "y")
    np.testing.assert_array_equal(ref[1], got[1], "new_state is a copy of inputs: exact")


@pytest.mark.parametrize("t,lengths", [(11, [11, 4]), (1, [1, 1])], ids=["chunk", "decode"])
def test_causal_conv1d_other_kernel_size(kernel_lib, t, lengths):
    model, feeds = conv_inputs(np.random.default_rng(1), np.float32, b=2, t=t, c=8, k=2, lengths=lengths)
    ref, got = both(model, feeds, kernel_lib)
    assert_close(ref[0], got[0], 1e-5, "y")
    np.testing.assert_array_equal(ref[1], got[1])


def test_causal_conv1d_silu_saturates(kernel_lib):
    """Large pre-activations: silu(a) -> a for a >> 0 and -> -0 for a << 0 (the kernel's exp is clamped)."""
    model, feeds = conv_inputs(np.random.default_rng(2), np.float32, b=1, t=12, c=16, k=4, lengths=[12])
    feeds["bias"] = np.linspace(-200, 200, 16).astype(np.float32)
    ref, got = both(model, feeds, kernel_lib)
    assert np.isfinite(got[0]).all()
    assert_close(ref[0], got[0], 1e-5, "y")


def test_causal_conv1d_rejects_lengths_beyond_chunk(kernel_lib):
    model, feeds = conv_inputs(np.random.default_rng(3), np.float32, b=2, t=4, c=8, k=4, lengths=[4, 5])
    with pytest.raises(Exception, match="lengths"):
        session(model, kernel_lib).run(None, feeds)


def test_causal_conv1d_checks_channels_attribute(kernel_lib):
    model, feeds = conv_inputs(np.random.default_rng(4), np.float32, b=1, t=2, c=8, k=4, lengths=[2])
    wrong = onnx.load_from_string(model)
    wrong.graph.node[0].attribute[0].i = 7
    with pytest.raises(Exception, match="channels"):
        session(wrong.SerializeToString(), kernel_lib).run(None, feeds)


# ---- SsmStep and SsdChunkScan ------------------------------------------------------------------------

def ssm_inputs(rng, dtype, b, t, h, p, g, n, valid: list[int] | None):
    """Inputs of SsdChunkScan ([b, t, ...]); dt is zero at and after each row's valid length (right padding)."""
    x = rng.standard_normal((b, t, h, p)).astype(dtype)
    dt = np.log1p(np.exp(rng.standard_normal((b, t, h)) - 1.0)).astype(np.float32)  # softplus, > 0
    if valid is not None:
        for row, v in enumerate(valid):
            dt[row, v:] = 0.0
    A = -np.exp(rng.standard_normal(h)).astype(np.float32)
    B = rng.standard_normal((b, t, g, n)).astype(dtype)
    C = rng.standard_normal((b, t, g, n)).astype(dtype)
    D = rng.standard_normal(h).astype(dtype)
    state = rng.standard_normal((b, h, p, n)).astype(np.float32)
    return {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "state": state}


def scan_model(dtype, h, p, g, n, chunk_size):
    ot = ONNX_OF[dtype]
    return one_node_model(
        "SsdChunkScan",
        [("x", ot, ["b", "t", h, p]), ("dt", F32, ["b", "t", h]), ("A", F32, [h]), ("B", ot, ["b", "t", g, n]),
         ("C", ot, ["b", "t", g, n]), ("D", ot, [h]), ("state", F32, ["b", h, p, n])],
        [("y", F32), ("final_state", F32)], chunk_size=chunk_size)


def step_model(dtype, h, p, g, n):
    ot = ONNX_OF[dtype]
    return one_node_model(
        "SsmStep",
        [("x", ot, ["b", h, p]), ("dt", F32, ["b", h]), ("A", F32, [h]), ("B", ot, ["b", g, n]),
         ("C", ot, ["b", g, n]), ("D", ot, [h]), ("state", F32, ["b", h, p, n])],
        [("y", F32), ("new_state", F32)])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("t,chunk,valid", [(37, 16, [37, 20, 0]), (16, 16, [16, 9, 16]), (5, 16, [5, 1, 3]),
                                           (1, 16, [1, 0, 1])],
                         ids=["t-not-multiple", "t-equals-chunk", "t-below-chunk", "one-token"])
def test_ssd_chunk_scan_matches_function_body(kernel_lib, dtype, t, chunk, valid):
    h, p, g, n = 6, 8, 3, 16  # two heads per group
    feeds = ssm_inputs(np.random.default_rng(t), dtype, 3, t, h, p, g, n, valid)
    ref, got = both(scan_model(dtype, h, p, g, n, chunk), feeds, kernel_lib)
    assert_close(ref[0], got[0], tol(np.float32), "y")
    assert_close(ref[1], got[1], tol(np.float32), "final_state")


def test_ssd_chunk_scan_padding_keeps_row_state(kernel_lib):
    """A right-padded row ends with the state after its own last valid token."""
    h, p, g, n = 4, 8, 2, 16
    feeds = ssm_inputs(np.random.default_rng(7), np.float32, 2, 12, h, p, g, n, valid=[12, 7])
    short = {k: (v[1:, :7] if k in ("x", "dt", "B", "C") else v[1:] if k == "state" else v) for k, v in feeds.items()}
    sess = session(scan_model(np.float32, h, p, g, n, 8), kernel_lib)
    padded, alone = sess.run(None, feeds), sess.run(None, short)
    np.testing.assert_allclose(padded[1][1], alone[1][0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(padded[0][1, :7], alone[0][0], rtol=1e-6, atol=1e-6)


def test_ssd_chunk_scan_equals_repeated_steps(kernel_lib):
    """The scan and SsmStep are one recurrence: t steps give the scan's outputs and final state."""
    h, p, g, n, t = 4, 8, 2, 16, 10
    feeds = ssm_inputs(np.random.default_rng(8), np.float32, 2, t, h, p, g, n, valid=None)
    y_scan, s_scan = session(scan_model(np.float32, h, p, g, n, 4), kernel_lib).run(None, feeds)
    step = session(step_model(np.float32, h, p, g, n), kernel_lib)
    state = feeds["state"]
    for i in range(t):
        y, state = step.run(None, {**{k: feeds[k][:, i] for k in ("x", "dt", "B", "C")},
                                   "A": feeds["A"], "D": feeds["D"], "state": state})
        np.testing.assert_allclose(y, y_scan[:, i], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(state, s_scan, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_ssm_step_matches_function_body(kernel_lib, dtype):
    h, p, g, n = 6, 8, 3, 16
    scan = ssm_inputs(np.random.default_rng(5), dtype, 3, 1, h, p, g, n, valid=[1, 0, 1])  # row 1: dt = 0
    feeds = {k: (v[:, 0] if k in ("x", "dt", "B", "C") else v) for k, v in scan.items()}
    ref, got = both(step_model(dtype, h, p, g, n), feeds, kernel_lib)
    assert_close(ref[0], got[0], tol(np.float32), "y")
    assert_close(ref[1], got[1], tol(np.float32), "new_state")
    np.testing.assert_array_equal(got[1][1], feeds["state"][1], "dt = 0 leaves the state unchanged")


@pytest.mark.parametrize("op", ["SsmStep", "SsdChunkScan"])
def test_ssm_ops_on_the_thread_pool(kernel_lib, op):
    """Jobs of at least 2^15 state updates are split over (row, head) on ORT's intra-op thread pool."""
    b, t, h, p, g, n = 4, 40, 16, 32, 4, 128
    feeds = ssm_inputs(np.random.default_rng(9), np.float32, b, t, h, p, g, n, valid=[40, 33, 1, 0])
    if op == "SsmStep":
        feeds = {k: (v[:, 7] if k in ("x", "dt", "B", "C") else v) for k, v in feeds.items()}
        model = step_model(np.float32, h, p, g, n)
    else:
        model = scan_model(np.float32, h, p, g, n, 16)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 4
    so.register_custom_ops_library(kernel_lib)
    got = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, feeds)
    ref = session(model, None).run(None, feeds)
    assert_close(ref[0], got[0], 1e-5, "y")
    assert_close(ref[1], got[1], 1e-5, "state")


def pool_session(model: bytes, lib: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 4
    so.register_custom_ops_library(lib)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def test_causal_conv1d_on_the_thread_pool(kernel_lib):
    """A long chunk of at least 2^15 elements is split into blocks of tokens on the pool; right padding and
    the new state (written after every block) are unaffected."""
    model, feeds = conv_inputs(np.random.default_rng(4), np.float32, b=2, t=70, c=300, k=4, lengths=[70, 33])
    got = pool_session(model, kernel_lib).run(None, feeds)
    ref = session(model, None).run(None, feeds)
    assert_close(ref[0], got[0], 1e-5, "y")
    np.testing.assert_array_equal(ref[1], got[1])


# ---- MambaDecodeStep ---------------------------------------------------------------------------------

def decode_step_inputs(rng, dtype, b, h, p, g, n, k, **attrs):
    """A one-node MambaDecodeStep model and its inputs: one token of in_proj output z | xBC | dt_raw."""
    ot = ONNX_OF[dtype]
    inner = h * p
    c = inner + 2 * g * n
    model = one_node_model(
        "MambaDecodeStep",
        [("zxbcdt", ot, ["b", 1, inner + c + h]), ("conv_state", ot, ["b", c, k - 1]), ("conv_weight", ot, [c, k]),
         ("conv_bias", ot, [c]), ("dt_bias", F32, [h]), ("A", F32, [h]), ("D", ot, [h]), ("norm_weight", F32, [inner]),
         ("ssm_state", F32, ["b", h, p, n])],
        [("y", ot), ("new_conv_state", ot), ("new_ssm_state", F32)],
        channels=c, n_groups=g, epsilon=1e-5, **attrs)
    feeds = {"zxbcdt": rng.standard_normal((b, 1, inner + c + h)).astype(dtype),
             "conv_state": rng.standard_normal((b, c, k - 1)).astype(dtype),
             "conv_weight": (0.5 * rng.standard_normal((c, k))).astype(dtype),
             "conv_bias": rng.standard_normal(c).astype(dtype),
             "dt_bias": rng.standard_normal(h).astype(np.float32),
             "A": -np.exp(rng.standard_normal(h)).astype(np.float32),
             "D": rng.standard_normal(h).astype(dtype),
             "norm_weight": (1 + 0.1 * rng.standard_normal(inner)).astype(np.float32),
             "ssm_state": rng.standard_normal((b, h, p, n)).astype(np.float32)}
    return model, feeds


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("clamp", [{}, {"dt_min": 0.3, "dt_max": 0.9}], ids=["no-clamp", "clamp"])
def test_mamba_decode_step_matches_function_body(kernel_lib, dtype, b, clamp):
    h, p, g, n = 6, 8, 3, 16  # two heads per group
    model, feeds = decode_step_inputs(np.random.default_rng(b), dtype, b, h, p, g, n, k=4, **clamp)
    ref, got = both(model, feeds, kernel_lib)
    assert_close(ref[0], got[0], tol(dtype), "y")
    np.testing.assert_array_equal(ref[1], got[1], "new_conv_state is a copy of inputs: exact")
    assert_close(ref[2], got[2], tol(dtype), "new_ssm_state")


def test_mamba_decode_step_on_the_thread_pool(kernel_lib):
    """Rows' convs and (row, head) state updates of at least 2^15 elements run on the pool."""
    model, feeds = decode_step_inputs(np.random.default_rng(5), np.float32, 12, 16, 32, 2, 64, k=4)
    got = pool_session(model, kernel_lib).run(None, feeds)
    ref = session(model, None).run(None, feeds)
    assert_close(ref[0], got[0], 1e-5, "y")
    np.testing.assert_array_equal(ref[1], got[1])
    assert_close(ref[2], got[2], 1e-5, "new_ssm_state")


def test_mamba_decode_step_clamp_is_active(kernel_lib):
    """The clamp bounds change the result (else the test above would not check them)."""
    rng = np.random.default_rng(0)
    plain, feeds = decode_step_inputs(rng, np.float32, 2, 4, 8, 2, 16, k=4)
    clamped, _ = decode_step_inputs(rng, np.float32, 2, 4, 8, 2, 16, k=4, dt_min=0.3, dt_max=0.9)
    a, b = session(plain, kernel_lib).run(None, feeds), session(clamped, kernel_lib).run(None, feeds)
    assert np.abs(a[2] - b[2]).max() > 1e-2


def test_mamba_decode_step_equals_its_parts(kernel_lib):
    """The fused kernel computes what CausalConv1d and SsmStep compute, with the gated RMSNorm after them."""
    h, p, g, n, k, eps = 4, 8, 2, 16, 4, 1e-5
    inner, b = h * p, 2
    c = inner + 2 * g * n
    model, f = decode_step_inputs(np.random.default_rng(3), np.float32, b, h, p, g, n, k)
    y, conv_state, ssm_state = session(model, kernel_lib).run(None, f)

    z, xbc, dt_raw = np.split(f["zxbcdt"][:, 0], [inner, inner + c], axis=-1)
    conv, _ = conv_inputs(np.random.default_rng(0), np.float32, b=b, t=1, c=c, k=k, lengths=[1] * b)  # its model only
    xbc, new_conv = session(conv, kernel_lib).run(None, {
        "x": xbc[:, None], "conv_state": f["conv_state"], "weight": f["conv_weight"], "bias": f["conv_bias"],
        "lengths": np.ones(b, np.int64)})
    x, B, C = np.split(xbc[:, 0], [inner, inner + g * n], axis=-1)
    dt = np.log1p(np.exp(dt_raw + f["dt_bias"])).astype(np.float32)
    s, new_ssm = session(step_model(np.float32, h, p, g, n), kernel_lib).run(None, {
        "x": x.reshape(b, h, p), "dt": dt, "A": f["A"], "B": B.reshape(b, g, n), "C": C.reshape(b, g, n),
        "D": f["D"], "state": f["ssm_state"]})
    gated = (s.reshape(b, inner) * z / (1 + np.exp(-z))).reshape(b, g, -1)
    normed = gated / np.sqrt((gated ** 2).mean(-1, keepdims=True) + eps)
    np.testing.assert_array_equal(conv_state, new_conv)
    assert_close(new_ssm, ssm_state, 1e-5, "new_ssm_state")
    assert_close((normed.reshape(b, inner) * f["norm_weight"])[:, None], y, 1e-5, "y")


@pytest.mark.parametrize("edit,match", [
    (lambda f: f.update(zxbcdt=np.concatenate([f["zxbcdt"]] * 2, axis=1)), "zxbcdt"),
    (lambda f: f.update(zxbcdt=f["zxbcdt"][..., :-1]), "zxbcdt"),
    (lambda f: f.update(ssm_state=f["ssm_state"][:, :, :, :-1]), "ssm_state"),
    (lambda f: f.update(conv_state=f["conv_state"][:, :, :-1]), "conv_state"),
    (lambda f: f.update(D=f["D"][:-1]), "D must"),
], ids=["two-tokens", "zxbcdt-width", "ssm-state", "conv-state", "D"])
def test_mamba_decode_step_names_the_bad_input(kernel_lib, edit, match):
    model, feeds = decode_step_inputs(np.random.default_rng(4), np.float32, 2, 4, 8, 2, 16, k=4)
    edit(feeds)
    proto = onnx.load_from_string(model)
    for value in proto.graph.input:  # drop the declared shapes: the kernel, not ORT's input check, must catch it
        value.type.tensor_type.ClearField("shape")
    with pytest.raises(Exception, match=match):
        session(proto.SerializeToString(), kernel_lib).run(None, feeds)


def test_mamba_decode_step_checks_groups_attribute(kernel_lib):
    model, feeds = decode_step_inputs(np.random.default_rng(5), np.float32, 1, 4, 8, 2, 16, k=4)
    wrong = onnx.load_from_string(model)
    next(a for a in wrong.graph.node[0].attribute if a.name == "n_groups").i = 3
    with pytest.raises(Exception, match="n_groups"):
        session(wrong.SerializeToString(), kernel_lib).run(None, feeds)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_mamba_decode_step_updates_states_in_place(kernel_lib, dtype):
    """The runtime binds each slot's conv and SSM state as both input and output (edge_runtime.engine.state_pool):
    with the buffers aliased the kernel gives what it gives into fresh outputs."""
    model, feeds = decode_step_inputs(np.random.default_rng(7), dtype, 3, 4, 8, 2, 16, k=4)
    sess = session(model, kernel_lib)
    want = sess.run(None, feeds)
    y, (conv, ssm) = run_in_place(sess, feeds, "y", {"conv_state": "new_conv_state", "ssm_state": "new_ssm_state"})
    np.testing.assert_array_equal(y, want[0])
    np.testing.assert_array_equal(conv, want[1])
    np.testing.assert_array_equal(ssm, want[2])


def run_in_place(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], first: str,
                 aliased: dict[str, str]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run with each input of `aliased` bound as its output too (copies of the feeds, as the runtime binds a
    slot's state): the output `first`, and the aliased buffers afterwards."""
    buffers = {name: feeds[name].copy() for name in aliased}
    binding = sess.io_binding()
    for name, value in {**feeds, **buffers}.items():
        binding.bind_cpu_input(name, value)
    binding.bind_output(first)
    for name, output in aliased.items():
        a = buffers[name]
        binding.bind_output(output, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)
    sess.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()[0], list(buffers.values())


# ---- DecodeAttention ---------------------------------------------------------------------------------

def attention_inputs(rng, dtype, b, hq, hkv, d, capacity, positions):
    """A one-node DecodeAttention model and its inputs: row r's new K/V goes to positions[r]."""
    shapes = {"q": (b, 1, hq * d), "k": (b, 1, hkv * d), "v": (b, 1, hkv * d),
              "past_key": (b, hkv, capacity, d), "past_value": (b, hkv, capacity, d)}
    feeds = {n: rng.standard_normal(shape).astype(dtype) for n, shape in shapes.items()}
    feeds["seqlens_k"] = np.array(positions, np.int32)
    feeds["total_sequence_length"] = np.array(max(positions) + 1, np.int32)
    t = ONNX_OF[dtype]
    model = one_node_model(
        "DecodeAttention", [(n, t, list(shape)) for n, shape in shapes.items()]
        + [("seqlens_k", I32, [b]), ("total_sequence_length", I32, [])],
        [("out", t), ("present_key", t), ("present_value", t)], num_heads=hq, kv_num_heads=hkv, scale=d ** -0.5)
    return model, feeds


def assert_caches_agree(ref: list[np.ndarray], got: list[np.ndarray], positions: list[int]) -> None:
    """present_key and present_value up to each row's new position (GroupQueryAttention leaves a fresh
    output's positions after that unwritten)."""
    for k in (1, 2):
        for row, pos in enumerate(positions):
            np.testing.assert_array_equal(got[k][row, :, :pos + 1], ref[k][row, :, :pos + 1])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("hq, hkv", [(4, 2), (6, 1), (3, 3)])
def test_decode_attention_matches_function_body(kernel_lib, dtype, hq, hkv):
    """Against its body, ONNX Runtime's GroupQueryAttention: rows at the first and last cache position."""
    positions = [0, 17, 39]
    model, feeds = attention_inputs(np.random.default_rng(hq), dtype, 3, hq, hkv, 16, 40, positions)
    ref, got = both(model, feeds, kernel_lib)
    assert_close(ref[0], got[0], tol(dtype), "out")
    assert_caches_agree(ref, got, positions)


def test_decode_attention_on_the_thread_pool(kernel_lib):
    positions = [700, 3, 1023, 512]
    model, feeds = attention_inputs(np.random.default_rng(5), np.float32, 4, 8, 2, 64, 1024, positions)
    ref, got = session(model, None).run(None, feeds), pool_session(model, kernel_lib).run(None, feeds)
    assert_close(ref[0], got[0], 1e-5, "out")
    assert_caches_agree(ref, got, positions)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_decode_attention_updates_the_cache_in_place(kernel_lib, dtype):
    """Bound as both past and present (as the runtime binds a slot's cache), the cache changes only at each
    row's new position, and the output is what fresh outputs give."""
    positions = [5, 0, 30]
    model, feeds = attention_inputs(np.random.default_rng(9), dtype, 3, 4, 2, 16, 32, positions)
    sess = session(model, kernel_lib)
    want = sess.run(None, feeds)
    out, (key, value) = run_in_place(sess, feeds, "out", {"past_key": "present_key", "past_value": "present_value"})
    np.testing.assert_array_equal(out, want[0])
    for cache, past, new in ((key, feeds["past_key"], feeds["k"]), (value, feeds["past_value"], feeds["v"])):
        expected = past.copy()
        for row, pos in enumerate(positions):
            expected[row, :, pos] = new[row, 0].reshape(2, 16)
        np.testing.assert_array_equal(cache, expected)


def test_decode_attention_refuses_a_position_outside_the_cache(kernel_lib):
    model, feeds = attention_inputs(np.random.default_rng(1), np.float32, 2, 4, 2, 16, 32, [3, 32])
    with pytest.raises(Exception, match="seqlens_k"):
        session(model, kernel_lib).run(None, feeds)


def only_inner_kernels(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with MambaDecodeStep renamed, function and nodes alike: to a library that knows no kernel
    for it, as one built before the op existed. ORT inlines its body and finds CausalConv1d/SsmStep kernels."""
    out = copy.deepcopy(model)
    for f in out.functions:
        if f.name == "MambaDecodeStep":
            f.name = "MambaDecodeStepUnknown"
    for node in out.graph.node:
        if node.op_type == "MambaDecodeStep":
            node.op_type = "MambaDecodeStepUnknown"
    return out


def test_mamba_decode_step_body_uses_inner_kernels(kernel_lib, tmp_path):
    """Nested model-local functions: ORT inlines the fused body and still runs the CausalConv1d and SsmStep
    kernels inside it; the result equals the fused kernel's to rounding."""
    model, feeds = decode_step_inputs(np.random.default_rng(6), np.float32, 3, 4, 8, 2, 16, k=4)
    fused = session(model, kernel_lib, tmp_path)
    nested = session(only_inner_kernels(onnx.load_from_string(model)).SerializeToString(), kernel_lib, tmp_path)
    want, got = fused.run(None, feeds), nested.run(None, feeds)
    executed = executed_ops(nested)
    assert executed.count("CausalConv1d") == 1 and executed.count("SsmStep") == 1, executed
    assert executed_ops(fused) == ["MambaDecodeStep"]
    for name, a, b in zip(("y", "new_conv_state", "new_ssm_state"), want, got):
        assert_close(b, a, 1e-5, name)


@pytest.mark.parametrize("op", ["CausalConv1d", "SsmStep", "SsdChunkScan", "MambaDecodeStep"])
def test_registered_kernel_runs_as_one_node(kernel_lib, op, tmp_path):
    rng = np.random.default_rng(0)
    if op == "CausalConv1d":
        model, feeds = conv_inputs(rng, np.float32, b=1, t=3, c=8, k=4, lengths=[3])
    elif op == "MambaDecodeStep":
        model, feeds = decode_step_inputs(rng, np.float32, b=1, h=2, p=4, g=1, n=8, k=4)
    else:
        feeds = ssm_inputs(rng, np.float32, 1, 3, 2, 4, 1, 8, valid=None)
        if op == "SsmStep":
            feeds = {k: (v[:, 0] if k in ("x", "dt", "B", "C") else v) for k, v in feeds.items()}
            model = step_model(np.float32, 2, 4, 1, 8)
        else:
            model = scan_model(np.float32, 2, 4, 1, 8, 2)
    with_lib, without = session(model, kernel_lib, tmp_path), session(model, None, tmp_path)
    with_lib.run(None, feeds)
    without.run(None, feeds)
    assert executed_ops(with_lib) == [op]
    expanded = executed_ops(without)
    assert op not in expanded and len(expanded) > 5  # the function body, inlined into standard ops


# ---- whole bundles -----------------------------------------------------------------------------------

def make_engine(bundle: Path, lib: str | None):
    from edge_runtime.engine.engine import Engine, EngineConfig
    from edge_runtime.engine.providers import ProviderConfig

    return Engine(bundle, EngineConfig(max_batch=4, providers=ProviderConfig(custom_op_library=lib)))


def run_calls(engine, prompts: list[list[int]], decode_steps: int) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """A right-padded batched prefill, then decode steps; (logits, a copy of every slot's state, K/V up to its
    length) after each call."""
    runner, pool = engine.runner, engine.pool
    slots = [pool.allocate() for _ in prompts]
    kv = {s.name for s in pool.specs if s.per_token}

    def snap(logits: np.ndarray, past: list[int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return logits.copy(), {f"{k} slot {slot}": v[:, :n] if k in kv else v
                               for slot, n in zip(slots, past) for k, v in pool.read(slot).items()}

    past = [len(p) for p in prompts]
    out = [snap(runner.prefill(slots, prompts, [0] * len(prompts)), past)]
    tokens = [p[-1] for p in prompts]
    for _ in range(decode_steps):
        logits = runner.decode(slots, tokens, past)
        past = [q + 1 for q in past]
        out.append(snap(logits, past))
        tokens = [int(t) for t in logits.argmax(-1)]
    return out


def test_bundle_runs_unchanged_with_kernel_library(kernel_lib, tiny_bundle, tmp_path):
    """The same bundle, with and without the kernel library: same logits and states, same greedy tokens."""
    from edge_runtime.engine.records import GenerationRequest
    from edge_runtime.engine.sampler import SamplingParams

    plain, native = make_engine(tiny_bundle, None), make_engine(tiny_bundle, kernel_lib)
    rng = np.random.default_rng(0)
    vocab = plain.model_config.vocab_size
    prompts = [rng.integers(3, vocab, n).tolist() for n in (23, 7, 16)]  # right padding within the batch
    for call, ((l_ref, s_ref), (l_got, s_got)) in enumerate(zip(run_calls(plain, prompts, 6),
                                                                run_calls(native, prompts, 6))):
        assert_close(l_ref, l_got, 1e-4, f"logits, call {call}")
        for name in s_ref:
            assert_close(s_ref[name], s_got[name], 1e-4, f"{name}, call {call}")

    request = lambda: GenerationRequest(prompts[0], SamplingParams(greedy=True), max_tokens=32, ignore_eos=True)
    ref, got = plain.generate(request()), native.generate(request())
    assert len(ref.token_ids) == 32
    assert got.token_ids == ref.token_ids


def bundle_feeds(bundle_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """Inputs of one call of each graph: a 9-token prefill, a decode step after 4 tokens."""
    engine = make_engine(bundle_dir, None)
    slot = engine.pool.allocate()
    past = {name: np.zeros_like(state)[None] for name, state in engine.pool.read(slot).items()}
    return {"decode": {**past, "input_ids": np.array([[5]]), "past_lengths": np.array([4])},
            "prefill": {**past, "input_ids": np.arange(3, 12)[None],
                        "lengths": np.array([9]), "past_lengths": np.array([0])}}


def profiled_ops(model: str | bytes, weights, lib: str | None, feeds: dict[str, np.ndarray], tmp_path: Path) -> list[str]:
    """The op types ORT executes for one run of a bundle graph, with the runner's optimisation level."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_profiling, so.profile_file_prefix = True, str(tmp_path / "ort")
    if lib:
        so.register_custom_ops_library(lib)
    for name, value in weights.values.items():
        so.add_initializer(name, value)
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    sess.run(None, feeds)
    return executed_ops(sess)


def test_bundle_executes_kernels_not_bodies(kernel_lib, tiny_bundle, tmp_path):
    """In the bundle's own graphs the custom ops run as single nodes, and the node count drops: decode runs
    one MambaDecodeStep per Mamba layer and one DecodeAttention per attention layer (without the library,
    GroupQueryAttention, its body), prefill CausalConv1d and SsdChunkScan."""
    from edge_runtime.bundle.reader import open_bundle
    from edge_runtime.engine.runner import WeightMap

    bundle = open_bundle(tiny_bundle)
    weights = WeightMap(bundle)
    mamba, attention = len(bundle.config.layers_of("M")), len(bundle.config.layers_of("*"))
    assert mamba > 0 and attention > 0
    want = {"decode": {"MambaDecodeStep": mamba, "DecodeAttention": attention},
            "prefill": {"CausalConv1d": mamba, "SsdChunkScan": mamba}}
    for graph, feeds in bundle_feeds(tiny_bundle).items():
        path = str(bundle.graph_path(graph))
        native = profiled_ops(path, weights, kernel_lib, feeds, tmp_path)
        bodies = profiled_ops(path, weights, None, feeds, tmp_path)
        assert {op: native.count(op) for op in ops.CUSTOM_OPS if native.count(op)} == want[graph]
        assert not set(ops.CUSTOM_OPS) & set(bodies)
        assert bodies.count("GroupQueryAttention") == attention
        assert len(native) < len(bodies) * 0.75, (len(native), len(bodies))


def test_fused_decode_step_runs_fewer_kernels(kernel_lib, tiny_bundle, tmp_path):
    """With the library, decode runs at least 15 fewer nodes per Mamba layer than with kernels for
    CausalConv1d and SsmStep only (a library built before MambaDecodeStep)."""
    from edge_runtime.bundle.reader import open_bundle
    from edge_runtime.engine.runner import WeightMap

    bundle = open_bundle(tiny_bundle)
    weights = WeightMap(bundle)
    feeds = bundle_feeds(tiny_bundle)["decode"]
    model = onnx.load(str(bundle.graph_path("decode")), load_external_data=False)
    renamed = tmp_path / "decode.onnx"  # beside the weights file its initializers name
    onnx.save(only_inner_kernels(model), renamed)
    shutil.copyfile(bundle.path / bundle.weights["file"], tmp_path / bundle.weights["file"])  # ORT refuses links out
    fused = profiled_ops(str(bundle.graph_path("decode")), weights, kernel_lib, feeds, tmp_path)
    inner = profiled_ops(str(renamed), weights, kernel_lib, feeds, tmp_path)
    mamba = len(bundle.config.layers_of("M"))
    assert inner.count("SsmStep") == inner.count("CausalConv1d") == mamba
    print(f"decode nodes per step, tiny bundle: {len(inner)} with CausalConv1d/SsmStep kernels, "
          f"{len(fused)} with MambaDecodeStep")
    assert len(fused) <= len(inner) - 15 * mamba, (len(fused), len(inner))


# ---- float16 bundle ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_bundle_fp16(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nemotron_export.bundle import ExportOptions, export_bundle
    from nemotron_export.onnx_graph import WeightFormat

    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("bundle") / "tiny-fp16",
                         ExportOptions(weights=WeightFormat(kind="fp16"), max_batch=4, max_context=256),
                         progress=False)


def test_fp16_bundle_with_kernel_library(kernel_lib, tiny_bundle_fp16):
    """float16 activations (T = float16) through the kernels: logits and states agree to fp16 rounding."""
    plain, native = make_engine(tiny_bundle_fp16, None), make_engine(tiny_bundle_fp16, kernel_lib)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, plain.model_config.vocab_size, n).tolist() for n in (19, 6)]
    for call, ((l_ref, s_ref), (l_got, s_got)) in enumerate(zip(run_calls(plain, prompts, 4),
                                                                run_calls(native, prompts, 4))):
        assert_close(l_ref, l_got, 2e-2, f"logits, call {call}")
        for name in s_ref:
            assert_close(s_ref[name], s_got[name], 2e-2, f"{name}, call {call}")
