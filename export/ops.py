"""The custom ONNX ops of nemotron-edge: one place per op for its schema, its reference body and its docs.

All ops live in the ONNX domain `nemotron_edge` (DOMAIN, VERSION). Every bundle ships each op as a
model-local ONNX function whose body uses standard ops only, or calls the functions of our other ops
(which ONNX Runtime inlines in turn), so stock ONNX Runtime (any execution provider) runs any bundle.
A runtime that registers a kernel of the same domain/name (ONNX Runtime prefers a registered kernel to
the function body), or a TensorRT plugin of the same name, replaces the op without re-export. The
bodies follow nemotron_export.ssm line by line, MambaDecodeStep the mixer in nemotron_export.model.

State in place: the runtime may bind a state input and its new-state output to the same memory
(edge_runtime.engine.state_pool updates consecutive slots in place). Every op allows it: the function bodies
read the state only in nodes that the new state depends on, and a kernel must read each state element
before it writes that element (the native kernels in kernels/ do).

Ops (shapes: b batch, t tokens, c channels, k conv kernel, h heads, p head dim, g groups, n state size):

CausalConv1d(x, conv_state, weight, bias, lengths) -> (y, new_state); attribute `channels` (= c)
    x [b, t, c] T, conv_state [b, c, k-1] T, weight [c, k] T, bias [c] T, lengths [b] int64.
    Depthwise causal convolution of the chunk x continuing after the k-1 inputs in conv_state, then SiLU:
    y[:, i] = silu(bias + sum_j weight[:, j] * full[:, :, i + j]), full = concat(conv_state, x^T).
    new_state [b, c, k-1] T holds the k-1 inputs ending at each row's last valid token (lengths[b]);
    positions at and after lengths[b] are right padding. `channels` exists because ONNX Conv needs its
    group count as a static attribute. T is float32 or float16.

SsdChunkScan(x, dt, A, B, C, D, initial_state) -> (y, final_state); attribute `chunk_size`
    x [b, t, h, p] T, dt [b, t, h] float32 (already softplus'd, clamped, zero on padding),
    A [h] float32 (negative), B, C [b, t, g, n] T, D [h] T, initial_state [b, h, p, n] float32.
    The Mamba-2 recurrence s = exp(dt*A) s + dt x (outer) B;  y = s.C + D x, evaluated chunk-wise
    (state space duality) in float32. y [b, t, h, p] float32, final_state [b, h, p, n] float32.

SsmStep(x, dt, A, B, C, D, state) -> (y, new_state)
    One token of the same recurrence, for decode: x [b, h, p] T, dt [b, h] float32, A [h] float32,
    B, C [b, g, n] T, D [h] T, state [b, h, p, n] float32 -> y [b, h, p] float32, new_state float32.

MambaDecodeStep(zxbcdt, conv_state, conv_weight, conv_bias, dt_bias, A, D, norm_weight, ssm_state)
        -> (y, new_conv_state, new_ssm_state)
    A whole Mamba-2 mixer between in_proj and out_proj for one token (decode graph only; i = inner =
    h*p, c = i + 2*g*n): zxbcdt [b, 1, i + c + h] T is in_proj's output z | xBC | dt_raw,
    conv_state [b, c, k-1] T, conv_weight [c, k] T, conv_bias [c] T, dt_bias [h] float32,
    A [h] float32 (= -exp(A_log)), D [h] T, norm_weight [i] float32, ssm_state [b, h, p, n] float32.
    xBC, new_conv_state = CausalConv1d(xBC, conv_state, ...); x | B | C = xBC;
    dt = clip(softplus(dt_raw + dt_bias), dt_min, dt_max); s, new_ssm_state = SsmStep(x, dt, A, B, C, D, ...);
    y = RMSNorm over n_groups slices of (s * silu(z)), times norm_weight, in float32, returned as T
    [b, 1, i]; new_ssm_state is float32. Attributes: channels (= c, for CausalConv1d), n_groups, epsilon
    (float), dt_min and dt_max (float, default 0 and inf: softplus is >= 0, so no clamp). The body calls
    CausalConv1d and SsmStep, so a runtime with kernels for those two but not this op still uses them.

DecodeAttention(q, k, v, past_key, past_value, seqlens_k, total_sequence_length)
        -> (out, present_key, present_value)
    One decode token of attention over a K/V cache updated in place (decode graph only): q [b, 1, hq*d] T,
    k, v [b, 1, hkv*d] T, past_key, past_value [b, hkv, C, d] T (the slot's cache of capacity C),
    seqlens_k [b] int32 (each row's past length: its new K/V goes there), total_sequence_length [] int32
    (the longest row after this token). present_* is the cache with the new K/V written at seqlens_k;
    out [b, 1, hq*d] T attends each query head (heads i*hq/hkv.. share K/V head i) over its row's
    seqlens_k + 1 positions, scaled by `scale`. Attributes num_heads (hq), kv_num_heads (hkv), scale
    (float). Its body is ONNX Runtime's com.microsoft.GroupQueryAttention rather than standard ops: an
    in-place cache update has no standard-op form that stays in place, and that op (CPU and CUDA kernels)
    does it; our CPU kernel replaces it because it reads each K/V head once for the query heads sharing it.

Helper functions (model-local functions in the same domain, no schema and no kernel expected; the bodies
and the prefill graph call them, so the mixer's arithmetic is written once):
    Segsum(a) -> [..., L, L]: segment sums for the chunk scan.
    TimeStep(dt_raw, dt_bias) -> dt: clip(softplus(dt_raw + dt_bias), dt_min, dt_max) in float32.
    GatedGroupNorm(y, z, weight) -> RMSNorm over n_groups slices of y * silu(z), times weight, float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx.defs import OpSchema
from onnxscript import script
from onnxscript import opset18 as op
from onnxscript.values import Opset

DOMAIN = "nemotron_edge"
VERSION = 1
ne = Opset(DOMAIN, VERSION)
ms = Opset("com.microsoft", 1)

FLOAT = onnx.TensorProto.FLOAT
BOOL = onnx.TensorProto.BOOL
NEG_INF = float("-inf")
INF = float("inf")
ONE = onnx.helper.make_tensor("one", FLOAT, [1], [1.0])
ONE_I64 = onnx.helper.make_tensor("one", onnx.TensorProto.INT64, [1], [1])


@script(ne, default_opset=op)
def Segsum(a):
    """a [..., L] -> [..., L, L]: out[l, s] = sum(a[s+1 : l+1]) for l >= s, -inf above the diagonal."""
    L = op.Shape(a, start=-1)
    rep = op.Expand(op.Unsqueeze(a, [-1]), op.Concat(op.Shape(a), L, axis=0))  # [..., k, s] = a[k]
    ones = op.ConstantOfShape(op.Concat(L, L, axis=0), value=ONE)
    below = op.Cast(op.Trilu(ones, op.Constant(value_int=-1), upper=0), to=BOOL)
    summed = op.CumSum(op.Where(below, rep, op.CastLike(0.0, a)), op.Constant(value_int=-2))
    causal = op.Cast(op.Trilu(ones, upper=0), to=BOOL)
    return op.Where(causal, summed, op.CastLike(NEG_INF, a))


@script(ne, default_opset=op)
def TimeStep(dt_raw, dt_bias, dt_min: float = 0.0, dt_max: float = INF):
    """dt_raw [..., h] T -> clip(softplus(dt_raw + dt_bias), dt_min, dt_max) [..., h] float32."""
    dt = op.Softplus(op.Add(op.Cast(dt_raw, to=FLOAT), dt_bias))
    return op.Clip(dt, op.Constant(value_float=dt_min), op.Constant(value_float=dt_max))


@script(ne, default_opset=op)
def GatedGroupNorm(y, z, weight, n_groups: int, epsilon: float):
    """y [b, t, i] float32, z [b, t, i] T, weight [i] float32 -> RMSNorm over n_groups slices of
    y * silu(z), times weight: [b, t, i] float32."""
    zero = op.Constant(value_ints=[0])
    g = op.Unsqueeze(op.Constant(value_int=n_groups), [0])
    zf = op.Cast(z, to=FLOAT)
    gated = op.Mul(y, op.Mul(zf, op.Sigmoid(zf)))
    grouped = op.Reshape(gated, op.Concat(zero, zero, g, op.Constant(value_ints=[-1]), axis=0))  # [b, t, g, i / g]
    var = op.ReduceMean(op.Pow(grouped, op.Constant(value_float=2.0)), op.Constant(value_ints=[-1]))
    normed = op.Div(grouped, op.Sqrt(op.Add(var, op.Constant(value_float=epsilon))))
    return op.Mul(op.Reshape(normed, op.Concat(zero, zero, op.Shape(weight), axis=0)), weight)


@script(ne, default_opset=op)
def CausalConv1d(x, conv_state, weight, bias, lengths, channels: int):
    full = op.Concat(op.CastLike(conv_state, x), op.Transpose(x, perm=[0, 2, 1]), axis=2)  # [b, c, k-1+t]
    conv = op.Conv(full, op.Unsqueeze(op.CastLike(weight, x), [1]), op.CastLike(bias, x), group=channels)  # [b, c, t]
    y = op.Transpose(op.Mul(conv, op.Sigmoid(conv)), perm=[0, 2, 1])  # silu, [b, t, c]
    km1 = op.Shape(conv_state, start=2, end=3)
    offsets = op.Range(op.Constant(value_int=0), op.Squeeze(km1), op.Constant(value_int=1))  # [k-1]
    idx = op.Add(op.Unsqueeze(lengths, [1, 2]), op.Unsqueeze(offsets, [0, 1]))  # [b, 1, k-1]
    idx = op.Expand(idx, op.Shape(conv_state))  # [b, c, k-1]
    new_state = op.GatherElements(full, idx, axis=2)
    return y, new_state


@script(ne, default_opset=op)
def SsdChunkScan(x, dt, A, B, C, D, initial_state, chunk_size: int):
    L = op.Unsqueeze(op.Constant(value_int=chunk_size), [0])
    shape_x = op.Shape(x)
    b = op.Shape(x, start=0, end=1)
    t = op.Shape(x, start=1, end=2)
    h = op.Shape(x, start=2, end=3)
    p = op.Shape(x, start=3, end=4)
    g = op.Shape(B, start=2, end=3)
    n = op.Shape(B, start=3, end=4)
    pad = op.Mod(op.Sub(L, op.Mod(t, L)), L)
    T = op.Add(t, pad)
    nc = op.Div(T, L)
    zero = op.Constant(value_ints=[0])
    one_axis = op.Constant(value_ints=[1])
    pads = op.Concat(zero, pad, axis=0)
    xf = op.Cast(x, to=FLOAT)
    xp = op.Pad(xf, pads, op.Constant(value_float=0.0), one_axis)
    dtp = op.Pad(op.Cast(dt, to=FLOAT), pads, op.Constant(value_float=0.0), one_axis)
    r = op.Div(h, g)
    shape_bg = op.Concat(b, T, g, r, n, axis=0)
    shape_bh = op.Concat(b, T, h, n, axis=0)
    Bp = op.Reshape(op.Expand(op.Unsqueeze(op.Pad(op.Cast(B, to=FLOAT), pads, op.Constant(value_float=0.0), one_axis), [3]), shape_bg), shape_bh)
    Cp = op.Reshape(op.Expand(op.Unsqueeze(op.Pad(op.Cast(C, to=FLOAT), pads, op.Constant(value_float=0.0), one_axis), [3]), shape_bg), shape_bh)
    xc = op.Reshape(xp, op.Concat(b, nc, L, h, p, axis=0))  # [b, c, L, h, p]
    dtc = op.Reshape(dtp, op.Concat(b, nc, L, h, axis=0))  # [b, c, L, h]
    Bc = op.Reshape(Bp, op.Concat(b, nc, L, h, n, axis=0))  # [b, c, L, h, n]
    Cc = op.Reshape(Cp, op.Concat(b, nc, L, h, n, axis=0))
    xdt = op.Mul(xc, op.Unsqueeze(dtc, [-1]))
    dA = op.Transpose(op.Mul(dtc, op.Cast(A, to=FLOAT)), perm=[0, 3, 1, 2])  # [b, h, c, L]
    seg = Segsum(dA)  # [b, h, c, L, L]

    scores = op.Mul(op.Einsum(Cc, Bc, equation="bclhn,bcshn->bhcls"), op.Exp(seg))
    y_diag = op.Einsum(scores, xdt, equation="bhcls,bcshp->bclhp")

    last = op.Sub(L, op.Constant(value_ints=[1]))
    decay_to_end = op.Exp(op.Squeeze(op.Gather(seg, last, axis=3), [3]))  # [b, h, c, L]
    B_dec = op.Mul(Bc, op.Unsqueeze(op.Transpose(decay_to_end, perm=[0, 2, 3, 1]), [-1]))  # [b, c, L, h, n]
    chunk_states = op.Einsum(B_dec, xdt, equation="bclhn,bclhp->bchpn")

    states = op.Concat(op.Unsqueeze(initial_state, [1]), chunk_states, axis=1)  # [b, c+1, h, p, n]
    totals = op.ReduceSum(dA, op.Constant(value_ints=[-1]), keepdims=0)  # [b, h, c]
    totals = op.Pad(totals, op.Constant(value_ints=[1, 0]), op.Constant(value_float=0.0), op.Constant(value_ints=[-1]))
    carry = op.Exp(Segsum(totals))  # [b, h, c+1, c+1]
    carried = op.Einsum(carry, states, equation="bhzc,bchpn->bzhpn")  # [b, c+1, h, p, n]
    entering = op.Slice(carried, zero, nc, one_axis)
    final_state = op.Squeeze(op.Gather(carried, nc, axis=1), [1])

    decay_from_start = op.Exp(op.CumSum(dA, op.Constant(value_int=-1)))  # [b, h, c, L]
    y_off = op.Mul(op.Einsum(Cc, entering, equation="bclhn,bchpn->bclhp"),
                   op.Unsqueeze(op.Transpose(decay_from_start, perm=[0, 2, 3, 1]), [-1]))
    y = op.Slice(op.Reshape(op.Add(y_diag, y_off), op.Concat(b, T, h, p, axis=0)), zero, t, one_axis)
    y = op.Add(y, op.Mul(op.Unsqueeze(op.Cast(D, to=FLOAT), [1]), xf))
    return y, final_state


@script(ne, default_opset=op)
def SsmStep(x, dt, A, B, C, D, state):
    b = op.Shape(x, start=0, end=1)
    h = op.Shape(x, start=1, end=2)
    g = op.Shape(B, start=1, end=2)
    n = op.Shape(B, start=2, end=3)
    r = op.Div(h, g)
    shape_bh = op.Concat(b, h, n, axis=0)
    shape_bg = op.Concat(b, g, r, n, axis=0)
    Bh = op.Reshape(op.Expand(op.Unsqueeze(op.Cast(B, to=FLOAT), [2]), shape_bg), shape_bh)  # [b, h, n]
    Ch = op.Reshape(op.Expand(op.Unsqueeze(op.Cast(C, to=FLOAT), [2]), shape_bg), shape_bh)
    xf = op.Cast(x, to=FLOAT)
    decay = op.Exp(op.Mul(dt, A))  # [b, h]
    xdt = op.Mul(xf, op.Unsqueeze(dt, [-1]))  # [b, h, p]
    new_state = op.Add(op.Mul(state, op.Unsqueeze(decay, [-1, -2])),
                       op.Mul(op.Unsqueeze(xdt, [-1]), op.Unsqueeze(Bh, [2])))  # [b, h, p, n]
    y = op.Squeeze(op.MatMul(new_state, op.Unsqueeze(Ch, [-1])), [-1])  # [b, h, p]
    y = op.Add(y, op.Mul(op.Unsqueeze(op.Cast(D, to=FLOAT), [1]), xf))
    return y, new_state


@script(ne, default_opset=op)
def MambaDecodeStep(zxbcdt, conv_state, conv_weight, conv_bias, dt_bias, A, D, norm_weight, ssm_state,
                    channels: int, n_groups: int, epsilon: float, dt_min: float = 0.0, dt_max: float = INF):
    zero = op.Constant(value_ints=[0])
    rest = op.Constant(value_ints=[-1])
    inner = op.Shape(norm_weight)  # [1]: h * p
    c = op.Shape(conv_weight, start=0, end=1)  # [1]: inner + 2 g n
    h = op.Shape(dt_bias)
    g = op.Unsqueeze(op.Constant(value_int=n_groups), [0])
    gn = op.Div(op.Sub(c, inner), op.Constant(value_ints=[2]))
    z, xbc, dt_raw = op.Split(zxbcdt, op.Concat(inner, c, h, axis=0), axis=-1)
    lengths = op.ConstantOfShape(op.Shape(zxbcdt, start=0, end=1), value=ONE_I64)  # [b]: one token each
    xbc, new_conv_state = CausalConv1d(xbc, conv_state, conv_weight, conv_bias, lengths, channels=channels)
    x, B, C = op.Split(xbc, op.Concat(inner, gn, gn, axis=0), axis=-1)
    dt = TimeStep(dt_raw, dt_bias, dt_min=dt_min, dt_max=dt_max)  # [b, 1, h]
    shape_gn = op.Concat(zero, g, rest, axis=0)  # [b, g, n]
    y, new_ssm_state = SsmStep(op.Reshape(x, op.Concat(zero, h, rest, axis=0)), op.Squeeze(dt, [1]), A,
                               op.Reshape(B, shape_gn), op.Reshape(C, shape_gn), D, ssm_state)  # y [b, h, p]
    y = op.Reshape(y, op.Concat(zero, rest, inner, axis=0))  # [b, 1, inner] float32
    y = op.CastLike(GatedGroupNorm(y, z, norm_weight, n_groups=n_groups, epsilon=epsilon), zxbcdt)
    return y, new_conv_state, new_ssm_state


@script(ne, default_opset=op)
def DecodeAttention(q, k, v, past_key, past_value, seqlens_k, total_sequence_length,
                    num_heads: int, kv_num_heads: int, scale: float):
    out, present_key, present_value = ms.GroupQueryAttention(
        q, k, v, past_key, past_value, seqlens_k, total_sequence_length,
        num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale)
    return out, present_key, present_value


@dataclass(frozen=True)
class Attr:
    """An attribute of a custom op, int or float; required unless it has a default."""

    name: str
    kind: type = int
    default: float | None = None

    def schema(self) -> OpSchema.Attribute:
        if self.default is not None:
            return OpSchema.Attribute(self.name, onnx.helper.make_attribute(self.name, self.default), "")
        kind = OpSchema.AttrType.INT if self.kind is int else OpSchema.AttrType.FLOAT
        return OpSchema.Attribute(self.name, kind, "")


@dataclass(frozen=True)
class CustomOp:
    """One custom op: its schema (inputs, outputs, attributes) and its reference function body."""

    name: str
    inputs: tuple[tuple[str, str], ...]  # (name, type constraint)
    outputs: tuple[tuple[str, str], ...]
    attributes: tuple[Attr, ...]
    body: object  # onnxscript function

    def schema(self) -> OpSchema:
        types = {"T": ["tensor(float)", "tensor(float16)"], "F": ["tensor(float)"], "I": ["tensor(int64)"],
                 "J": ["tensor(int32)"]}
        used = sorted({t for _, t in self.inputs + self.outputs})
        return OpSchema(
            self.name, DOMAIN, VERSION,
            doc=f"nemotron-edge custom op {self.name}; see nemotron_export.ops.",
            inputs=[OpSchema.FormalParameter(n, t) for n, t in self.inputs],
            outputs=[OpSchema.FormalParameter(n, t) for n, t in self.outputs],
            type_constraints=[(t, types[t], "") for t in used],
            attributes=[a.schema() for a in self.attributes],
        )


CUSTOM_OPS: dict[str, CustomOp] = {
    op_.name: op_ for op_ in (
        CustomOp("CausalConv1d", (("x", "T"), ("conv_state", "T"), ("weight", "T"), ("bias", "T"), ("lengths", "I")),
                 (("y", "T"), ("new_state", "T")), (Attr("channels"),), CausalConv1d),
        CustomOp("SsdChunkScan", (("x", "T"), ("dt", "F"), ("A", "F"), ("B", "T"), ("C", "T"), ("D", "T"),
                                  ("initial_state", "F")), (("y", "F"), ("final_state", "F")), (Attr("chunk_size"),),
                 SsdChunkScan),
        CustomOp("SsmStep", (("x", "T"), ("dt", "F"), ("A", "F"), ("B", "T"), ("C", "T"), ("D", "T"), ("state", "F")),
                 (("y", "F"), ("new_state", "F")), (), SsmStep),
        CustomOp("MambaDecodeStep",
                 (("zxbcdt", "T"), ("conv_state", "T"), ("conv_weight", "T"), ("conv_bias", "T"), ("dt_bias", "F"),
                  ("A", "F"), ("D", "T"), ("norm_weight", "F"), ("ssm_state", "F")),
                 (("y", "T"), ("new_conv_state", "T"), ("new_ssm_state", "F")),
                 (Attr("channels"), Attr("n_groups"), Attr("epsilon", float), Attr("dt_min", float, 0.0),
                  Attr("dt_max", float, INF)),
                 MambaDecodeStep),
        CustomOp("DecodeAttention",
                 (("q", "T"), ("k", "T"), ("v", "T"), ("past_key", "T"), ("past_value", "T"), ("seqlens_k", "J"),
                  ("total_sequence_length", "J")),
                 (("out", "T"), ("present_key", "T"), ("present_value", "T")),
                 (Attr("num_heads"), Attr("kv_num_heads"), Attr("scale", float)), DecodeAttention),
    )
}
# ONNX Runtime contrib ops a body may call instead of standard ops: DecodeAttention's in-place cache update
# has no standard-op form that stays in place, and every ONNX Runtime build (CPU and CUDA kernels) has this op.
RUNTIME_OPS_IN_BODIES = {("com.microsoft", "GroupQueryAttention")}
# Functions the bodies and the prefill graph call; shipped alongside, not ops a kernel is expected to replace.
HELPER_FUNCTIONS = (Segsum, TimeStep, GatedGroupNorm)


def register_schemas() -> None:
    """Make onnx.checker and shape inference know our ops (idempotent)."""
    for custom in CUSTOM_OPS.values():
        if not onnx.defs.has(custom.name, DOMAIN):
            onnx.defs.register_schema(custom.schema())


def function_protos() -> list[onnx.FunctionProto]:
    """The model-local functions every bundle graph carries."""
    return [c.body.to_function_proto() for c in CUSTOM_OPS.values()] + [f.to_function_proto() for f in HELPER_FUNCTIONS]
