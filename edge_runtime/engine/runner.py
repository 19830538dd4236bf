"""The model runner: a bundle's prefill and decode graphs on ONNX Runtime, over a StatePool.

The weights are mapped from weights.bin once and handed to both sessions as shared initializers, so
they are resident once whichever graph runs. Execution providers come from `ProviderConfig`
(engine/providers.py). A custom-op kernel library, when configured, is registered with both sessions; ONNX Runtime then runs
its kernels instead of the ops' function bodies. Every input and output is bound with IOBinding: the state by
address on the pool's device, the rest in host memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from edge_runtime.bundle.reader import Bundle
from edge_runtime.bundle.checks import GRAPHS, check_weight_table
from edge_runtime.bundle.onnx_header import ONNX_TYPES
from edge_runtime.engine.providers import BRIEF_SPIN_US, ProviderConfig
from edge_runtime.engine.state_pool import StatePool, runs


class WeightMap:
    """weights.bin mapped read-only, one OrtValue per tensor, shared by every session."""

    def __init__(self, bundle: Bundle):
        self._map = np.memmap(bundle.path / bundle.weights["file"], mode="r", dtype=np.uint8)
        # Checked against the mapping itself: what was opened may have changed since open_bundle looked.
        check_weight_table(bundle.weights["tensors"], int(self._map.size))
        self.values: dict[str, ort.OrtValue] = {}
        for t in bundle.weights["tensors"]:
            if t["dtype"] == "bfloat16":
                arr = np.ndarray(t["shape"], np.uint16, buffer=self._map, offset=t["offset"])
                self.values[t["name"]] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(arr, ONNX_TYPES["bfloat16"])
            else:
                arr = np.ndarray(t["shape"], np.dtype(t["dtype"]), buffer=self._map, offset=t["offset"])
                self.values[t["name"]] = ort.OrtValue.ortvalue_from_numpy(arr)

    @property
    def nbytes(self) -> int:
        return int(self._map.size)


@dataclass
class HostBytes:
    """Bytes a graph's calls bound in host memory, by what they were: on a GPU provider each crosses between
    host and device once per call. Token ids and lengths go in and float32 logits come out that way; the
    state does only when the pool lives in host memory (the CPU provider, where nothing crosses)."""

    inputs: int = 0
    logits: int = 0
    state: int = 0  # past.* in and present.* out


class OrtModelRunner:
    """Runs prefill chunks and decode steps for batches of pool slots; returns float32 logits [b, vocab].

    A model call's rows are consecutive slots, whose state it updates in place; a batch of other slots runs
    as one call per run of consecutive slots, and a prefill row that continues a sequence (past length > 0)
    as a call of its own (GroupQueryAttention takes a past only at batch 1 when a call brings several tokens).
    """

    def __init__(self, bundle: Bundle, pool: StatePool, providers: ProviderConfig | None = None,
                 max_rows: int | None = None):
        """`max_rows`: the most rows one prefill or decode takes (default: every slot)."""
        self.bundle, self.pool = bundle, pool
        self.providers = providers or ProviderConfig()
        self.weights = WeightMap(bundle)
        self.sessions = {g: self._session(g) for g in GRAPHS}
        self._vocab = vocab = bundle.config.vocab_size
        # One logits buffer per graph: a step samples from decode logits after its prefill call ran.
        rows = pool.num_slots if max_rows is None else min(max_rows, pool.num_slots)
        self._logits = {g: np.zeros((rows, vocab), dtype=np.float32) for g in self.sessions}
        self.calls = {"prefill": 0, "decode": 0}
        self.split_calls = {"prefill": 0, "decode": 0}  # extra calls because a batch's slots were not consecutive
        self.host_bytes = {g: HostBytes() for g in GRAPHS}
        self._decode_bindings: dict[tuple[int, int, int], ort.IOBinding] = {}

    @staticmethod
    def logits_bytes(vocab: int, rows: int) -> int:
        """The float32 logits buffers __init__ allocates, one per graph."""
        return len(GRAPHS) * rows * vocab * np.dtype(np.float32).itemsize

    def _session(self, graph: str) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.providers.intra_op_threads:
            so.intra_op_num_threads = self.providers.intra_op_threads
        so.add_session_config_entry("session.force_spinning_stop", "0" if self.providers.spinning == "always" else "1")
        so.add_session_config_entry("session.intra_op.allow_spinning", "0" if self.providers.spinning == "never" else "1")
        if self.providers.spinning == "brief":
            so.add_session_config_entry("session.intra_op.spin_duration_us", str(BRIEF_SPIN_US))
        if self.providers.prepacking_disabled(self.bundle.weights["format"]):
            so.add_session_config_entry("session.disable_prepacking", "1")
        kernels = self.providers.kernel_library()
        if kernels:
            so.register_custom_ops_library(kernels)
        for name, value in self.weights.values.items():
            so.add_initializer(name, value)
        return ort.InferenceSession(str(self.bundle.graph_path(graph)), so,
                                    providers=self.providers.ort_providers(self.bundle, graph))

    def replace_session(self, graph: str, session: ort.InferenceSession) -> None:
        """Run `graph` on another session of the same model (the benchmark's profiling session)."""
        self.sessions[graph] = session
        if graph == "decode":
            self._decode_bindings.clear()  # an IOBinding belongs to the session that made it

    @property
    def active_providers(self) -> list[str]:
        return self.sessions["decode"].get_providers()

    def prefill(self, slots: list[int], chunks: list[list[int]], past_lengths: list[int]) -> np.ndarray:
        """Run one chunk of prompt tokens per slot (right-padded into one batch per call) after `past_lengths`
        tokens; logits [rows, vocab] at each row's last token."""
        if min(len(c) for c in chunks) < 1:
            raise ValueError("prefill: every row needs at least one token")
        batch = runs(slots)
        self.split_calls["prefill"] += len(batch) - 1
        for first, n in prefill_calls(batch, past_lengths):
            rows = chunks[first:first + n]
            ids = np.zeros((n, max(len(c) for c in rows)), dtype=np.int64)
            for row, chunk in enumerate(rows):
                ids[row, : len(chunk)] = chunk
            feeds = dict(input_ids=ids, lengths=np.asarray([len(c) for c in rows], np.int64),
                         past_lengths=np.asarray(past_lengths[first:first + n], np.int64))
            self._run("prefill", slots[first], n, first, feeds)
        return self._logits["prefill"][: len(slots)]

    def decode(self, slots: list[int], tokens: list[int], past_lengths: list[int]) -> np.ndarray:
        """One token per slot after `past_lengths` (> 0) tokens; logits [rows, vocab]."""
        if min(past_lengths) < 1:
            raise ValueError("decode: every row needs a prefilled past (past length >= 1)")
        batch = runs(slots)
        self.split_calls["decode"] += len(batch) - 1
        for first, n in batch:
            feeds = dict(input_ids=np.asarray(tokens[first:first + n], np.int64)[:, None],
                         past_lengths=np.asarray(past_lengths[first:first + n], np.int64))
            self._run("decode", slots[first], n, first, feeds)
        return self._logits["decode"][: len(slots)]

    def _run(self, graph: str, slot: int, rows: int, logits_row: int, feeds: dict[str, np.ndarray]) -> None:
        """One call over slots slot..slot+rows-1, its logits into rows logits_row... of the graph's buffer.
        The state is bound by address as input and output alike (in place, on the pool's device); the
        logits go straight into the host buffer; `feeds` (ids, lengths) are bound from host memory. A
        decode call of the same slots binds the same addresses every step, so those bindings are made once."""
        session = self.sessions[graph]
        key = (slot, rows, logits_row)
        binding = self._decode_bindings.get(key) if graph == "decode" else None
        if binding is None:
            binding = session.io_binding()
            device = self.pool.device
            state = self.pool.rows(slot, rows)
            for spec in self.pool.specs:
                r = state[spec.name]
                binding.bind_input(spec.name, device.kind, device.id, r.dtype, r.shape, r.address)
                binding.bind_output(spec.output_name, device.kind, device.id, r.dtype, r.shape, r.address)
            logits = self._logits[graph][logits_row:logits_row + rows]
            binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
            if graph == "decode":
                self._decode_bindings[key] = binding
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        session.run_with_iobinding(binding)
        self.calls[graph] += 1
        bound = self.host_bytes[graph]
        bound.inputs += sum(a.nbytes for a in feeds.values())
        bound.logits += rows * self._vocab * np.dtype(np.float32).itemsize
        if self.pool.device.is_host:
            bound.state += 2 * rows * self.pool.slot_nbytes


def prefill_calls(batch: list[tuple[int, int]], past_lengths: list[int]) -> list[tuple[int, int]]:
    """The prefill calls of a batch's runs of consecutive slots, as (first row, rows): rows that start a
    sequence (past length 0) share a call, a row that continues one has a call of its own."""
    calls: list[tuple[int, int]] = []
    for first, n in batch:
        for k in range(first, first + n):
            if k > first and not past_lengths[k] and not past_lengths[k - 1]:
                calls[-1] = (calls[-1][0], calls[-1][1] + 1)
            else:
                calls.append((k, 1))
    return calls
