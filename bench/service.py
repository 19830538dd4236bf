"""Through the gRPC service: aggregate tokens/s of concurrent streams, and the cost of the gRPC path.

The real `nemotron-edge serve` runs in a subprocess on a Unix socket (`--budget`, and
`--custom-op-library` for a `+k` variant; ONNX Runtime's default thread count, one per core; the service's
default stream interval and thread spinning, "never": here the model's threads share the cores with the
service's own, so the run's `spinning` setting, which matches the reference's threads, does not apply). Clients
are the real `EdgeClient`, one per stream, each stream on its own thread: a greedy `Generate` of
`new_tokens` token ids after its own `prompt_tokens` prompt, EOS ignored. Aggregate tokens/s = streams x
new tokens / wall time from the first call to the last Final.

The overhead at batch 1 compares the same request through the service (over gRPC, and streamed over the
OpenAI-compatible HTTP API on a second Unix socket of the same server with the official `openai` client)
with the same request run in this process by an engine built from the same settings (`ServiceConfig.engine_config`), stepped on the caller's
thread; the two are measured interleaved (`overhead_reps` rounds: the bar is 10% and single runs of this VM
vary more than that), and the servers are idle while the in-process engine runs. A second server with
`--stream-interval-ms 0` (a message per token) runs in the same rounds, to show what pacing saves. CPU time
per generated token is recorded for each side (all threads: this process for the in-process engine and for
the gRPC client, /proc for the server process), so the report shows what the service path adds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.settings import Settings
from bench.timing import Case, timed
from bench.variants import Env, prompt_ids
import httpx2
import openai

from edge_runtime.client import EdgeClient
from edge_runtime.engine.engine import Engine
from edge_runtime.engine.records import GenerationRequest
from edge_runtime.engine.sampler import SamplingParams
from edge_runtime.service.config import ServiceConfig

BUDGET = 4 << 30
OVERHEAD_TARGET = "<= 1.10"  # in-process tok/s over gRPC tok/s at batch 1


class Server:
    def __init__(self, workdir: Path, bundle: Path, custom_op_library: str | None, *extra_args: str,
                 budget: int | str = BUDGET):
        workdir.mkdir(exist_ok=True)
        self.address = f"unix:{workdir / 'edge.sock'}"
        self.log = (workdir / "server.log").open("wb")
        args = ["--bundle", str(bundle), "--listen", self.address, "--budget", str(budget), "--log-level", "warning",
                *extra_args]
        if custom_op_library:
            args += ["--custom-op-library", custom_op_library]
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_runtime.cli", "serve", *args], cwd=workdir,
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        with EdgeClient(self.address) as c:
            c.wait_until_serving(timeout=300)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far, all threads."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _streams(clients: list[EdgeClient], prompts: list[list[int]], new_tokens: int) -> float:
    """Aggregate tokens/s of one Generate per client, all at once."""
    errors: list[BaseException] = []

    def one(client: EdgeClient, prompt: list[int]) -> None:
        try:
            final = client.generate(prompt, max_tokens=new_tokens, ignore_eos=True).result()
            if len(final.token_ids) != new_tokens:
                raise RuntimeError(f"stream ended early: {final.finish_reason} {final.error}")
        except BaseException as e:  # reported on the main thread
            errors.append(e)

    threads = [threading.Thread(target=one, args=(c, p)) for c, p in zip(clients, prompts)]

    def run() -> None:
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    seconds = timed(run)
    if errors:
        raise errors[0]
    return len(clients) * new_tokens / seconds


def _http_stream(client: openai.OpenAI, prompt: list[int], new_tokens: int) -> float:
    """Tokens/s of one streamed /v1/completions of `new_tokens` tokens."""
    def run() -> None:
        stream = client.completions.create(model="any", prompt=prompt, max_tokens=new_tokens, stream=True,
                                           stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        usage = [c.usage for c in stream if c.usage is not None]
        if not usage or usage[0].completion_tokens != new_tokens:
            raise RuntimeError(f"HTTP stream ended early: {usage}")

    return new_tokens / timed(run)


def service(env: Env, s: Settings) -> dict:
    case = Case("service", warmups=s.warmups)
    v = env.preferred(s.service_format)
    bundle = env.bundle(v.fmt)
    prompts = [prompt_ids(100 + i, s.prompt_tokens, env.vocab) for i in range(max(s.streams))]
    lib = env.kernel_library if v.kernels else None
    case.details.update(variant=v.label, budget_bytes=BUDGET, intra_op_threads="ONNX Runtime default (one per core)",
                        stream_interval_ms=ServiceConfig().stream_interval_ms, spinning=ServiceConfig().spinning)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        servers: list[Server] = []
        try:
            http_socket = Path(tmp) / "openai.sock"
            server = Server(Path(tmp) / "default", bundle, lib, "--http-listen", f"unix:{http_socket}")
            servers.append(server)
            http = openai.OpenAI(base_url="http://localhost/v1", api_key="none", max_retries=0,
                                 http_client=httpx2.Client(transport=httpx2.HTTPTransport(uds=str(http_socket))))
            unpaced = Server(Path(tmp) / "unpaced", bundle, lib, "--stream-interval-ms", "0")
            servers.append(unpaced)
            clients = [EdgeClient(server.address) for _ in range(max(s.streams))]
            unpaced_client = EdgeClient(unpaced.address)
            config = ServiceConfig(bundle=bundle, memory_budget=BUDGET, custom_op_library=Path(lib) if lib else None)
            engine = Engine(bundle, config.engine_config())
            request = lambda: GenerationRequest(prompts[0], SamplingParams.model_card_default(False),
                                                max_tokens=s.new_tokens, ignore_eos=True)
            cpu = {"in-process engine": 0.0, "gRPC server": 0.0, "gRPC client": 0.0, "gRPC server, interval 0": 0.0,
                   "HTTP server": 0.0, "HTTP client": 0.0}

            def in_process() -> float:
                c0 = time.process_time()
                rate = s.new_tokens / timed(lambda: engine.generate(request()))
                cpu["in-process engine"] += time.process_time() - c0
                return rate

            def through_grpc(srv: Server, client: EdgeClient, server_key: str, client_key: str | None) -> float:
                c0, s0 = time.process_time(), srv.cpu_seconds()
                rate = _streams([client], prompts[:1], s.new_tokens)
                if client_key is not None:
                    cpu[client_key] += time.process_time() - c0
                cpu[server_key] += srv.cpu_seconds() - s0
                return rate

            def through_http() -> float:
                c0, s0 = time.process_time(), server.cpu_seconds()
                rate = _http_stream(http, prompts[0], s.new_tokens)
                cpu["HTTP client"] += time.process_time() - c0
                cpu["HTTP server"] += server.cpu_seconds() - s0
                return rate

            case.measure_interleaved({
                "in-process b1": ("tok/s", in_process),
                "gRPC 1 stream": ("tok/s", lambda: through_grpc(server, clients[0], "gRPC server", "gRPC client")),
                "gRPC 1 stream, interval 0": ("tok/s", lambda: through_grpc(unpaced, unpaced_client,
                                                                             "gRPC server, interval 0", None)),
                "HTTP 1 stream": ("tok/s", through_http),
            }, s.overhead_reps)
            tokens = (s.warmups + s.overhead_reps) * s.new_tokens
            case.details["cpu_ms_per_token"] = {k: round(v * 1000 / tokens, 3) for k, v in cpu.items()}
            del engine
            http.close()
            unpaced_client.close()
            unpaced.stop()
            for n in s.streams:
                if n > 1:
                    case.measure(f"gRPC {n} streams", "tok/s", lambda: _streams(clients[:n], prompts[:n], s.new_tokens), s.reps)
            for c in clients:
                c.close()
        finally:
            for srv in servers:
                srv.stop()
    case.ratio("in-process b1 / gRPC 1 stream", "in-process b1", "gRPC 1 stream", OVERHEAD_TARGET)
    case.ratio("in-process b1 / gRPC 1 stream, interval 0", "in-process b1", "gRPC 1 stream, interval 0")
    case.ratio("in-process b1 / HTTP 1 stream", "in-process b1", "HTTP 1 stream", OVERHEAD_TARGET)
    for n in s.streams:
        if n > 1:
            case.ratio(f"gRPC {n} streams / 1 stream", f"gRPC {n} streams", "gRPC 1 stream")
    return case.finish()
