"""Checks that this machine can run the service, each with a fix for what is wrong (`nemotron-edge doctor`).

A check reports PASS, WARN (works, but not as well as it could: no GPU, no TensorRT), FAIL (the service
will not run as configured), SKIP (the check itself is unavailable) or INFO (worth knowing, not judged).
Only FAIL makes the command exit non-zero, so a CPU-only development machine passes with warnings.
No check imports torch: whether it is importable is looked up, not tried.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from edge_runtime.service.config import ServiceConfig
from edge_runtime.bundle.demo import DEMO_BUNDLE
from edge_runtime.bundle.units import format_bytes
from edge_runtime.engine.providers import custom_op_library_error, registers_kernels
from nemotron_jetson.detect import JetsonInfo, detect

PASS, WARN, FAIL, SKIP, INFO = "PASS", "WARN", "FAIL", "SKIP", "INFO"
SERVICE_USER = "nemotron-edge"
REQUIRED_PACKAGES = ("onnxruntime", "numpy", "tokenizers", "grpcio", "protobuf", "cryptography", "llguidance",
                     "starlette", "uvicorn", "pydantic")
# GPU builds of ONNX Runtime install under another distribution name (JetPack's and PyPI's alike; importlib
# normalizes "onnxruntime_gpu" to it).
ONNXRUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")
ORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
# Below this share of available memory a budget risks the OOM killer once the OS and caches grow.
BUDGET_HEADROOM = 0.9


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str
    detail: str
    fix: str | None = None  # how to make a WARN or FAIL pass


@dataclass(frozen=True)
class DoctorContext:
    """What the checks look at: the effective service config and the board."""

    config: ServiceConfig
    jetson: JetsonInfo
    gpu: tuple[str, ...] = ()  # evidence of an NVIDIA GPU (find_nvidia_gpu); empty: none here
    config_error: str | None = None  # set: the config file could not be read; checks use the defaults


def check_python(ctx: DoctorContext) -> CheckResult:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info >= (3, 11):
        return CheckResult("python", PASS, f"Python {version}")
    return CheckResult("python", FAIL, f"Python {version} is older than 3.11",
                       "install Python 3.11 or newer (JetPack 7 ships 3.12) and recreate the venv")


def check_config(ctx: DoctorContext) -> CheckResult:
    if ctx.config_error:
        return CheckResult("config", FAIL, ctx.config_error, "fix the named key (see systemd/config.toml for an example)")
    return CheckResult("config", PASS, f"providers {','.join(ctx.config.providers)}, listen {' '.join(ctx.config.listen)}")


def check_packages(ctx: DoctorContext) -> list[CheckResult]:
    minimums = _declared_minimums()
    results = []
    for package in REQUIRED_PACKAGES:
        names = ONNXRUNTIME_DISTRIBUTIONS if package == "onnxruntime" else (package,)
        found = [(name, v) for name in names if (v := _installed_version(name)) is not None]
        name = f"package {package}"
        if not found:
            fix = ("pip install 'nemotron-edge[cpu]' (or [gpu] on a machine with CUDA; on a Jetson, JetPack's "
                   "onnxruntime-gpu: docs/jetson.md)" if package == "onnxruntime"
                   else f"pip install '{package}>={minimums.get(package, '0')}'")
            results.append(CheckResult(name, FAIL, "not installed", fix))
            continue
        if len(found) > 1:  # e.g. onnxruntime and onnxruntime-gpu: they install over each other's files
            names = ", ".join(f"{d} {v}" for d, v in found)
            results.append(CheckResult(name, WARN, f"{len(found)} builds installed: {names}; whichever was "
                                       "installed last owns the shared files",
                                       "keep one: pip uninstall -y " + " ".join(d for d, _ in found) +
                                       ", then install the one for this machine (docs/jetson.md)"))
            continue
        dist, version = found[0]
        minimum = minimums.get(package)
        if minimum and _version_tuple(version) < _version_tuple(minimum):
            results.append(CheckResult(name, FAIL, f"{dist} {version} is older than {minimum}",
                                       f"pip install --upgrade '{package}>={minimum}'"))
        else:
            results.append(CheckResult(name, PASS, f"{dist} {version}"))
    return results


def check_providers(ctx: DoctorContext) -> CheckResult:
    try:
        import onnxruntime
    except ImportError as e:
        return CheckResult("onnxruntime providers", FAIL, f"onnxruntime does not import: {e}",
                           "pip install 'nemotron-edge[cpu]' (or [gpu]; on a Jetson, JetPack's onnxruntime-gpu wheel)")
    available = onnxruntime.get_available_providers()
    detail = "available: " + ", ".join(available)
    missing_configured = [p for p in ctx.config.providers if ORT_NAMES[p] not in available]
    gpu_missing = [n for n in ("CUDAExecutionProvider", "TensorrtExecutionProvider") if n not in available]
    if missing_configured:
        status = FAIL if ctx.jetson.is_jetson else WARN
        return CheckResult("onnxruntime providers", status,
                           f"{detail}; configured but missing: {', '.join(missing_configured)} "
                           "(ONNX Runtime would fall back to the next provider)", _gpu_ort_fix(ctx.jetson))
    if ctx.gpu and "CUDAExecutionProvider" not in available:
        return CheckResult("onnxruntime providers", WARN,
                           f"{detail}; an NVIDIA GPU is here ({ctx.gpu[0]}) but this ONNX Runtime has only the CPU "
                           "provider: generation runs on the CPU", _gpu_ort_fix(ctx.jetson))
    if gpu_missing:
        # The configured providers are all there (e.g. cpu only): GPU providers missing is a note, not a fault.
        return CheckResult("onnxruntime providers", WARN, f"{detail}; no {', '.join(gpu_missing)}: CPU only",
                           _gpu_ort_fix(ctx.jetson))
    return CheckResult("onnxruntime providers", PASS, detail)


def _gpu_ort_fix(jetson: JetsonInfo) -> str:
    if jetson.is_jetson:
        return ("install JetPack's onnxruntime-gpu wheel (built with CUDA and TensorRT) into the system Python; "
                "the service venv sees it through --system-site-packages. Uninstall any CPU 'onnxruntime' "
                "from the venv, it shadows the GPU build")
    return ("on a machine with an NVIDIA GPU: pip uninstall -y onnxruntime, then pip install 'nemotron-edge[gpu]' "
            "(onnxruntime-gpu; it needs the CUDA and cuDNN libraries, TensorRT for the tensorrt provider)")


def check_kernels(ctx: DoctorContext) -> CheckResult:
    """The native kernels for our ops (kernels/): configured, loadable, and used by the configured providers."""
    name, path = "native kernels", ctx.config.custom_op_library
    build = "`bash kernels/build.sh` in the source tree; it needs a C++ compiler"
    if path is None:
        return CheckResult(name, WARN, "not configured: the nemotron_edge ops run as their ONNX function bodies "
                           "(standard ops, slower)",
                           f"build them ({build}), then set custom_op_library under [providers] or pass "
                           "--custom-op-library kernels/build/libnemotron_edge_ops.so")
    if not registers_kernels(ctx.config.providers):
        return CheckResult(name, WARN, f"{path} is not used: it is registered only for CPU-only sessions, and the "
                           f"providers are {','.join(ctx.config.providers)}",
                           "remove custom_op_library, or set [providers] order = [\"cpu\"] to use the kernels")
    try:
        error = custom_op_library_error(path)
    except ImportError as e:
        return CheckResult(name, SKIP, f"{path}: skip: onnxruntime does not import: {e}")
    if error is not None:
        return CheckResult(name, FAIL, f"{path} does not load: {error} (the service will not start)",
                           f"build it again ({build}; FORCE=1 rebuilds one that looks up to date), or fix "
                           "[providers] custom_op_library")
    return CheckResult(name, PASS, f"{path} loads; registered with the CPU sessions")


def check_torch(ctx: DoctorContext) -> CheckResult:
    # find_spec, not import: importing torch takes seconds and the device must not depend on it.
    if importlib.util.find_spec("torch") is None:
        return CheckResult("torch", INFO, "not installed (not needed on the device; only the exporter uses it)")
    version = _installed_version("torch") or "unknown version"
    return CheckResult("torch", INFO, f"torch {version} importable (not needed on the device; only the exporter uses it)")


def find_nvidia_gpu(jetson: JetsonInfo, dev: Path = Path("/dev")) -> tuple[str, ...]:
    """Evidence of an NVIDIA GPU on this machine: a Jetson's iGPU, `nvidia-smi -L`, device nodes."""
    found = []
    if jetson.is_jetson:
        found.append(f"Jetson iGPU ({jetson.soc or 'unknown SoC'})")
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=15).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            listing = ""
        if listing:
            found.append(listing.splitlines()[0])
    nodes = sorted(p.name for pattern in ("nvidia[0-9]*", "nvidiactl", "nvhost-gpu", "nvhost-ctrl-gpu", "nvmap")
                   for p in dev.glob(pattern))
    if nodes:
        found.append("device nodes " + " ".join(f"/dev/{n}" for n in nodes))
    return tuple(found)


def check_gpu(ctx: DoctorContext) -> CheckResult:
    if ctx.gpu:
        return CheckResult("gpu", PASS, "; ".join(ctx.gpu))
    return CheckResult("gpu", WARN, "no NVIDIA GPU: no nvidia-smi, no /dev/nvidia* or /dev/nvhost-* nodes",
                       "run on a Jetson or a machine with an NVIDIA GPU and driver; here generation runs on the CPU")


def check_bundle(ctx: DoctorContext) -> CheckResult:
    path = ctx.config.bundle or DEMO_BUNDLE
    label = f"bundle {path}" + (" (demo)" if ctx.config.bundle is None else "")
    if not path.is_dir() and ctx.config.bundle is None:
        return CheckResult("bundle", WARN, f"{label}: the demo bundle is not part of this install",
                           "set [model] bundle in the config, or pass --bundle DIR")
    if not path.is_dir():
        return CheckResult("bundle", FAIL, f"{label}: no such directory",
                           "copy the exported bundle there, or set [model] bundle / --bundle to where it is")
    if path.is_symlink():  # the `current` link of a versioned install: say which version it serves
        label += f" -> {path.resolve()}"
    try:
        from edge_runtime.bundle.reader import BundleError, verify_bundle
        from edge_runtime.bundle.signature import KeyFileError, SignatureStatus, check_signature, load_trusted_keys
    except ImportError:
        return CheckResult("bundle", SKIP, f"{label}: skip: bundle verification unavailable in this version")
    try:
        keys = load_trusted_keys(ctx.config.trusted_keys)
    except KeyFileError as e:
        return CheckResult("bundle", FAIL, f"{label}: trusted key: {e}",
                           "write the public key with `openssl pkey -in KEY -pubout -out KEY.pub`, or fix "
                           "[model] trusted_keys")
    try:
        signature = check_signature(path, keys)
        if keys and signature.status is not SignatureStatus.TRUSTED:
            return CheckResult("bundle", FAIL, f"{label}: {signature.detail}",
                               "install a bundle exported with --sign-key by a trusted key, or add its signer's "
                               "public key to [model] trusted_keys")
        verify_bundle(path)
    except BundleError as e:
        return CheckResult("bundle", FAIL, f"{label}: {e}", "re-copy the bundle from the workstation, or re-export it")
    if signature.status is SignatureStatus.MALFORMED:
        return CheckResult("bundle", WARN, f"{label}: verified; {signature.detail}",
                           "re-export with --sign-key, or remove the broken manifest.sig")
    signed = {SignatureStatus.TRUSTED: f"signed by trusted key {signature.trusted_by} ({signature.key_id})",
              SignatureStatus.SIGNED: f"signed by key {signature.key_id}, not checked (no [model] trusted_keys)",
              SignatureStatus.UNSIGNED: "unsigned"}[signature.status]
    return CheckResult("bundle", PASS, f"{label}: verified; {signed}")


def check_memory(ctx: DoctorContext) -> CheckResult:
    memory = psutil.virtual_memory()
    available = f"{format_bytes(memory.available)} available of {format_bytes(memory.total)}"
    budget = ctx.config.memory_budget
    if budget is None:
        return CheckResult("memory budget", INFO, f"no budget set: sized from free memory at start; {available}")
    detail = f"budget {format_bytes(budget)}; {available}"
    if budget > memory.available:
        return CheckResult("memory budget", FAIL, f"{detail}: the budget does not fit",
                           f"lower memory_budget / --budget below {format_bytes(int(memory.available * BUDGET_HEADROOM))}"
                           " or stop what is using memory")
    if budget > memory.available * BUDGET_HEADROOM:
        return CheckResult("memory budget", WARN, f"{detail}: under {100 - BUDGET_HEADROOM * 100:.0f}% headroom left",
                           f"lower the budget to {format_bytes(int(memory.available * BUDGET_HEADROOM))} or less")
    return CheckResult("memory budget", PASS, detail)


def check_socket_dirs(ctx: DoctorContext) -> list[CheckResult]:
    """The folders of the gRPC and HTTP Unix sockets, each once."""
    directories = [Path(a.removeprefix("unix:")).parent for a in (*ctx.config.listen, *ctx.config.http_listen)
                   if a.startswith("unix:")]
    return [_check_socket_dir(directory) for directory in dict.fromkeys(directories)]


def check_http_api(ctx: DoctorContext) -> CheckResult:
    """The OpenAI-compatible HTTP API: off, on Unix sockets (their group decides who calls), or on loopback TCP,
    which every local user reaches: that wants the bearer token."""
    addresses = ctx.config.http_listen
    if not addresses:
        return CheckResult("http api", INFO, "off ([http] listen is empty)")
    tcp = [a for a in addresses if not a.startswith("unix:")]
    if tcp and ctx.config.auth_token_file is None:
        return CheckResult("http api", WARN, f"on {', '.join(tcp)} without a bearer token: every local user can call it",
                           "set [server] auth_token_file, or serve the HTTP API on a unix: socket only")
    return CheckResult("http api", PASS, f"on {', '.join(addresses)}"
                       + (" with the bearer token" if ctx.config.auth_token_file is not None else ""))


def _check_socket_dir(directory: Path) -> CheckResult:
    name = f"socket dir {directory}"
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        user = None
    if directory.is_dir():
        if user is not None:
            if _writable_by(directory, user):
                return CheckResult(name, PASS, f"exists, writable by {SERVICE_USER}")
            return CheckResult(name, FAIL, f"exists but {SERVICE_USER} cannot write it",
                               f"chown {SERVICE_USER} {directory} (systemd's RuntimeDirectory= does this at start)")
        if os.access(directory, os.W_OK):
            return CheckResult(name, PASS, f"exists, writable by this user (no {SERVICE_USER} user here)")
        return CheckResult(name, FAIL, "exists but is not writable by this user", f"chown $USER {directory}")
    parent = next((p for p in directory.parents if p.exists()), Path("/"))
    if os.access(parent, os.W_OK):
        return CheckResult(name, PASS, f"absent; {parent} is writable, so it can be created (systemd creates it at start)")
    return CheckResult(name, WARN, f"absent and {parent} is not writable by this user",
                       f"start the service through systemd (RuntimeDirectory= creates {directory}), "
                       "or listen on a socket in a writable directory (--listen unix:/tmp/edge.sock)")


def _writable_by(path: Path, user: pwd.struct_passwd) -> bool:
    st = path.stat()
    if user.pw_uid == 0:
        return True
    if st.st_uid == user.pw_uid:
        return bool(st.st_mode & stat.S_IWUSR)
    groups = {g for g in os.getgrouplist(user.pw_name, user.pw_gid)}
    if st.st_gid in groups:
        return bool(st.st_mode & stat.S_IWGRP)
    return bool(st.st_mode & stat.S_IWOTH)


def check_jetson(ctx: DoctorContext) -> CheckResult:
    info = ctx.jetson
    if not info.is_jetson:
        return CheckResult("jetson", INFO, "not a Jetson: the service runs, without the Jetson GPU stack")
    if not info.is_thor:
        return CheckResult("jetson", WARN, f"{info.describe()}: the deployment target is AGX Thor",
                           "expect other memory limits and speeds; size --budget for this board")
    if info.jetpack != "7.x":
        return CheckResult("jetson", WARN, f"{info.describe()}: Thor needs JetPack 7", "flash JetPack 7 (L4T R38)")
    return CheckResult("jetson", PASS, info.describe())


CHECKS: tuple[Callable[[DoctorContext], CheckResult | list[CheckResult]], ...] = (
    check_python, check_config, check_packages, check_providers, check_kernels, check_torch, check_gpu, check_jetson,
    check_bundle, check_memory, check_socket_dirs, check_http_api,
)


def run_checks(config: ServiceConfig, config_error: str | None = None, jetson: JetsonInfo | None = None) -> list[CheckResult]:
    jetson = jetson if jetson is not None else detect("/")
    ctx = DoctorContext(config=config, jetson=jetson, gpu=find_nvidia_gpu(jetson), config_error=config_error)
    results: list[CheckResult] = []
    for check in CHECKS:
        outcome = check(ctx)
        results.extend(outcome if isinstance(outcome, list) else [outcome])
    return results


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _declared_minimums() -> dict[str, str]:
    """Minimum versions from this package's own metadata, so the doctor and pyproject agree."""
    try:
        requirements = importlib.metadata.requires("nemotron-edge") or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    minimums = {}
    for requirement in requirements:
        # `name>=1.2`, or `name>=1.2; extra == "cpu"` for ONNX Runtime's flavours.
        match = re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)\s*(;.*)?$", requirement)
        if match:
            minimums[match.group(1).lower()] = match.group(2)
    return minimums


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])
