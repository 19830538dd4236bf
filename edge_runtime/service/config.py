"""Settings of `nemotron-edge serve`: read from a TOML file, each one overridable by a command-line flag.

The file (default /etc/nemotron-edge/config.toml, see systemd/config.toml for an annotated example) has the
sections [model], [server], [server.tls], [http], [providers], [providers.cuda], [providers.tensorrt],
[thinking], [limits] and [cache].
Every key maps to one field of `ServiceConfig` and one `serve` flag; `FIELDS` is that map, so the file
reader, the flags and the overrides cannot drift apart. Unknown keys and bad values are errors that name
the file, section and key: a typo in a service's config should stop it, not be silently ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from edge_runtime.bundle.signature import load_trusted_keys
from edge_runtime.engine.chat import ThinkingDefaults
from edge_runtime.engine.engine import EngineConfig
from edge_runtime.engine.limits import MAX_MESSAGE_BYTES, RequestLimits
from edge_runtime.engine.providers import BRIEF_SPIN_US, SPINNING, ProviderConfig
from edge_runtime.engine.scheduler import SchedulerConfig
from edge_runtime.bundle.units import SizeError, parse_bytes

DEFAULT_CONFIG_PATH = Path("/etc/nemotron-edge/config.toml")
DEFAULT_SOCKET = "unix:/run/nemotron-edge/edge.sock"
PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# Of what the memory budget leaves after weights, overhead and working memory, when [cache] budget is unset.
# The cache is off when the state lives on a GPU (it copies state in host memory only, so far).
DEFAULT_PREFIX_CACHE_SHARE = 0.125


class ConfigError(ValueError):
    """A setting has a bad value; the message names the setting."""


class ConfigFileError(ConfigError):
    """The config file cannot be read or has a bad key or value; the message names file, section and key."""


@dataclass(frozen=True)
class ServiceConfig:
    bundle: Path | None = None  # None: the demo bundle shipped inside the package
    memory_budget: int | None = None  # bytes; None: the planner sizes from free memory
    trusted_keys: tuple[Path, ...] = ()  # set: serve only bundles signed by one of these (bundle/signature.py)
    listen: tuple[str, ...] = (DEFAULT_SOCKET,)
    auth_token_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None  # set: clients must present a certificate signed by it
    # [http]: the OpenAI-compatible API (edge_runtime/http_api/), on listeners of its own; none: off
    http_listen: tuple[str, ...] = ()
    drain_grace_s: float = 30.0
    metrics_port: int | None = None  # served on loopback only; None: no metrics endpoint
    max_queue: int = 64
    stream_interval_ms: int = 20  # a stream sends what has queued at most once per interval (edge_runtime.service.event_stream)
    max_sequences: int | None = None  # sequences in their slots at once; None: the bundle's max batch
    log_level: str = "info"
    providers: tuple[str, ...] = ("cpu",)
    custom_op_library: Path | None = None  # native kernels for our ops (kernels/), CPU-only sessions
    spinning: str = "never"  # ProviderConfig.spinning
    cuda_device_id: int = 0
    cuda_gpu_mem_limit: int | None = None
    trt_device_id: int = 0
    trt_engine_cache_dir: Path = Path("/var/lib/nemotron-edge/trt-engines")
    trt_timing_cache_dir: Path = Path("/var/lib/nemotron-edge/trt-timing")
    trt_fp16: bool = True
    trt_max_workspace_size: int | None = None
    max_thinking_tokens: int = 1024
    thinking_grace_tokens: int = 0
    thinking_deadline_ms: int | None = None
    max_answer_tokens: int = 1024
    # [limits]: what one request may carry; None: derived from the model's context (edge_runtime.engine.limits)
    max_request_bytes: int | None = None
    max_text_chars: int | None = None
    max_messages: int | None = None
    max_tools: int | None = None
    template_max_steps: int | None = None
    # [cache]: the prefix state cache (edge_runtime/engine/prefix_cache.py)
    prefix_cache: bool = True
    prefix_cache_budget: int | None = None  # None: an eighth of what the budget leaves after weights and working memory
    pinned_prompts: tuple[str, ...] = ()

    def ort_providers(self) -> list[tuple[str, dict[str, str]]]:
        """`providers` as ONNX Runtime names with their options, ready for `InferenceSession(providers=...)`."""
        result: list[tuple[str, dict[str, str]]] = []
        for name in self.providers:
            options: dict[str, str] = {}
            if name == "cuda":
                options["device_id"] = str(self.cuda_device_id)
                if self.cuda_gpu_mem_limit is not None:
                    options["gpu_mem_limit"] = str(self.cuda_gpu_mem_limit)
            elif name == "tensorrt":
                options = {
                    "device_id": str(self.trt_device_id),
                    "trt_engine_cache_enable": "True",
                    "trt_engine_cache_path": str(self.trt_engine_cache_dir),
                    "trt_timing_cache_enable": "True",
                    "trt_timing_cache_path": str(self.trt_timing_cache_dir),
                    "trt_fp16_enable": str(self.trt_fp16),
                }
                if self.trt_max_workspace_size is not None:
                    options["trt_max_workspace_size"] = str(self.trt_max_workspace_size)
            result.append((PROVIDERS[name], options))
        return result

    def engine_config(self) -> EngineConfig:
        """The engine's settings. No memory budget configured: what is available now, so the planner sizes
        the state pool to the memory this device actually has free."""
        budget = self.memory_budget if self.memory_budget is not None else psutil.virtual_memory().available
        options = dict(self.ort_providers())
        providers = ProviderConfig(providers=list(self.providers),
                                   custom_op_library=str(self.custom_op_library) if self.custom_op_library else None,
                                   spinning=self.spinning,
                                   cuda=options.get("CUDAExecutionProvider", {}),
                                   tensorrt=options.get("TensorrtExecutionProvider", {}))
        # Snapshots of state in GPU memory are copied on the GPU (engine/state_copy.py), but that path has not
        # run on a GPU yet (the GPU check's snapshot round trip): the service keeps the cache to host state.
        cache_on = self.prefix_cache and providers.state_device().is_host
        return EngineConfig(
            prefix_cache_bytes=(self.prefix_cache_budget or 0) if cache_on else 0,
            prefix_cache_share=DEFAULT_PREFIX_CACHE_SHARE if cache_on and self.prefix_cache_budget is None else 0.0,
            memory_budget=budget,
            max_sequences=self.max_sequences,
            trusted_keys=load_trusted_keys(self.trusted_keys),
            scheduler=SchedulerConfig(max_queue=self.max_queue),
            providers=providers,
        )

    def thinking_defaults(self) -> ThinkingDefaults:
        return ThinkingDefaults(max_thinking_tokens=self.max_thinking_tokens,
                                thinking_grace_tokens=self.thinking_grace_tokens,
                                thinking_deadline_ms=self.thinking_deadline_ms,
                                max_answer_tokens=self.max_answer_tokens)

    def request_limits(self, context: int) -> RequestLimits:
        """The [limits] settings, each one left unset derived from the model's `context`."""
        return RequestLimits.for_context(context, max_request_bytes=self.max_request_bytes,
                                         max_text_chars=self.max_text_chars, max_messages=self.max_messages,
                                         max_tools=self.max_tools, template_max_steps=self.template_max_steps)


# --- value readers: take a TOML (or argparse) value, return the field's value or raise ValueError("expected ...")


def _path(value: Any) -> Path:
    if not isinstance(value, (str, Path)) or not str(value):
        raise ValueError("expected a non-empty path string")
    return Path(value)


def _paths(value: Any) -> tuple[Path, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError("expected a list of path strings")
    return tuple(_path(v) for v in value)


def _int(low: int, high: int | None = None) -> Callable[[Any], int]:
    def read(value: Any) -> int:
        # bool is an int to Python; `max_queue = true` is still a mistake.
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("expected an integer")
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"expected an integer {bound}, got {value}")
        return value

    return read


def _seconds(value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError("expected a number of seconds")
    if value < 0:
        raise ValueError(f"expected a non-negative number of seconds, got {value}")
    return float(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _size(value: Any) -> int:
    try:
        return parse_bytes(value)
    except SizeError as e:
        raise ValueError(str(e)) from None


def _request_bytes(value: Any) -> int:
    size = _size(value)
    if not 1024 <= size <= MAX_MESSAGE_BYTES:
        raise ValueError(f"expected a size between 1KiB and {MAX_MESSAGE_BYTES // 2**20}MiB (gRPC's message limit), "
                         f"got {size} bytes")
    return size


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("expected a list of non-empty strings")
    return tuple(value)


def _one_of(options: tuple[str, ...]) -> Callable[[Any], str]:
    def read(value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return value.lower()
    return read


def _listen(value: Any) -> tuple[str, ...]:
    if not _addresses(value):
        raise ValueError("expected at least one address")
    return tuple(value)


def _addresses(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    for address in value:
        _check_address(address)
    return tuple(value)


def _check_address(address: str) -> None:
    """gRPC's address forms: unix:/absolute/path, HOST:PORT, [IPv6]:PORT."""
    if address.startswith("unix:"):
        if not address.removeprefix("unix:").startswith("/"):
            raise ValueError(f"unix socket address {address!r} must have an absolute path, e.g. {DEFAULT_SOCKET}")
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {address!r} is neither unix:/path nor HOST:PORT with a port in 1..65535")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host.strip("[]"))
        except ValueError:
            raise ValueError(f"address {address!r} has a bad IPv6 host") from None


def parse_providers(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    if not value:
        raise ValueError("expected at least one provider")
    names = tuple(v.lower() for v in value)
    unknown = [n for n in names if n not in PROVIDERS]
    if unknown:
        raise ValueError(f"unknown provider {unknown[0]!r} (known: {', '.join(PROVIDERS)})")
    if len(set(names)) != len(names):
        raise ValueError(f"provider listed twice in {list(value)}")
    return names


@dataclass(frozen=True)
class Field:
    """One setting: where it lives in the file, which flag overrides it, and how its value is read."""

    section: str
    key: str
    attr: str
    read: Callable[[Any], Any]
    flag: str
    help: str
    cli: dict[str, Any] = field(default_factory=dict)  # extra argparse options for the flag


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


FIELDS: tuple[Field, ...] = (
    Field("model", "bundle", "bundle", _path, "--bundle", "exported bundle directory (default: the demo bundle)"),
    Field("model", "memory_budget", "memory_budget", _size, "--budget",
          "memory the runtime may use, e.g. 24GiB, 8GB (default: sized from free memory)"),
    Field("model", "trusted_keys", "trusted_keys", _paths, "--trusted-key",
          "Ed25519 public key (PEM) a bundle must be signed by, repeatable; refuses unsigned bundles "
          "(default: none, signatures unchecked)", {"action": "append"}),
    Field("server", "listen", "listen", _listen, "--listen",
          f"address to serve on, repeatable: unix:/path or HOST:PORT (default: {DEFAULT_SOCKET})",
          {"action": "append"}),
    Field("server", "auth_token_file", "auth_token_file", _path, "--auth-token-file",
          "file holding the bearer token clients must send"),
    Field("server", "drain_grace_s", "drain_grace_s", _seconds, "--drain-grace",
          "seconds to let in-flight requests finish on shutdown (default: 30)", {"type": float}),
    Field("server", "metrics_port", "metrics_port", _int(1, 65535), "--metrics-port",
          "serve Prometheus metrics on 127.0.0.1:PORT (default: off)", {"type": int}),
    Field("server", "max_queue", "max_queue", _int(1), "--max-queue",
          "requests that may wait for a slot before new ones are refused (default: 64)", {"type": int}),
    Field("server", "stream_interval_ms", "stream_interval_ms", _int(0, 1000), "--stream-interval-ms",
          "a stream sends what has queued at most once per this many ms, the deltas of one channel merged "
          "into one message; 0: every token as soon as it can (default: 20)", {"type": int}),
    Field("server", "max_sequences", "max_sequences", _int(1), "--max-sequences",
          "sequences running at once, beyond the rows of one model call if the budget holds them "
          "(default: the bundle's max batch)", {"type": int}),
    Field("server", "log_level", "log_level", _one_of(LOG_LEVELS), "--log-level", f"one of {', '.join(LOG_LEVELS)}"),
    Field("server.tls", "cert_file", "tls_cert_file", _path, "--tls-cert", "TLS certificate (PEM) for TCP listeners"),
    Field("server.tls", "key_file", "tls_key_file", _path, "--tls-key", "TLS private key (PEM)"),
    Field("server.tls", "client_ca_file", "tls_client_ca_file", _path, "--tls-client-ca",
          "require client certificates signed by this CA (PEM)"),
    Field("http", "listen", "http_listen", _addresses, "--http-listen",
          "address of the OpenAI-compatible HTTP API, repeatable: unix:/path or HOST:PORT; the same token and "
          "loopback rule as --listen (default: none, off)", {"action": "append"}),
    Field("providers", "order", "providers", parse_providers, "--providers",
          "execution providers in priority order, comma-separated: tensorrt,cuda,cpu", {"type": _comma_list}),
    Field("providers", "custom_op_library", "custom_op_library", _path, "--custom-op-library",
          "native kernels for the nemotron_edge ops (kernels/build/libnemotron_edge_ops.so); CPU-only sessions"),
    Field("providers", "spinning", "spinning", _one_of(SPINNING), "--spinning",
          "when ONNX Runtime's idle worker threads spin: never (default: the robot's other processes keep their "
          f"cores), brief (up to {BRIEF_SPIN_US} us between the kernels of a model call: faster on a machine that runs "
          "only the model), in_run (between the kernels of a model call), always (ONNX Runtime's own default)"),
    Field("providers.cuda", "device_id", "cuda_device_id", _int(0), "--cuda-device-id", "CUDA device", {"type": int}),
    Field("providers.cuda", "gpu_mem_limit", "cuda_gpu_mem_limit", _size, "--cuda-gpu-mem-limit",
          "cap on the CUDA provider's memory arena, e.g. 20GiB"),
    Field("providers.tensorrt", "device_id", "trt_device_id", _int(0), "--trt-device-id", "TensorRT device",
          {"type": int}),
    Field("providers.tensorrt", "engine_cache_dir", "trt_engine_cache_dir", _path, "--trt-engine-cache-dir",
          "where built TensorRT engines are kept"),
    Field("providers.tensorrt", "timing_cache_dir", "trt_timing_cache_dir", _path, "--trt-timing-cache-dir",
          "where the TensorRT timing cache is kept"),
    Field("providers.tensorrt", "fp16", "trt_fp16", _bool, "--trt-fp16", "let TensorRT use fp16 kernels",
          {"action": argparse.BooleanOptionalAction}),
    Field("providers.tensorrt", "max_workspace_size", "trt_max_workspace_size", _size, "--trt-max-workspace-size",
          "TensorRT builder workspace, e.g. 4GiB"),
    Field("thinking", "max_thinking_tokens", "max_thinking_tokens", _int(0), "--max-thinking-tokens",
          "default cap on reasoning tokens per request", {"type": int}),
    Field("thinking", "thinking_grace_tokens", "thinking_grace_tokens", _int(0), "--thinking-grace-tokens",
          "past the cap, thinking ends at the next newline, and at cap + grace at the latest", {"type": int}),
    Field("thinking", "thinking_deadline_ms", "thinking_deadline_ms", _int(1), "--thinking-deadline-ms",
          "default wall-clock cap on reasoning per request (default: none)", {"type": int}),
    Field("thinking", "max_answer_tokens", "max_answer_tokens", _int(1), "--max-answer-tokens",
          "default cap on answer tokens per request", {"type": int}),
    Field("limits", "max_request_bytes", "max_request_bytes", _request_bytes, "--max-request-bytes",
          "largest request accepted, serialized, e.g. 512KiB; larger ones are refused before they are parsed "
          "(default: room for max_text_chars)"),
    Field("limits", "max_text_chars", "max_text_chars", _int(1), "--max-text-chars",
          "characters of text one request's prompt may total: its prompt, messages, tools, the rendered chat "
          "(default: 16 per token of the context)", {"type": int}),
    Field("limits", "max_messages", "max_messages", _int(1), "--max-messages",
          "messages plus tool calls in one chat (default: the context in tokens)", {"type": int}),
    Field("limits", "max_tools", "max_tools", _int(1), "--max-tools",
          "tools offered in one chat (default: the context in tokens / 16)", {"type": int}),
    Field("limits", "template_max_steps", "template_max_steps", _int(1), "--template-max-steps",
          "steps (loop iterations, calls, filters, outputs) one chat template render may take (default: 16 per "
          "message and tool allowed, plus one per 4 characters of text)", {"type": int}),
    Field("cache", "enabled", "prefix_cache", _bool, "--prefix-cache",
          "keep snapshots of prompt prefixes' state and start requests with the same tokens from them "
          "(default: on; CPU provider only so far)", {"action": argparse.BooleanOptionalAction}),
    Field("cache", "budget", "prefix_cache_budget", _size, "--prefix-cache-budget",
          "the prefix cache's share of the memory budget, e.g. 2GiB; one snapshot of the 9B holds its 142 MB of "
          "SSM state plus K/V (default: an eighth of what the budget leaves after weights and working memory)"),
    Field("cache", "pinned_prompts", "pinned_prompts", _strings, "--pinned-prompt",
          "system prompt whose conversations' shared start is prefilled at start-up and never evicted, "
          "repeatable", {"action": "append"}),
)
_BY_ATTR = {f.attr: f for f in FIELDS}
_SECTIONS = {f.section for f in FIELDS}


def load_config(path: Path | str | None = None) -> ServiceConfig:
    """The config in `path`. With no path, the default file if it exists, else the built-in defaults
    (so a development machine needs no /etc file); an explicitly named file must exist."""
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return ServiceConfig()
        path = DEFAULT_CONFIG_PATH
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigFileError(f"{path}: no such config file") from None
    except OSError as e:
        raise ConfigFileError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigFileError(f"{path}: not valid TOML: {e}") from None
    return parse_config(data, source=str(path))


def parse_config(data: dict[str, Any], source: str = "config.toml") -> ServiceConfig:
    """A config from already-parsed TOML; `source` names the file in error messages."""
    values: dict[str, Any] = {}
    _read_table(data, "", source, values)
    config = ServiceConfig(**values)
    try:
        _check_consistency(config)
    except ConfigError as e:
        raise ConfigFileError(f"{source}: {e}") from None
    return config


def _read_table(table: dict[str, Any], section: str, source: str, values: dict[str, Any]) -> None:
    keys = {f.key: f for f in FIELDS if f.section == section}
    where = f"[{section}] " if section else ""
    for key, value in table.items():
        sub = f"{section}.{key}" if section else key
        if isinstance(value, dict):
            if sub not in _SECTIONS and not any(s.startswith(sub + ".") for s in _SECTIONS):
                raise ConfigFileError(f"{source}: unknown section [{sub}] (known: {', '.join(sorted(_SECTIONS))})")
            _read_table(value, sub, source, values)
            continue
        if key not in keys:
            known = ", ".join(keys) or "only sub-tables"
            raise ConfigFileError(f"{source}: {where}unknown key {key!r} (known: {known})")
        f = keys[key]
        try:
            values[f.attr] = f.read(value)
        except ValueError as e:
            raise ConfigFileError(f"{source}: {where}{key}: {e}") from None


def _check_consistency(config: ServiceConfig) -> None:
    if (config.tls_cert_file is None) != (config.tls_key_file is None):
        raise ConfigError("[server.tls] cert_file and key_file must be given together")
    if config.tls_client_ca_file is not None and config.tls_cert_file is None:
        raise ConfigError("[server.tls] client_ca_file needs cert_file and key_file")
    if None not in (config.prefix_cache_budget, config.memory_budget) and config.prefix_cache_budget >= config.memory_budget:
        raise ConfigError("[cache] budget must be less than [model] memory_budget, which it is a share of")


def apply_overrides(config: ServiceConfig, **cli_values: Any) -> ServiceConfig:
    """`config` with every setting given on the command line replaced; a value of None means the flag was
    not given. Keys are `ServiceConfig` field names (the `dest` of each flag from `add_arguments`)."""
    unknown = sorted(set(cli_values) - _BY_ATTR.keys())
    if unknown:
        raise TypeError(f"apply_overrides: unknown setting(s) {', '.join(unknown)}")
    changes: dict[str, Any] = {}
    for attr, value in cli_values.items():
        if value is None:
            continue
        f = _BY_ATTR[attr]
        try:
            changes[attr] = f.read(value)
        except ValueError as e:
            raise ConfigError(f"{f.flag}: {e}") from None
    result = dataclasses.replace(config, **changes)
    _check_consistency(result)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `serve` flags: --config plus one flag per setting, each defaulting to None (= keep the file's value)."""
    parser.add_argument("--config", type=Path, default=None,
                        help=f"TOML config file (default: {DEFAULT_CONFIG_PATH} if it exists)")
    for f in FIELDS:
        parser.add_argument(f.flag, dest=f.attr, default=None, help=f.help, **f.cli)


def config_from_args(args: argparse.Namespace) -> ServiceConfig:
    """The config file named by --config (or the default) with the flags from `add_arguments` applied."""
    config = load_config(args.config)
    return apply_overrides(config, **{f.attr: getattr(args, f.attr, None) for f in FIELDS})
