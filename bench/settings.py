"""What a run measures and how often: the full run, `--quick`, and the smoke test's tiny settings."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

CASES = ("decode", "prefill", "service", "thinking", "memory", "bandwidth", "profile")
MiB = 1 << 20


@dataclass(frozen=True)
class Settings:
    preset: str = "small"
    threads: int = 2  # ONNX Runtime intra_op_num_threads and torch.set_num_threads
    # Our engines' ProviderConfig.spinning where they race the reference (decode, prefill, thinking,
    # profile). "brief": the intra-op threads spin (up to 20 us) between the kernels of a call, as the
    # reference's OpenMP threads spin between parallel regions (libgomp's default); the service's default,
    # "never", is the `+n` variant (and `python -m bench.spinning`); the service case runs the service as
    # deployed.
    spinning: str = "brief"
    reps: int = 5  # timed runs of each measurement (rounds, where runs are interleaved)
    warmups: int = 2  # untimed runs (rounds) of the same shape before them
    # decode
    prompt_tokens: int = 16
    new_tokens: int = 128
    batch: int = 8
    decode_variants: tuple[str, ...] = ("fp32", "fp32+k", "fp32+k+p", "int8", "int8+k", "int4", "int4+k", "int4+k+n")
    batch1_only_variants: tuple[str, ...] = ("int8-acc0", "int4-acc0")  # MatMulNBits accuracy level 0, for comparison
    # prefill
    prefill_lengths: tuple[int, ...] = (128, 512, 2048)
    prefill_variants: tuple[str, ...] = ("fp32", "fp32+k", "int8+k", "int4", "int4+k")
    # gRPC service, thinking budgets, profile: one format, with the kernels when they are built
    service_format: str = "int4"
    streams: tuple[int, ...] = (1, 4, 8, 16)
    overhead_reps: int = 15  # timed rounds of in-process against gRPC at batch 1: a 10% bar on a noisy VM
    budgets: tuple[int, ...] = (32, 256)
    answer_tokens: int = 64
    seed: int = 1234
    # resident memory
    memory_formats: tuple[str, ...] = ("fp32", "int8", "int4")
    memory_batch: int = 8
    memory_context: int = 1024
    memory_reps: int = 3  # fresh processes per format: the peak varies from process to process
    # bandwidth and profile
    bandwidth_bytes: int = 1024 * MiB
    # (format, graph, batch): where the time goes, for the misses too
    profile_runs: tuple[tuple[str, str, int], ...] = (
        ("int4", "decode", 1), ("fp32", "decode", 1), ("int4", "decode", 8), ("fp32", "decode", 8),
        ("int4", "prefill", 1), ("fp32", "prefill", 1))
    profile_steps: int = 32
    prefill_tokens: int = 512  # the prefill profile's prompt, in one call
    cases: tuple[str, ...] = field(default=CASES)


FULL = Settings()
QUICK = replace(FULL, reps=1, warmups=1, new_tokens=32, memory_reps=1, overhead_reps=3,
                decode_variants=("fp32", "fp32+k", "int8+k", "int4+k"), prefill_lengths=(128, 512),
                prefill_variants=("fp32", "int4+k"), streams=(1, 4), budgets=(32, 128), answer_tokens=16,
                memory_formats=("int4",), bandwidth_bytes=512 * MiB, profile_runs=(("int4", "decode", 1), ("int4", "prefill", 1)), profile_steps=8)
# The smoke test: every case's machinery on the tiny preset, one repetition, seconds in all.
TINY = replace(QUICK, preset="tiny", prompt_tokens=8, new_tokens=4, batch=2,
               decode_variants=("fp32",), batch1_only_variants=(), prefill_lengths=(16,), prefill_variants=("fp32",),
               service_format="fp32", streams=(1, 2), budgets=(4,), answer_tokens=4, memory_formats=("fp32",),
               memory_batch=2, memory_context=64, bandwidth_bytes=8 * MiB,
               profile_runs=(("fp32", "decode", 2), ("fp32", "prefill", 1)), profile_steps=2, prefill_tokens=16)
