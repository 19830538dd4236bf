"""`nemotron-edge doctor` run as a subprocess on this machine: every check is listed, missing GPU pieces
are warnings with fixes (not failures), and real problems (bad config, oversized budget) fail the command."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import onnxruntime

from edge_runtime.bundle.units import format_bytes

HAS_CUDA = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
HAS_BUNDLE_VERIFY = importlib.util.find_spec("edge_runtime.bundle.reader") is not None
LINE = re.compile(r"^\[(PASS|WARN|FAIL|SKIP|INFO)\] (.+?)\s{2,}(.*)$")


def _doctor(*args: str) -> tuple[int, dict[str, tuple[str, str]], str]:
    """Exit code, check name -> (status, detail + fix), and the raw output."""
    result = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "doctor", *args],
                            capture_output=True, text=True, timeout=180)
    checks: dict[str, tuple[str, str]] = {}
    last = None
    for line in result.stdout.splitlines():
        match = LINE.match(line)
        if match:
            last = match.group(2).strip()
            checks[last] = (match.group(1), match.group(3))
        elif line.strip().startswith("fix:") and last is not None:
            status, detail = checks[last]
            checks[last] = (status, detail + " | " + line.strip())
    return result.returncode, checks, result.stdout + result.stderr


def test_lists_every_check_and_passes_on_a_cpu_only_machine() -> None:
    code, checks, out = _doctor()
    assert code == 0, out
    expected = {"python", "config", "onnxruntime providers", "native kernels", "torch", "gpu", "jetson", "bundle",
                "memory budget", "socket dir /run/nemotron-edge"}
    expected |= {f"package {p}" for p in ("onnxruntime", "numpy", "tokenizers", "grpcio", "protobuf")}
    assert expected <= checks.keys(), out
    assert checks["python"][0] == "PASS"
    for p in ("onnxruntime", "numpy", "tokenizers", "grpcio", "protobuf"):
        assert checks[f"package {p}"][0] == "PASS", out
    assert checks["torch"][0] == "INFO" and "not needed on the device" in checks["torch"][1]
    assert re.search(r"\d+ failure\(s\), \d+ warning\(s\)", out)


def test_http_api_check_warns_about_loopback_tcp_without_a_token(tmp_path: Path) -> None:
    _, checks, out = _doctor()
    assert checks["http api"][0] == "INFO" and "off" in checks["http api"][1], out
    _, checks, out = _doctor("--http-listen", f"unix:{tmp_path}/openai.sock")
    assert checks["http api"] == ("PASS", f"on unix:{tmp_path}/openai.sock"), out
    assert checks[f"socket dir {tmp_path}"][0] == "PASS", out
    _, checks, out = _doctor("--http-listen", "127.0.0.1:8000")
    status, detail = checks["http api"]
    assert status == "WARN" and "every local user" in detail and "fix:" in detail, out


def test_missing_gpu_stack_is_a_warning_with_a_fix() -> None:
    _, checks, out = _doctor()
    status, detail = checks["onnxruntime providers"]
    assert "CPUExecutionProvider" in detail
    if not HAS_CUDA:
        assert status == "WARN" and "CUDAExecutionProvider" in detail and "fix:" in detail, out
        assert checks["gpu"][0] in ("WARN", "PASS")
    if checks["gpu"][0] == "WARN":
        assert "no NVIDIA GPU" in checks["gpu"][1] and "fix:" in checks["gpu"][1]


def test_native_kernels_not_configured_missing_broken_or_unused(tmp_path: Path) -> None:
    """Not configured is a warning with the build step; a library that is missing or does not load fails
    (the service would not start); with GPU providers it is not used, which is a warning."""
    _, checks, out = _doctor()
    status, detail = checks["native kernels"]
    assert status == "WARN" and "not configured" in detail and "fix: build them (`bash kernels/build.sh`" in detail, out
    missing, empty = tmp_path / "missing.so", tmp_path / "empty.so"
    empty.touch()
    for library in (missing, empty):
        code, checks, out = _doctor("--custom-op-library", str(library))
        status, detail = checks["native kernels"]
        assert code == 1 and status == "FAIL" and f"{library} does not load" in detail and "fix:" in detail, out
    config = tmp_path / "config.toml"
    config.write_text(f'[providers]\norder = ["cuda", "cpu"]\ncustom_op_library = "{missing}"\n')
    _, checks, out = _doctor("--config", str(config))
    status, detail = checks["native kernels"]
    assert status == "WARN" and f"{missing} is not used" in detail and "providers are cuda,cpu" in detail, out


def test_built_native_kernels_pass(kernel_lib: str) -> None:
    code, checks, out = _doctor("--custom-op-library", kernel_lib)
    assert code == 0, out
    assert checks["native kernels"] == ("PASS", f"{kernel_lib} loads; registered with the CPU sessions"), out


def test_bundle_check_verifies_or_says_it_cannot() -> None:
    _, checks, out = _doctor()
    status, detail = checks["bundle"]
    if "(demo)" in detail and "not part of this install" in detail:
        assert status == "WARN" and "fix: set [model] bundle" in detail, out
    elif HAS_BUNDLE_VERIFY:
        assert status == "PASS" and "verified" in detail, out
    else:
        assert status == "SKIP" and "skip: bundle verification unavailable" in detail, out


def test_missing_bundle_fails(tmp_path: Path) -> None:
    code, checks, out = _doctor("--bundle", str(tmp_path / "nowhere"))
    assert code == 1, out
    assert checks["bundle"][0] == "FAIL" and "no such directory" in checks["bundle"][1]
    assert "fix:" in checks["bundle"][1]


def test_budget_larger_than_memory_fails_with_a_fix() -> None:
    code, checks, out = _doctor("--budget", "900TiB")
    assert code == 1, out
    status, detail = checks["memory budget"]
    assert status == "FAIL" and "does not fit" in detail and "fix: lower memory_budget" in detail


def test_small_budget_passes() -> None:
    code, checks, out = _doctor("--budget", "64MiB")
    assert code == 0, out
    assert checks["memory budget"][0] == "PASS"
    assert format_bytes(64 * 1024**2) in checks["memory budget"][1]


def test_bad_budget_text_is_a_config_failure_naming_the_flag() -> None:
    code, checks, out = _doctor("--budget", "lots")
    assert code == 1
    assert checks["config"][0] == "FAIL" and "--budget: invalid size 'lots'" in checks["config"][1], out


def test_bad_config_file_fails_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[server]\nlisten = \"unix:/x.sock\"\n")
    code, checks, out = _doctor("--config", str(path))
    assert code == 1
    assert checks["config"][0] == "FAIL"
    assert "[server] listen: expected a list of strings" in checks["config"][1], out


def test_gpu_providers_configured_on_a_non_jetson_warn_not_fail(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    sock_dir = tmp_path / "run"
    sock_dir.mkdir()
    path.write_text(f'[providers]\norder = ["tensorrt", "cuda", "cpu"]\n[server]\nlisten = ["unix:{sock_dir}/edge.sock"]\n')
    code, checks, out = _doctor("--config", str(path))
    assert code == 0, out
    assert checks[f"socket dir {sock_dir}"][0] == "PASS"
    if not HAS_CUDA:
        status, detail = checks["onnxruntime providers"]
        assert status == "WARN" and "configured but missing: tensorrt, cuda" in detail, out


def test_a_gpu_with_only_the_cpu_provider_is_named_with_the_fix_for_the_machine() -> None:
    """An NVIDIA GPU is present (its evidence given, as `find_nvidia_gpu` reports it) while this ONNX Runtime
    has only the CPU provider: a clear warning, with the fix for a server or for a Jetson."""
    from edge_runtime.doctor import WARN, DoctorContext, check_providers
    from edge_runtime.service.config import ServiceConfig
    from nemotron_jetson.detect import JetsonInfo

    server = check_providers(DoctorContext(ServiceConfig(), JetsonInfo(False), gpu=("GPU 0: NVIDIA H200",)))
    jetson = check_providers(DoctorContext(ServiceConfig(), JetsonInfo(True, soc="tegra264"),
                                           gpu=("Jetson iGPU (tegra264)",)))
    if HAS_CUDA:
        assert "NVIDIA GPU is here" not in server.detail
        return
    assert server.status == WARN and "an NVIDIA GPU is here (GPU 0: NVIDIA H200)" in server.detail
    assert "only the CPU provider" in server.detail and "nemotron-edge[gpu]" in server.fix
    assert jetson.status == WARN and "JetPack's onnxruntime-gpu" in jetson.fix


def test_gpu_evidence_comes_from_device_nodes(tmp_path: Path) -> None:
    from edge_runtime.doctor import find_nvidia_gpu
    from nemotron_jetson.detect import JetsonInfo

    (tmp_path / "nvidia0").touch()
    (tmp_path / "nvidiactl").touch()
    assert any("/dev/nvidia0 /dev/nvidiactl" in e for e in find_nvidia_gpu(JetsonInfo(False), dev=tmp_path))
    assert find_nvidia_gpu(JetsonInfo(True, soc="tegra264"), dev=tmp_path / "none")[0] == "Jetson iGPU (tegra264)"


def test_two_onnxruntime_builds_in_one_environment_warn(tmp_path: Path) -> None:
    """A second build's metadata on the path (as `pip install onnxruntime-gpu` beside onnxruntime leaves it)."""
    dist = tmp_path / "onnxruntime_gpu-1.31.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: 1.31.1\n")
    result = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "doctor"], capture_output=True, text=True,
                            timeout=180, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    line = next(l for l in result.stdout.splitlines() if "package onnxruntime" in l)
    assert line.startswith("[WARN]") and "2 builds installed" in line and "onnxruntime-gpu 1.31.1" in line, result.stdout
