"""Build the prefill and decode ONNX graphs of a Nemotron-H model, node by node, mirroring nemotron_export.model.

Both graphs name their weights identically and reference them by offset in one external weights file,
written before the graphs are built (nemotron_export.weights_file): building a graph holds no weights, only
the file's index. The builder emits standard ONNX ops, MatMulNBits for quantized projections, and our
custom SSM ops (nemotron_export.ops).

Graph interface (b batch, t tokens, C the K/V buffer's capacity; state names from edge_runtime.bundle.state_layout):
  inputs   input_ids int64 [b, t]; lengths int64 [b] (prefill only: valid tokens per right-padded row);
           past_lengths int64 [b] (tokens already in each row's state; 0 starts a sequence: prefill ignores
           that row's past conv/SSM state, so a reused slot needs no clearing); past.* states (key/value
           [b, kv_heads, C, head_dim])
  outputs  logits float32 [b, vocab] at each row's last valid token; present.* states (conv/ssm: after
           the last valid token; key/value: the same buffer as past.*, with this call's t tokens written at
           each row's past length; the runtime binds both to the slot's own memory)
A prefill call with any row past 0 must have one row (GroupQueryAttention's limit); decode takes any batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.numpy_helper
from onnx import TensorProto, helper

from edge_runtime.bundle.reader import WEIGHTS_FILE
from edge_runtime.bundle.model_config import ATTENTION, MAMBA, ModelConfig
from edge_runtime.bundle.state_layout import state_layout
from nemotron_export import ops

OPSET = 18
MS_DOMAIN = "com.microsoft"
ONNX_DTYPE_BY_NAME = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16,
                      "uint8": TensorProto.UINT8, "int64": TensorProto.INT64}
ONNX_DTYPE = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}


@dataclass(frozen=True)
class WeightFormat:
    """How projections are stored. `kind`: fp32, fp16, bf16 (stored 16-bit, computed in float32), int8, int4.

    `group_size`: the MatMulNBits block size of int8 projections and of lm_head; for int4 the byte budget
    of the projections, which are planned per matrix (nemotron_export.allocation) within the bytes of
    uniform int4 at this group size."""

    kind: str = "fp32"
    group_size: int = 32
    quantize_lm_head: bool = True
    # None: int8 rows for int4 bundles (keeps int4 weight bytes under 17% of fp32 at group 32 with no
    # measurable loss), 16-bit for int8 bundles (int8 rows cost them agreement).
    quantize_embeddings: bool | None = None
    # MatMulNBits' accuracy_level, for the CPU provider (the CUDA kernels ignore it): 4 quantizes the
    # activations to int8 per block and runs ONNX Runtime's integer kernels; 0 computes in the activation
    # dtype, exact, but its 8-bit blocks have no such kernel there: every call dequantizes the whole matrix
    # to float32 first (`python -m bench.matmul_nbits` measures both).
    accuracy_level: int = 4

    def __post_init__(self) -> None:
        if self.kind not in ("fp32", "fp16", "bf16", "int8", "int4"):
            raise ValueError(f"--weights: unknown weight format {self.kind!r}; choose fp32, fp16, bf16, int8 or int4")

    @property
    def bits(self) -> int | None:
        return {"int8": 8, "int4": 4}.get(self.kind)

    @property
    def head_bits(self) -> int | None:
        """lm_head's bits: 8 in int4 bundles too, since the output layer's error goes straight into the
        logits (llama.cpp's Q4_K_M keeps it at 6 bits for the same reason); None when not quantized."""
        if self.bits is None or not self.quantize_lm_head:
            return None
        return 8

    @property
    def embeddings_int8(self) -> bool:
        if self.bits is None:
            return False
        return self.kind == "int4" if self.quantize_embeddings is None else self.quantize_embeddings

    @property
    def activation_dtype(self) -> str:
        return "float16" if self.kind == "fp16" else "float32"

    @property
    def storage_dtype(self) -> np.dtype:
        return np.dtype(np.float16) if self.kind in ("fp16", "int8", "int4") else np.dtype(np.float32)


@dataclass(frozen=True)
class WeightIndex:
    """What the graphs know of weights.bin: `tensors` (name -> offset, nbytes, dtype, shape), `blocks`
    (MatMulNBits weight name -> bits, block_size) and `shapes` (checkpoint weight name -> its shape, for
    MatMulNBits' N and K)."""

    tensors: Mapping[str, dict]
    blocks: Mapping[str, dict]
    shapes: Mapping[str, tuple[int, ...]]


class GraphBuilder:
    """Accumulates the nodes of one graph; `node()` returns output names, fresh for every call."""

    def __init__(self, cfg: ModelConfig, fmt: WeightFormat, weights: WeightIndex):
        self.cfg, self.fmt, self.weights = cfg, fmt, weights
        self.nodes: list[onnx.NodeProto] = []
        self.act = ONNX_DTYPE[fmt.activation_dtype]
        self.consts: dict[str, np.ndarray] = {}  # small inline initializers: shape inference must read them
        self._count = 0

    def node(self, op_type: str, inputs: list[str], n_out: int = 1, domain: str = "", **attrs) -> list[str]:
        self._count += 1
        outs = [f"{op_type.lower()}_{self._count}_{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=f"{op_type}_{self._count}", domain=domain, **attrs))
        return outs

    def one(self, op_type: str, inputs: list[str], domain: str = "", **attrs) -> str:
        return self.node(op_type, inputs, 1, domain, **attrs)[0]

    def const(self, name: str, value: np.ndarray) -> str:
        """A small constant stored inside the graph (shapes, axes, epsilons)."""
        self.consts.setdefault(f"const.{name}", value)
        return f"const.{name}"

    def ints(self, *values: int) -> str:
        return self.const("i64_" + "_".join(str(v).replace("-", "m") for v in values), np.array(values, dtype=np.int64))

    def scalar(self, value: float) -> str:
        dtype = np.float16 if self.act == TensorProto.FLOAT16 else np.float32
        return self.const(f"{np.dtype(dtype).name}_{value!r}", np.array(value, dtype=dtype))

    # ---- weights --------------------------------------------------------------------------------------

    def param(self, name: str) -> str:
        """A weight of weights.bin used as it is (norm weights, biases, conv, A, D)."""
        if name not in self.weights.tensors:
            raise KeyError(f"{name}: not in weights.bin")
        return name

    def linear(self, x: str, name: str, bias: str | None = None) -> str:
        """x [..., in] @ W^T for the checkpoint weight `name` [out, in], as weights.bin stores it: MatMulNBits
        blocks at their bits and block size, or W^T [in, out] for MatMul."""
        n, k = self.weights.shapes[name]
        if name in self.weights.blocks:
            y = self.one("MatMulNBits", [x, self.param(name + ".qweight"), self.param(name + ".scales")],
                         domain=MS_DOMAIN, K=k, N=n, accuracy_level=self.fmt.accuracy_level,
                         **self.weights.blocks[name])
        else:
            y = self.one("MatMul", [x, self._dense(name + ".T")])
        return self.one("Add", [y, self.param(bias)]) if bias else y

    def _dense(self, name: str) -> str:
        """A float weight in the storage dtype; bf16 weights are stored 16-bit and cast up in the graph."""
        if self.fmt.kind == "bf16":
            return self.one("Cast", [self.param(name)], to=TensorProto.FLOAT)
        return self.param(name)

    # ---- layers ---------------------------------------------------------------------------------------

    def rms_norm(self, x: str, weight: str) -> str:
        xf = self.one("Cast", [x], to=TensorProto.FLOAT)
        var = self.one("ReduceMean", [self.one("Pow", [xf, self.const("f32_two", np.array(2.0, np.float32))]),
                                      self.ints(-1)])
        denom = self.one("Sqrt", [self.one("Add", [var, self.const(f"f32_eps", np.array(self.cfg.layer_norm_epsilon, np.float32))])])
        y = self.one("Mul", [self.one("Div", [xf, denom]), self.param(weight)])
        return self.one("Cast", [y], to=self.act)

    def mamba(self, i: int, u: str, valid: str | None, decode: bool) -> str:
        """One Mamba-2 mixer. Decode runs everything between in_proj and out_proj as one MambaDecodeStep
        node (one kernel instead of ~25 small nodes); prefill runs the same pieces its body calls
        (CausalConv1d, TimeStep, GatedGroupNorm) around SsdChunkScan instead of SsmStep."""
        c, p = self.cfg, f"backbone.layers.{i}.mixer."
        proj = self.linear(u, p + "in_proj.weight", p + "in_proj.bias" if c.mamba_proj_bias else None)  # z | xBC | dt_raw
        conv_w, conv_b = self.param(p + "conv1d.weight"), self.param(p + "conv1d.bias")
        dt_bias, A, D, norm_w = (self.param(p + n) for n in ("dt_bias", "A", "D", "norm.weight"))
        if decode:
            y = self.mamba_decode_step(i, proj, conv_w, conv_b, dt_bias, A, D, norm_w)
        else:
            y = self.mamba_prefill(i, proj, conv_w, conv_b, dt_bias, A, D, valid, norm_w)
        return self.linear(y, p + "out_proj.weight", p + "out_proj.bias" if c.mamba_proj_bias else None)

    def dt_clamp(self) -> dict[str, float]:
        """time_step_limit as the float32-safe dt_min/dt_max attributes of TimeStep and MambaDecodeStep;
        none when it clamps nothing (softplus is >= 0: the attributes' defaults)."""
        lo, hi = self.cfg.time_step_limit
        if lo > 0 or np.isfinite(hi):
            return dict(dt_min=lo, dt_max=min(hi, 3.0e38))
        return {}

    def mamba_decode_step(self, i: int, proj: str, conv_w: str, conv_b: str, dt_bias: str, A: str, D: str,
                          norm_w: str) -> str:
        """proj [b, 1, inner + conv_dim + h] -> [b, 1, inner] in the activation dtype (out_proj's input)."""
        c = self.cfg
        y, conv_state, ssm = self.node("MambaDecodeStep", [proj, f"past.{i}.conv", conv_w, conv_b, dt_bias, A, D,
                                                           norm_w, f"past.{i}.ssm"], 3, domain=ops.DOMAIN,
                                       channels=c.conv_dim, n_groups=c.n_groups, epsilon=c.layer_norm_epsilon,
                                       **self.dt_clamp())
        self._rename(conv_state, f"present.{i}.conv")
        self._rename(ssm, f"present.{i}.ssm")
        return y

    def mamba_prefill(self, i: int, proj: str, conv_w: str, conv_b: str, dt_bias: str, A: str, D: str,
                      valid: str, norm_w: str) -> str:
        """proj [b, t, inner + conv_dim + h] -> [b, t, inner] in the activation dtype (out_proj's input)."""
        c = self.cfg
        h, hd, g, n = c.mamba_num_heads, c.mamba_head_dim, c.n_groups, c.ssm_state_size
        z, xbc, dt_raw = self.node("Split", [proj, self.ints(c.mamba_inner, c.conv_dim, h)], 3, axis=-1)
        xbc, conv_state = self.node("CausalConv1d", [xbc, self.fresh_state(f"past.{i}.conv", 3), conv_w, conv_b, "lengths"], 2,
                                    domain=ops.DOMAIN, channels=c.conv_dim)
        self._rename(conv_state, f"present.{i}.conv")
        x, B, C = self.node("Split", [xbc, self.ints(c.mamba_inner, g * n, g * n)], 3, axis=-1)
        dt = self.one("TimeStep", [dt_raw, dt_bias], domain=ops.DOMAIN, **self.dt_clamp())
        dt = self.one("Mul", [dt, valid])  # padding: dt = 0 keeps the state unchanged
        y, ssm = self.node("SsdChunkScan", [
            self.one("Reshape", [x, self.ints(0, 0, h, hd)]), dt, A,
            self.one("Reshape", [B, self.ints(0, 0, g, n)]), self.one("Reshape", [C, self.ints(0, 0, g, n)]),
            D, self.fresh_state(f"past.{i}.ssm", 4)], 2, domain=ops.DOMAIN, chunk_size=c.chunk_size)
        self._rename(ssm, f"present.{i}.ssm")
        y = self.one("Reshape", [y, self.ints(0, -1, c.mamba_inner)])  # [b, t, inner] float32
        normed = self.one("GatedGroupNorm", [y, z, norm_w], domain=ops.DOMAIN,
                          n_groups=c.n_groups, epsilon=c.layer_norm_epsilon)
        return self.one("Cast", [normed], to=self.act)

    def attention(self, i: int, u: str, kv_lengths: tuple[str, str], decode: bool) -> str:
        """One attention layer: ONNX Runtime's GroupQueryAttention in prefill, our DecodeAttention (whose
        body is that op; nemotron_export.ops) in decode; no rotary, the model has no position encoding. The
        K/V cache is the slot's own buffer, bound as both `past` and `present`: this call's K/V is written at
        each row's position in place and attention runs over each row's own length, reading K in its stored
        [kv_heads, capacity, head_dim] layout."""
        c, p = self.cfg, f"backbone.layers.{i}.mixer."
        hq, hkv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        bias = (lambda n: p + n + ".bias") if c.attention_bias else (lambda n: None)
        q = self.linear(u, p + "q_proj.weight", bias("q_proj"))  # [b, t, hq * hd]
        k = self.linear(u, p + "k_proj.weight", bias("k_proj"))  # [b, t, hkv * hd]
        v = self.linear(u, p + "v_proj.weight", bias("v_proj"))
        seqlens_k, total = kv_lengths
        out, key, value = self.node("DecodeAttention" if decode else "GroupQueryAttention",
                                    [q, k, v, f"past.{i}.key", f"past.{i}.value", seqlens_k, total], 3,
                                    domain=ops.DOMAIN if decode else MS_DOMAIN,
                                    num_heads=hq, kv_num_heads=hkv, scale=float(hd ** -0.5))
        self._rename(key, f"present.{i}.key")
        self._rename(value, f"present.{i}.value")
        return self.linear(out, p + "o_proj.weight", bias("o_proj"))  # out [b, t, hq * hd]

    def mlp(self, i: int, u: str) -> str:
        p = f"backbone.layers.{i}.mixer."
        bias = (lambda n: p + n + ".bias") if self.cfg.mlp_bias else (lambda n: None)
        up = self.one("Relu", [self.linear(u, p + "up_proj.weight", bias("up_proj"))])
        return self.linear(self.one("Mul", [up, up]), p + "down_proj.weight", bias("down_proj"))

    def _rename(self, produced: str, wanted: str) -> None:
        """Give the output `produced` of the last nodes the graph-level name `wanted`."""
        for node in reversed(self.nodes):
            for k, out in enumerate(node.output):
                if out == produced:
                    node.output[k] = wanted
                    return
        raise KeyError(produced)

    # ---- masks ------------------------------------------------------------------------------------------

    def valid_mask(self) -> str:
        """[b, t, 1] float32: 1 for real tokens, 0 for right padding."""
        t = self.one("Squeeze", [self.one("Shape", ["input_ids"], start=1, end=2), self.ints(0)])
        pos = self.one("Range", [self.const("i64_zero", np.array(0, np.int64)), t, self.const("i64_one", np.array(1, np.int64))])
        ok = self.one("Less", [self.one("Unsqueeze", [pos, self.ints(0)]), self.one("Unsqueeze", ["lengths", self.ints(1)])])
        return self.one("Unsqueeze", [self.one("Cast", [ok], to=TensorProto.FLOAT), self.ints(-1)])

    def kv_lengths(self) -> tuple[str, str]:
        """GroupQueryAttention's `seqlens_k` (int32 [b]: each row's K/V length after this call, minus one) and
        `total_sequence_length` (int32 scalar: the longest). Every row counts all t tokens of the call, its
        right padding too: the kernel places a row's new tokens at seqlens_k + 1 - t, so padding lands after the
        row's valid K/V, where nothing reads it before the row's next tokens overwrite it."""
        t = self.one("Shape", ["input_ids"], start=1, end=2)  # [1]
        total = self.one("Add", ["past_lengths", t])  # [b]
        seqlens_k = self.one("Cast", [self.one("Sub", [total, self.const("i64_one", np.array(1, np.int64))])], to=TensorProto.INT32)
        longest = self.one("Cast", [self.one("ReduceMax", [total], keepdims=0)], to=TensorProto.INT32)
        return seqlens_k, longest

    def fresh_state(self, name: str, rank: int) -> str:
        """The past state `name` [b, ...] with the rows that start a sequence (past_lengths 0) zeroed, so a
        reused slot needs no clearing on any device."""
        started = self.one("Greater", ["past_lengths", self.const("i64_zero", np.array(0, np.int64))])
        started = self.one("Reshape", [started, self.ints(-1, *([1] * (rank - 1)))])
        zero = self.scalar(0.0) if name.endswith(".conv") else self.const("f32_zero", np.array(0.0, np.float32))
        return self.one("Where", [started, name, zero])

    def embed(self, name: str) -> str:
        """Token embeddings [b, t, d] in the activation dtype. Quantized embeddings are int8 rows with one
        float32 scale per row, looked up with standard ops (Gather, Sub, Mul)."""
        if not self.fmt.embeddings_int8:
            return self.one("Cast", [self.one("Gather", [self.param(name), "input_ids"])], to=self.act)
        rows = self.one("Cast", [self.one("Gather", [self.param(name + ".q8"), "input_ids"])], to=TensorProto.FLOAT)
        centred = self.one("Sub", [rows, self.const("f32_128", np.array(128.0, np.float32))])
        x = self.one("Mul", [centred, self.one("Gather", [self.param(name + ".row_scales"), "input_ids"])])
        return self.one("Cast", [x], to=self.act)

    # ---- whole model --------------------------------------------------------------------------------------

    def build(self, decode: bool) -> onnx.ModelProto:
        c = self.cfg
        emb_name = "backbone.embeddings.weight"
        x = self.embed(emb_name)  # [b, t, d]
        valid = None if decode else self.valid_mask()
        attn = c.layers_of(ATTENTION)
        kv_lengths = self.kv_lengths() if attn else None
        for i, kind in enumerate(c.pattern):
            u = self.rms_norm(x, f"backbone.layers.{i}.norm.weight")
            if kind == MAMBA:
                out = self.mamba(i, u, valid, decode)
            elif kind == ATTENTION:
                out = self.attention(i, u, kv_lengths, decode)
            else:
                out = self.mlp(i, u)
            x = self.one("Add", [x, out])
        if decode:
            last = self.one("Squeeze", [x, self.ints(1)])  # [b, d]
        else:
            idx = self.one("Sub", ["lengths", self.const("i64_one", np.array(1, np.int64))])
            idx = self.one("Expand", [self.one("Reshape", [idx, self.ints(-1, 1, 1)]),
                                      self.one("Concat", [self.one("Shape", [x], start=0, end=1), self.ints(1, c.hidden_size)], axis=0)])
            last = self.one("Squeeze", [self.one("GatherElements", [x, idx], axis=1), self.ints(1)])  # [b, d]
        last = self.rms_norm(last, "backbone.norm_f.weight")
        logits = self.linear(last, "lm_head.weight")
        self.nodes.append(helper.make_node("Cast", [logits], ["logits"], name="logits_cast", to=TensorProto.FLOAT))
        return self._model(decode)

    def _model(self, decode: bool) -> onnx.ModelProto:
        specs = state_layout(self.cfg, self.fmt.activation_dtype)
        batch = "batch"
        inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, 1 if decode else "seq"])]
        if not decode:
            inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT64, [batch]))
        inputs.append(helper.make_tensor_value_info("past_lengths", TensorProto.INT64, [batch]))
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, self.cfg.vocab_size])]
        for s in specs:
            shape = [batch, *s.shape]
            if s.per_token:
                shape[2] = "kv_capacity"  # the slot's K/V buffer, past and present alike (updated in place)
            inputs.append(helper.make_tensor_value_info(s.name, ONNX_DTYPE[s.dtype], shape))
            outputs.append(helper.make_tensor_value_info(s.output_name, ONNX_DTYPE[s.dtype], shape))
        used = {n for node in self.nodes for n in node.input}
        initializers = [_external_stub(name, entry) for name, entry in self.weights.tensors.items() if name in used]
        initializers += [onnx.numpy_helper.from_array(arr, name) for name, arr in self.consts.items()]
        graph = helper.make_graph(self.nodes, "decode" if decode else "prefill", inputs, outputs, initializers)
        return helper.make_model(
            graph, functions=ops.function_protos(), producer_name="nemotron-edge",
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(ops.DOMAIN, ops.VERSION),
                           helper.make_opsetid(MS_DOMAIN, 1)],
        )


def _external_stub(name: str, entry: dict) -> onnx.TensorProto:
    """An initializer whose data lives at its entry's offset in the shared weights file."""
    t = onnx.TensorProto()
    t.name = name
    t.data_type = ONNX_DTYPE_BY_NAME[entry["dtype"]]
    t.dims.extend(entry["shape"])
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", WEIGHTS_FILE), ("offset", entry["offset"]), ("length", entry["nbytes"])):
        t.external_data.add(key=key, value=str(value))
    return t


def build_graphs(cfg: ModelConfig, fmt: WeightFormat, weights: WeightIndex) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(prefill, decode), both referencing the tensors of `weights` in weights.bin."""
    return GraphBuilder(cfg, fmt, weights).build(decode=False), GraphBuilder(cfg, fmt, weights).build(decode=True)
