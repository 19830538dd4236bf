"""Service config: the TOML file, its errors, the `serve` flags that override it, and byte sizes."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from edge_runtime.service.config import (
    FIELDS,
    ConfigError,
    ConfigFileError,
    ServiceConfig,
    add_arguments,
    apply_overrides,
    config_from_args,
    load_config,
)
from edge_runtime.bundle.units import SizeError, format_bytes, parse_bytes

EXAMPLE = Path(__file__).resolve().parent.parent / "systemd" / "config.toml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve", exit_on_error=False)
    add_arguments(parser)
    return parser


@pytest.mark.parametrize(("text", "expected"), [
    ("24GiB", 24 * 1024**3), ("512MiB", 512 * 1024**2), ("4KiB", 4096), ("8GB", 8_000_000_000),
    ("1.5GiB", 3 * 1024**3 // 2), ("1.1GB", 1_100_000_000), ("100 kB", 100_000), ("123", 123), ("7B", 7),
    ("2tib", 2 * 1024**4), (4096, 4096),
])
def test_parse_bytes_reads_iec_si_and_plain_sizes(text: str | int, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "24XB", "-5", "1.5", "twelve", "24 Gi B", -1, True, 2.5])
def test_parse_bytes_error_names_the_bad_text(text: object) -> None:
    with pytest.raises(SizeError, match="invalid size") as e:
        parse_bytes(text)  # type: ignore[arg-type]
    assert repr(text) in str(e.value)


def test_format_bytes_picks_a_readable_unit() -> None:
    assert format_bytes(24 * 1024**3) == "24.0 GiB"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(12) == "12 B"


def test_shipped_example_config_loads_with_device_settings() -> None:
    config = load_config(EXAMPLE)
    assert config.listen == ("unix:/run/nemotron-edge/edge.sock",)
    assert config.providers == ("tensorrt", "cuda", "cpu")
    assert config.memory_budget == 32 * 1024**3
    assert config.drain_grace_s == 30.0
    assert config.trt_engine_cache_dir == Path("/var/lib/nemotron-edge/trt-engines")
    assert config.bundle is None and config.metrics_port is None


def test_every_key_of_every_section_is_read(tmp_path: Path) -> None:
    path = _write(tmp_path, """
[model]
bundle = "/data/bundle"
memory_budget = "512MiB"
trusted_keys = ["/etc/nemotron-edge/keys/release.pub", "/etc/nemotron-edge/keys/lab.pub"]
[server]
listen = ["unix:/tmp/a.sock", "127.0.0.1:50051", "[::1]:50052"]
auth_token_file = "/etc/nemotron-edge/token"
drain_grace_s = 12.5
metrics_port = 9464
max_queue = 8
log_level = "DEBUG"
[server.tls]
cert_file = "/tls/s.crt"
key_file = "/tls/s.key"
client_ca_file = "/tls/ca.crt"
[providers]
order = ["TensorRT", "cpu"]
[providers.cuda]
device_id = 1
gpu_mem_limit = "20GiB"
[providers.tensorrt]
device_id = 2
engine_cache_dir = "/cache/engines"
timing_cache_dir = "/cache/timing"
fp16 = false
max_workspace_size = "4GiB"
[thinking]
max_thinking_tokens = 256
thinking_grace_tokens = 16
thinking_deadline_ms = 5000
max_answer_tokens = 300
[limits]
max_request_bytes = "512KiB"
max_text_chars = 100000
max_messages = 500
max_tools = 20
template_max_steps = 30000
""")
    config = load_config(path)
    assert config == ServiceConfig(
        bundle=Path("/data/bundle"), memory_budget=512 * 1024**2,
        trusted_keys=(Path("/etc/nemotron-edge/keys/release.pub"), Path("/etc/nemotron-edge/keys/lab.pub")),
        listen=("unix:/tmp/a.sock", "127.0.0.1:50051", "[::1]:50052"),
        auth_token_file=Path("/etc/nemotron-edge/token"), drain_grace_s=12.5, metrics_port=9464, max_queue=8,
        log_level="debug", tls_cert_file=Path("/tls/s.crt"), tls_key_file=Path("/tls/s.key"),
        tls_client_ca_file=Path("/tls/ca.crt"), providers=("tensorrt", "cpu"), cuda_device_id=1,
        cuda_gpu_mem_limit=20 * 1024**3, trt_device_id=2, trt_engine_cache_dir=Path("/cache/engines"),
        trt_timing_cache_dir=Path("/cache/timing"), trt_fp16=False, trt_max_workspace_size=4 * 1024**3,
        max_thinking_tokens=256, thinking_grace_tokens=16, thinking_deadline_ms=5000, max_answer_tokens=300,
        max_request_bytes=512 * 1024, max_text_chars=100000, max_messages=500, max_tools=20, template_max_steps=30000,
    )
    assert config.ort_providers() == [
        ("TensorrtExecutionProvider", {
            "device_id": "2", "trt_engine_cache_enable": "True", "trt_engine_cache_path": "/cache/engines",
            "trt_timing_cache_enable": "True", "trt_timing_cache_path": "/cache/timing", "trt_fp16_enable": "False",
            "trt_max_workspace_size": str(4 * 1024**3),
        }),
        ("CPUExecutionProvider", {}),
    ]


def test_every_field_has_a_file_key_and_a_flag() -> None:
    attrs = {f.name for f in dataclasses.fields(ServiceConfig)}
    assert {f.attr for f in FIELDS} == attrs
    assert len({f.flag for f in FIELDS}) == len(FIELDS)


@pytest.mark.parametrize(("text", "message"), [
    ("[server]\nlisten = \"unix:/x\"\n", "[server] listen: expected a list of strings"),
    ("[server]\nlisten = [1]\n", "[server] listen: expected a list of strings"),
    ("[server]\nlisten = []\n", "[server] listen: expected at least one address"),
    ("[server]\nlisten = [\"unix:relative.sock\"]\n", "[server] listen: unix socket address 'unix:relative.sock'"),
    ("[server]\nlisten = [\"localhost\"]\n", "[server] listen: address 'localhost' is neither"),
    ("[server]\nlisten = [\"host:99999\"]\n", "[server] listen: address 'host:99999'"),
    ("[server]\nlisten = [\"[zz]:1\"]\n", "bad IPv6 host"),
    ("[server]\nlistn = []\n", "[server] unknown key 'listn'"),
    ("[server]\nmax_queue = 0\n", "[server] max_queue: expected an integer at least 1, got 0"),
    ("[server]\nmax_queue = true\n", "[server] max_queue: expected an integer"),
    ("[server]\nmetrics_port = 70000\n", "[server] metrics_port: expected an integer between 1 and 65535"),
    ("[server]\ndrain_grace_s = -1\n", "[server] drain_grace_s: expected a non-negative number"),
    ("[server]\nlog_level = \"loud\"\n", "[server] log_level: expected one of debug"),
    ("[model]\nmemory_budget = \"24XB\"\n", "[model] memory_budget: invalid size '24XB'"),
    ("[model]\nbundle = 3\n", "[model] bundle: expected a non-empty path string"),
    ("[model]\ntrusted_keys = \"/k.pub\"\n", "[model] trusted_keys: expected a list of path strings"),
    ("[model]\ntrusted_keys = [\"\"]\n", "[model] trusted_keys: expected a non-empty path string"),
    ("[providers]\norder = [\"rocm\"]\n", "[providers] order: unknown provider 'rocm'"),
    ("[providers]\norder = [\"cpu\", \"CPU\"]\n", "[providers] order: provider listed twice"),
    ("[providers]\nspinning = \"often\"\n", "[providers] spinning: expected one of always, in_run, brief, never"),
    ("[providers.tensorrt]\nfp16 = \"yes\"\n", "[providers.tensorrt] fp16: expected true or false"),
    ("[providers.openvino]\ndevice = 1\n", "unknown section [providers.openvino]"),
    ("[gpu]\nx = 1\n", "unknown section [gpu]"),
    ("bundle = \"/x\"\n", "unknown key 'bundle'"),
    ("[thinking]\nmax_answer_tokens = 0\n", "[thinking] max_answer_tokens: expected an integer at least 1"),
    ("[limits]\nmax_request_bytes = \"64MiB\"\n", "[limits] max_request_bytes: expected a size between 1KiB and 16MiB"),
    ("[limits]\nmax_text_chars = 0\n", "[limits] max_text_chars: expected an integer at least 1"),
    ("[server.tls]\ncert_file = \"/c\"\n", "cert_file and key_file must be given together"),
    ("[server.tls]\nclient_ca_file = \"/c\"\n", "client_ca_file needs cert_file"),
    ("[server\n", "not valid TOML"),
])
def test_bad_file_is_an_error_naming_file_section_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigFileError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: ")
    assert message in str(e.value)


def test_named_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="no such config file"):
        load_config(tmp_path / "missing.toml")


def test_every_setting_is_overridable_on_the_command_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "[server]\nmax_queue = 8\nlisten = [\"unix:/a.sock\"]\n[model]\nmemory_budget = \"1GiB\"\n")
    args = _parser().parse_args([
        "--config", str(path), "--bundle", "/b", "--budget", "8GB", "--listen", "unix:/x.sock",
        "--listen", "0.0.0.0:50051", "--auth-token-file", "/t", "--providers", "cuda,cpu", "--metrics-port", "9000",
        "--drain-grace", "5", "--max-queue", "3", "--max-thinking-tokens", "10", "--thinking-grace-tokens", "2",
        "--thinking-deadline-ms", "100", "--max-answer-tokens", "20", "--log-level", "warning",
        "--tls-cert", "/c", "--tls-key", "/k", "--tls-client-ca", "/ca", "--cuda-device-id", "1",
        "--cuda-gpu-mem-limit", "2GiB", "--trt-device-id", "1", "--trt-engine-cache-dir", "/e",
        "--trt-timing-cache-dir", "/tc", "--no-trt-fp16", "--trt-max-workspace-size", "1GiB",
        "--custom-op-library", "/lib.so", "--max-sequences", "32", "--spinning", "always", "--stream-interval-ms", "5",
        "--trusted-key", "/a.pub", "--trusted-key", "/b.pub",
        "--max-request-bytes", "1MiB", "--max-text-chars", "9", "--max-messages", "9", "--max-tools", "9",
        "--template-max-steps", "9", "--no-prefix-cache", "--prefix-cache-budget", "100MiB",
        "--pinned-prompt", "You are a robot.", "--http-listen", "unix:/h.sock",
    ])
    config = config_from_args(args)
    defaults = ServiceConfig()
    unchanged = [f.name for f in dataclasses.fields(ServiceConfig) if getattr(config, f.name) == getattr(defaults, f.name)]
    assert unchanged == [], f"flags did not override {unchanged}"
    assert config.listen == ("unix:/x.sock", "0.0.0.0:50051")
    assert config.memory_budget == 8_000_000_000
    assert config.providers == ("cuda", "cpu")
    assert config.trusted_keys == (Path("/a.pub"), Path("/b.pub"))


def test_flags_not_given_keep_the_file_values(tmp_path: Path) -> None:
    path = _write(tmp_path, "[server]\nmax_queue = 8\n[model]\nmemory_budget = \"1GiB\"\n")
    config = config_from_args(_parser().parse_args(["--config", str(path), "--max-queue", "2"]))
    assert config.max_queue == 2
    assert config.memory_budget == 1024**3
    assert config.listen == ServiceConfig().listen


@pytest.mark.parametrize(("overrides", "message"), [
    ({"memory_budget": "lots"}, "--budget: invalid size 'lots'"),
    ({"listen": ["nowhere"]}, "--listen: address 'nowhere'"),
    ({"providers": ["cpu", "npu"]}, "--providers: unknown provider 'npu'"),
    ({"max_queue": -2}, "--max-queue: expected an integer at least 1"),
    ({"tls_key_file": "/k"}, "cert_file and key_file must be given together"),
])
def test_bad_override_names_the_flag(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        apply_overrides(ServiceConfig(), **overrides)
    assert message in str(e.value)


def test_unknown_override_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="budgett"):
        apply_overrides(ServiceConfig(), budgett="1GiB")


def test_none_means_not_given() -> None:
    config = ServiceConfig(max_queue=5)
    assert apply_overrides(config, max_queue=None, memory_budget=None) == config


def test_the_prefix_cache_takes_its_share_of_the_budget_on_the_cpu_provider_only(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, '[model]\nmemory_budget = "8GiB"\n[cache]\npinned_prompts = ["Hi."]\n'))
    engine = config.engine_config()
    assert (engine.prefix_cache_bytes, engine.prefix_cache_share) == (0, 0.125) and config.pinned_prompts == ("Hi.",)
    sized = load_config(_write(tmp_path, '[model]\nmemory_budget = "8GiB"\n[cache]\nbudget = "100MiB"\n'))
    assert (sized.engine_config().prefix_cache_bytes, sized.engine_config().prefix_cache_share) == (100 << 20, 0.0)
    for off in (apply_overrides(sized, prefix_cache=False), apply_overrides(config, providers=["cuda", "cpu"])):
        assert (off.engine_config().prefix_cache_bytes, off.engine_config().prefix_cache_share) == (0, 0.0)
    with pytest.raises(ConfigFileError, match=r"\[cache\] budget must be less"):
        load_config(_write(tmp_path, '[model]\nmemory_budget = "1GiB"\n[cache]\nbudget = "1GiB"\n'))
    with pytest.raises(ConfigFileError, match="pinned_prompts: expected a list of non-empty strings"):
        load_config(_write(tmp_path, '[cache]\npinned_prompts = [""]\n'))
