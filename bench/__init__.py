"""Benchmark harness: our runtime against transformers on the same checkpoint, in the same run.

`python -m bench.run` builds the benchmark checkpoint and bundles (bench/artifacts.py), runs the cases
(decode and prefill: bench/cases.py against bench/reference.py; the gRPC service: bench/service.py;
thinking budgets: bench/thinking.py; resident memory: bench/memory.py; the memory-bandwidth ceiling:
bench/bandwidth.py; an operator profile: bench/profile.py), writes results.json, and
`python -m bench.report` turns that into the tables of BENCHMARKS.md. Every case records its repetitions,
their median, and ratios between measurements of the same run (bench/timing.py).
"""
