"""ONNX Runtime's MatMulNBits on the CPU provider at the real model's widths, per bits and accuracy level.

`python -m bench.matmul_nbits [--threads 2] [--rows 1 4]` builds one-node graphs of the shapes a 9B bundle
has (hidden 4480 to the Mamba in_proj 22656, the MLP 15680 and back, lm_head 131072) with seeded random
codes and scales, at 4 and 8 bits, block sizes as the exporter writes them, and accuracy levels 0 (float
activations) and 4 (int8 activation blocks). For each it reports the median milliseconds a call, the bytes
of codes and scales read per second, that as a fraction of this machine's copy bandwidth (read + write,
bench/bandwidth.py, measured in the same run), and the minor page faults a call takes: a kernel that
allocates and fills a float32 copy of the matrix on every call faults on every page of it, so faults
x 4096 / (K x N x 4) near 1 means a per-call dequantization. Ratios are what to compare, not times.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bench.bandwidth import measure_bandwidth
from bench.timing import Case

HIDDEN = 4480
# (name, K, N, block size a 4-bit / 8-bit block of that matrix gets in a 9B int4 bundle)
SHAPES = (("mamba in_proj", HIDDEN, 22656), ("mlp up", HIDDEN, 15680), ("mlp down", 15680, HIDDEN),
          ("lm_head", HIDDEN, 131072))
FORMATS = ((4, 32), (8, 128))  # (bits, block size); lm_head is 8-bit at block 32 in int4 bundles
LEVELS = (0, 4)
REPEATS = 5


def minor_faults() -> int:
    return int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[7])


def session(k: int, n: int, bits: int, block: int, level: int, threads: int,
            rng: np.random.Generator) -> tuple[ort.InferenceSession, int]:
    """A one-node MatMulNBits session for x [rows, k] @ W [k, n]; and the bytes of its codes and scales."""
    blocks = -(-k // block)
    codes = rng.integers(0, 256, (n, blocks, block * bits // 8), dtype=np.uint8)
    scales = (rng.random(n * blocks, dtype=np.float32) * 0.01).astype(np.float32)
    node = helper.make_node("MatMulNBits", ["x", "codes", "scales"], ["y"], domain="com.microsoft",
                            K=k, N=n, bits=bits, block_size=block, accuracy_level=level)
    graph = helper.make_graph(
        [node], "matmul_nbits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])],
        [numpy_helper.from_array(codes, "codes"), numpy_helper.from_array(scales, "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]), \
        codes.nbytes + scales.nbytes


def time_calls(s: ort.InferenceSession, x: np.ndarray) -> tuple[float, float]:
    """Median seconds a call after a warm-up, and minor faults a call."""
    s.run(None, {"x": x})
    times, faults = [], minor_faults()
    for _ in range(REPEATS):
        start = time.perf_counter()
        s.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return statistics.median(times), (minor_faults() - faults) / REPEATS


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, nargs="+", default=[1, 4])
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    copy = measure_bandwidth(Case("bandwidth"), 1 << 30, args.threads, 5)["copy"]
    print(f"copy bandwidth {copy:.1f} GB/s (read + write), {args.threads} threads")
    print(f"{'matrix':14s} {'bits':>4s} {'block':>5s} {'level':>5s} {'rows':>4s} {'ms':>9s} "
          f"{'GB/s':>6s} {'x copy':>7s} {'faults x 4 KiB / fp32 matrix':>29s}")
    for name, k, n in SHAPES:
        for bits, block in FORMATS:
            block = 32 if name == "lm_head" else block
            for level in LEVELS:
                s, nbytes = session(k, n, bits, block, level, args.threads, rng)
                for rows in args.rows:
                    seconds, faults = time_calls(s, rng.standard_normal((rows, k), dtype=np.float32))
                    gbps = nbytes / seconds / 1e9
                    print(f"{name:14s} {bits:4d} {block:5d} {level:5d} {rows:4d} {seconds * 1e3:9.2f} "
                          f"{gbps:6.1f} {gbps / copy:7.3f} {faults * 4096 / (k * n * 4):29.2f}", flush=True)
                del s


if __name__ == "__main__":
    main()
