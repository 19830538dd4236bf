"""The model runner: a bundle's prefill and decode graphs on ONNX Runtime, over a StatePool.

The weights are mapped from weights.bin once and handed to both sessions as shared initializers, so
they are resident once whichever graph runs. Execution providers come from `ProviderConfig`
(engine/providers.py). A custom-op kernel library, when configured, is registered with both sessions; ONNX Runtime then runs
its kernels instead of the ops' function bodies.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from edge_runtime.bundle.reader import Bundle
from edge_runtime.bundle.checks import GRAPHS, check_weight_table
from edge_runtime.bundle.onnx_header import ONNX_TYPES
from edge_runtime.engine.providers import BRIEF_SPIN_US, ProviderConfig
from edge_runtime.engine.state_pool import StatePool, consecutive

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


class OrtModelRunner:
    """Runs prefill chunks and decode steps for batches of pool slots; returns float32 logits [b, vocab]."""

    def __init__(self, bundle: Bundle, pool: StatePool, providers: ProviderConfig | None = None):
        self.bundle, self.pool = bundle, pool
        self.providers = providers or ProviderConfig()
        self.weights = WeightMap(bundle)
        self.sessions = {g: self._session(g) for g in GRAPHS}
        self._output_names = {g: [o.name for o in s.get_outputs()] for g, s in self.sessions.items()}
        vocab = bundle.config.vocab_size
        # One logits buffer per graph: a step samples from decode logits after its prefill call ran.
        self._logits = {g: np.zeros(pool.max_rows * vocab, dtype=np.float32) for g in self.sessions}
        self.calls = {"prefill": 0, "decode": 0}
        self.staged_calls = {"prefill": 0, "decode": 0}  # calls whose slots were not consecutive: state copied
        self._decode_bindings: dict[tuple[int, int | None], tuple[ort.IOBinding, dict[str, np.ndarray]]] = {}

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
        # The native kernels are CPU kernels: in a GPU session they would pull our ops onto the CPU, so
        # there the function bodies run on the GPU instead.
        if self.providers.custom_op_library and self.providers.providers == ["cpu"]:
            so.register_custom_ops_library(self.providers.custom_op_library)
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
        """Run one chunk of prompt tokens per slot (right-padded into one batch) after `past_lengths` tokens."""
        lengths = [len(c) for c in chunks]
        t = max(lengths)
        ids = np.zeros((len(slots), t), dtype=np.int64)
        for row, chunk in enumerate(chunks):
            ids[row, : len(chunk)] = chunk
        feeds = self.pool.gather_kv(slots, max(past_lengths))
        feeds.update(input_ids=ids, lengths=np.asarray(lengths, np.int64), past_lengths=np.asarray(past_lengths, np.int64))
        return self._run("prefill", feeds, slots, past_lengths, lengths)

    def decode(self, slots: list[int], tokens: list[int], past_lengths: list[int]) -> np.ndarray:
        feeds = self.pool.gather_kv(slots, max(past_lengths))
        feeds.update(input_ids=np.asarray(tokens, np.int64)[:, None], past_lengths=np.asarray(past_lengths, np.int64))
        return self._run("decode", feeds, slots, past_lengths, [1] * len(slots))

    def _run(self, graph: str, feeds: dict[str, np.ndarray], slots: list[int], past: list[int], new: list[int]) -> np.ndarray:
        """Run with every input and output bound to preallocated buffers: no per-step allocations here.
        `feeds` are the inputs that change from call to call (tokens, lengths, K/V); the fixed-size states
        come from the pool."""
        session = self.sessions[graph]
        b = len(slots)
        run = consecutive(slots)
        # A decode call of the same slots always reads and writes the same state buffers (its slots' rows,
        # or the same staging prefixes) and the same outputs, so those bindings are made once.
        key = (b, run.start if run is not None else None)
        cached = self._decode_bindings.get(key) if graph == "decode" else None
        if cached is None:
            states = self.pool.gather_states(slots)
            outputs = self.pool.output_views(slots, max(new))
            outputs["logits"] = self._logits[graph][: b * self.bundle.config.vocab_size].reshape(b, -1)
            binding = session.io_binding()
            for name in self._output_names[graph]:
                array = outputs[name]
                binding.bind_output(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
            for name, array in states.items():
                binding.bind_cpu_input(name, array)
            cached = (binding, outputs)
            if graph == "decode":
                self._decode_bindings[key] = cached
        elif run is None:
            self.pool.gather_states(slots)  # staged: copied into the staging buffers the binding holds
        binding, outputs = cached
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        session.run_with_iobinding(binding)
        self.pool.scatter(slots, outputs, past, new)
        self.calls[graph] += 1
        self.staged_calls[graph] += run is None
        return outputs["logits"]
