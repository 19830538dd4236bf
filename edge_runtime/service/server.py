"""Run the service: bind the listeners, load and warm up the engine, serve, drain on SIGTERM.

Listen addresses (ServiceConfig.listen):
  - `unix:/path`: the socket file gets mode 0660 (owner and group, i.e. the service user and the clients
    added to its group); its parent directory is created if missing (mode 0750). A stale socket left by a
    crashed run is replaced; a path that a live server answers on, or that is not a socket, is refused.
  - `HOST:PORT` / `[IPv6]:PORT`: TCP. Loopback hosts (127.0.0.0/8, ::1, localhost) need nothing else.
    Any other host is refused at start-up unless clients must authenticate: a bearer token file
    (service/auth.py) or mutual TLS (tls_cert_file + tls_key_file + tls_client_ca_file). With a TLS
    certificate configured, every TCP listener uses TLS; Unix sockets never do (file permissions guard them).

Start-up order: bind first (health NOT_SERVING, EdgeLM calls answer UNAVAILABLE, so clients see "loading"
rather than "connection refused" during a long first TensorRT build), then load the bundle and run one
tiny generation (warm-up) on a loader thread, then health SERVING and systemd READY=1.

Drain (SIGTERM or SIGINT): health NOT_SERVING and systemd STOPPING=1; new EdgeLM calls are refused with
UNAVAILABLE while running streams continue; when they have all finished, or drain_grace_s has passed
(remaining ones are then cancelled and end with FINISH_REASON_CANCELLED), the server stops and the
process exits 0.

Server options (service/options.py): explicit 16 MiB send/receive message limits (the transport's ceiling; a request
is refused past the smaller `[limits] max_request_bytes` before it is parsed, service/request_bytes.py), and
keepalive settings that accept client pings every 10 s even on streams that send nothing for minutes (queue
waits, long prefills), so well-behaved clients are never cut off with "too_many_pings".

With `[http] listen` (ServiceConfig.http_listen) the OpenAI-compatible HTTP API (edge_runtime/http_api/) is
served too, on listeners of its own, over the same engine and serving state: the same socket modes, the
same bearer token, the same refusal of a non-loopback address without it (HTTP listeners take no TLS here:
put them on a Unix socket or loopback, or behind a TLS proxy). It answers 503 while loading and draining.

Also on: the standard health service (grpc.health.v1.Health, for "" and for the EdgeLM service), server
reflection (grpc_reflection, so grpcurl and friends can list and call the service), Prometheus metrics on
127.0.0.1:metrics_port when set, and the systemd watchdog (service/sd_notify.py) when WATCHDOG_USEC is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edge_runtime.api import edge_pb2_grpc as pb_grpc
from edge_runtime.engine.loading import load_engine
from edge_runtime.http_api.app import OpenAIFrontEnd
from edge_runtime.http_api.listener import HttpListener
from edge_runtime.service.auth import BearerTokenInterceptor, read_token
from edge_runtime.service.options import SERVER_OPTIONS
from edge_runtime.service.request_bytes import RequestBytesInterceptor
from edge_runtime.service.servicer import SERVICE_NAME, EdgeService, TelemetryReader
from edge_runtime.service.metrics import ServiceMetrics
from edge_runtime.service.sd_notify import EngineProgress, Notifier, run_watchdog, watchdog_period_s
from edge_runtime.service.config import ServiceConfig

log = logging.getLogger(__name__)

SOCKET_MODE = 0o660
SOCKET_DIR_MODE = 0o750
# How long finishing streams get to flush their last events once the drain is over.
_STOP_GRACE_S = 2.0
# STATUS= refresh when no watchdog ticks drive it.
_STATUS_INTERVAL_S = 5.0


class ListenError(ValueError):
    """A listen address that cannot or must not be served; the message names the address and the fix."""


@dataclass(frozen=True)
class ListenAddress:
    raw: str
    unix_path: Path | None = None
    host: str = ""
    port: int = 0

    @property
    def is_unix(self) -> bool:
        return self.unix_path is not None

    @property
    def is_loopback(self) -> bool:
        if self.is_unix:
            return True
        host = self.host.strip("[]")
        if host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False  # a host name: it may resolve to anything


def parse_listen(address: str) -> ListenAddress:
    if address.startswith("unix:"):
        path = address.removeprefix("unix:")
        if not path.startswith("/"):
            raise ListenError(f"--listen {address}: a unix socket needs an absolute path, e.g. unix:/run/nemotron-edge/edge.sock")
        return ListenAddress(address, unix_path=Path(path))
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ListenError(f"--listen {address}: expected unix:/path or HOST:PORT")
    return ListenAddress(address, host=host, port=int(port))


def check_listen(config: ServiceConfig) -> list[ListenAddress]:
    """Parse every listen address and refuse a non-loopback TCP one that clients could call without
    authenticating. Run before anything is loaded, so a bad config fails fast with a clear message."""
    addresses = [parse_listen(a) for a in config.listen]
    mutual_tls = config.tls_cert_file is not None and config.tls_client_ca_file is not None
    for a in addresses:
        if a.is_loopback or config.auth_token_file is not None or mutual_tls:
            continue
        raise ListenError(
            f"--listen {a.raw}: refusing to serve a non-loopback TCP address without client authentication; "
            "set --auth-token-file FILE (bearer token), or --tls-cert/--tls-key with --tls-client-ca "
            "(mutual TLS), or listen on 127.0.0.1:PORT or a unix:/path socket")
    if config.auth_token_file is not None and config.tls_cert_file is None \
            and any(not a.is_loopback for a in addresses):
        log.warning("bearer tokens will cross the network in clear text: configure --tls-cert/--tls-key too")
    return addresses


def check_http_listen(config: ServiceConfig) -> list[ListenAddress]:
    """The HTTP API's addresses; a non-loopback one needs the bearer token (no TLS on these listeners)."""
    addresses = [parse_listen(a) for a in config.http_listen]
    for a in addresses:
        if not a.is_loopback and config.auth_token_file is None:
            raise ListenError(f"--http-listen {a.raw}: refusing to serve a non-loopback TCP address without a bearer "
                              "token; set --auth-token-file FILE, or listen on 127.0.0.1:PORT or a unix:/path socket")
    return addresses


def bind_http(addresses: list[ListenAddress]) -> tuple[list[socket.socket], list[Path], list[str]]:
    """Listening sockets for the HTTP API: (sockets, Unix socket paths, addresses as bound)."""
    sockets, paths, bound = [], [], []
    for a in addresses:
        try:
            if a.is_unix:
                _prepare_unix_socket(a.unix_path)
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                old = os.umask(0o117)  # 0660 from the first instant, as for gRPC's sockets
                try:
                    sock.bind(str(a.unix_path))
                finally:
                    os.umask(old)
                paths.append(a.unix_path)
                bound.append(a.raw)
            else:
                host = a.host.strip("[]")
                sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, a.port))
                bound.append(f"{a.host}:{sock.getsockname()[1]}")
            sock.listen(128)
            sock.setblocking(False)
        except OSError as e:
            raise ListenError(f"--http-listen {a.raw}: cannot bind: {e.strerror}") from None
        sockets.append(sock)
    return sockets, paths, bound


def _prepare_unix_socket(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=SOCKET_DIR_MODE)
    except OSError as e:
        raise ListenError(f"--listen unix:{path}: cannot create {path.parent}: {e.strerror} "
                          "(under systemd, RuntimeDirectory= creates it; by hand, pick a writable path)") from None
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(f"--listen unix:{path}: {path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        raise ListenError(f"--listen unix:{path}: another server is already listening there")
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # a stale socket from a run that did not clean up
    finally:
        probe.close()


def _server_credentials(config: ServiceConfig) -> grpc.ServerCredentials | None:
    if config.tls_cert_file is None:
        return None
    try:
        cert = config.tls_cert_file.read_bytes()
        key = config.tls_key_file.read_bytes()
        ca = config.tls_client_ca_file.read_bytes() if config.tls_client_ca_file else None
    except OSError as e:
        raise ListenError(f"TLS: cannot read {e.filename}: {e.strerror}") from None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


@dataclass
class BuiltServer:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    unix_paths: list[Path]
    bound: list[str]  # the addresses actually served (TCP port 0 resolved)
    http: HttpListener | None = None  # the OpenAI-compatible API, when configured


def build_server(service: EdgeService, config: ServiceConfig, addresses: list[ListenAddress]) -> BuiltServer:
    """The grpc.aio server with EdgeLM, health and reflection, bound to `addresses` (not started)."""
    token = read_token(config.auth_token_file) if config.auth_token_file is not None else None
    # Authentication first: an unauthenticated peer learns nothing, not even whether its bytes decode.
    interceptors = [BearerTokenInterceptor(token)] if token else []
    interceptors.append(RequestBytesInterceptor(service.max_request_bytes))
    server = grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
    pb_grpc.add_EdgeLMServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server)
    credentials = _server_credentials(config)
    unix_paths: list[Path] = []
    bound: list[str] = []
    for a in addresses:
        if a.is_unix:
            _prepare_unix_socket(a.unix_path)
            # The socket is created by bind() with 0777 & ~umask: make that 0660 from the first instant.
            old = os.umask(0o117)
            try:
                port = _bind(server, a.raw, None)
            finally:
                os.umask(old)
            unix_paths.append(a.unix_path)
            bound.append(a.raw)
        else:
            port = _bind(server, a.raw, credentials)
            bound.append(f"{a.host}:{port}")
    return BuiltServer(server, health_servicer, unix_paths, bound)


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError as e:
        raise ListenError(f"--listen {address}: cannot bind: {e}") from None
    if port == 0 and not address.startswith("unix:"):
        raise ListenError(f"--listen {address}: cannot bind (address in use or not local)")
    return port


# ---- the engine ---------------------------------------------------------------------------------------------


def _load_in_background(config: ServiceConfig, bundle: Path) -> asyncio.Future:
    """Load on a daemon thread (not the default executor, whose threads are joined at exit: a SIGTERM
    during a long load must be able to end the process)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def deliver(fn, value) -> None:
        if not future.done():
            fn(value)

    def work() -> None:
        try:
            engine_config = config.engine_config()
            if config.prefix_cache and not (engine_config.prefix_cache_bytes or engine_config.prefix_cache_share):
                log.warning("prefix cache off: the state lives on the GPU, where copying snapshots has not been "
                            "verified yet")
            result = load_engine(bundle, engine_config, config.thinking_defaults(), config.request_limits,
                                 config.pinned_prompts)
        except BaseException as e:  # noqa: BLE001 - reported to the event loop, which decides
            loop.call_soon_threadsafe(deliver, future.set_exception, e)
        else:
            loop.call_soon_threadsafe(deliver, future.set_result, result)

    threading.Thread(target=work, name="nemotron-edge-loader", daemon=True).start()
    return future


# ---- the lifecycle ------------------------------------------------------------------------------------------


async def run_service(config: ServiceConfig, bundle: Path, telemetry: TelemetryReader | None = None,
                      notifier: Notifier | None = None) -> int:
    """Serve until SIGTERM/SIGINT; the exit code (0 after a drain, 1 when the bundle fails to load)."""
    addresses = check_listen(config)
    http_addresses = check_http_listen(config)
    notifier = notifier or Notifier()
    metrics = ServiceMetrics()
    service = EdgeService(metrics, telemetry, stream_interval_s=config.stream_interval_ms / 1000)
    built = build_server(service, config, addresses)
    sockets, http_paths, http_bound = bind_http(http_addresses)
    built.unix_paths.extend(http_paths)
    await built.server.start()
    for path in built.unix_paths:
        os.chmod(path, SOCKET_MODE)
    if sockets:
        token = read_token(config.auth_token_file) if config.auth_token_file is not None else None
        built.http = HttpListener(OpenAIFrontEnd(service, token).app(), sockets)
        await built.http.started()
    await _set_health(built.health, health_pb2.HealthCheckResponse.NOT_SERVING)
    log.info("listening on %s%s; loading %s", ", ".join(built.bound),
             f" (OpenAI-compatible HTTP on {', '.join(http_bound)})" if http_bound else "", bundle)
    notifier.status(f"loading {bundle}")

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stop_wait = asyncio.ensure_future(stop.wait())
    loading = _load_in_background(config, bundle)
    await asyncio.wait({loading, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    if not loading.done():
        log.info("stopped while loading")
        notifier.stopping("stopped while loading")
        await _close(built)
        return 0
    try:
        loaded = loading.result()
    except Exception as e:
        log.error("cannot load %s: %s", bundle, e)
        notifier.status(f"failed: {e}")
        stop_wait.cancel()
        await _close(built)
        return 1

    engine = loaded.engine
    service.attach(loaded)
    await _set_health(built.health, health_pb2.HealthCheckResponse.SERVING)
    if config.metrics_port is not None:
        metrics.serve_http(config.metrics_port)
    notifier.ready(service.status_line())
    log.info("serving %s (bundle %s): %d slots, max context %d, native kernels %s", bundle, engine.bundle.identity,
             engine.num_slots, engine.max_context,
             engine.config.providers.kernel_library() or "none (the ops run as their ONNX function bodies)")

    background: list[asyncio.Task] = []
    period = watchdog_period_s()
    if notifier.enabled and period is not None:
        progress = EngineProgress.of(engine)
        background.append(asyncio.create_task(run_watchdog(notifier, period, progress.check, service.status_line)))
    elif notifier.enabled:
        background.append(asyncio.create_task(_refresh_status(notifier, service)))

    await stop_wait
    log.info("draining: %d stream(s) running, grace %.1f s", service.active_streams, config.drain_grace_s)
    service.begin_drain()
    for task in background:
        task.cancel()
    await _set_health(built.health, health_pb2.HealthCheckResponse.NOT_SERVING)
    notifier.stopping(service.status_line())
    if not await service.wait_idle(config.drain_grace_s):
        log.warning("drain grace over with %d stream(s) running; cancelling them", service.active_streams)
    # Ends whatever is left with FINISH_REASON_CANCELLED; a wedged model call must not block the exit.
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.to_thread(engine.shutdown), timeout=5.0)
    await _close(built, grace=_STOP_GRACE_S)
    metrics.close()
    log.info("stopped")
    return 0


async def _set_health(servicer: health.aio.HealthServicer, status: int) -> None:
    for name in ("", SERVICE_NAME):
        await servicer.set(name, status)


async def _refresh_status(notifier: Notifier, service: EdgeService) -> None:
    while True:
        await asyncio.sleep(_STATUS_INTERVAL_S)
        notifier.status(service.status_line())


async def _close(built: BuiltServer, grace: float | None = None) -> None:
    if built.http is not None:
        await built.http.stop()
    await built.server.stop(grace)
    for path in built.unix_paths:
        with contextlib.suppress(OSError):
            path.unlink()
