"""Prometheus metrics of the service, on an optional loopback-only HTTP port.

A private `CollectorRegistry` (not prometheus_client's global one) holds them, so two servers in one
process (tests) never collide. Gauges that mirror engine state (queue depth, slots, memory) are read live at
scrape time, all from one engine status snapshot per scrape (`_EngineGauges`); counters and histograms are
fed by the gRPC servicer when a request ends.

    nemotron_edge_requests_total{rpc, outcome}   outcome: a finish reason (stop, length, stop_sequence,
                                                 cancelled, error) or a refused call's gRPC code, lowercase
    nemotron_edge_generated_tokens_total{channel} reasoning | answer | forced
    nemotron_edge_queue_depth, nemotron_edge_slots_busy, nemotron_edge_slots_total
    nemotron_edge_memory_bytes{kind}             budget, planned (weights + working + overhead + state pool),
                                                 state_pool, process_rss
    nemotron_edge_time_to_first_token_seconds, nemotron_edge_token_latency_seconds,
    nemotron_edge_queue_wait_seconds             histograms
    nemotron_edge_stage_seconds{stage}           histogram: the work a call needs before the engine takes it,
                                                 stage by stage: render (the chat template), tokenize, submit;
                                                 its _count is the stages that ended
    nemotron_edge_stages_running{stage}          stages running now (started = running + ended)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from edge_runtime.engine.engine import EngineStatus
from edge_runtime.engine.records import Final

log = logging.getLogger(__name__)

# Seconds. TTFT spans a prefill of a few tokens (tens of ms) to a long prompt behind a queue (many s).
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Per-token latency of a 9B model on a Thor sits around 20-100 ms; a tiny test model far below.
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)
_QUEUE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# A stage renders or tokenizes at most a context's worth of text: well under a millisecond to seconds.
_STAGE_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class _EngineGauges:
    """The gauges that mirror the engine and the process, as one collector: a scrape builds one EngineStatus
    snapshot for all of them, not one per gauge, so its figures also agree with each other. Until `status` is
    set (the model loading) the engine's gauges read 0 and memory has process_rss only."""

    def __init__(self) -> None:
        self.status: Callable[[], EngineStatus] | None = None
        self.budget_bytes = 0
        self._process = psutil.Process()

    @staticmethod
    def describe() -> tuple[GaugeMetricFamily, ...]:
        """The families without samples: the registry learns their names from these without a scrape."""
        return (GaugeMetricFamily("nemotron_edge_queue_depth", "Requests waiting for a slot"),
                GaugeMetricFamily("nemotron_edge_slots_busy", "Sequence slots decoding now"),
                GaugeMetricFamily("nemotron_edge_slots_total", "Sequence slots in the state pool"),
                GaugeMetricFamily("nemotron_edge_memory_bytes", "Memory by kind (plan figures and process RSS)",
                                  labels=["kind"]),
                GaugeMetricFamily("nemotron_edge_prefix_cache", "Prefix cache: snapshots held (entries, bytes) and "
                                  "what they did (hits, misses, tokens_saved, evictions, skipped)", labels=["figure"]))

    def collect(self) -> tuple[GaugeMetricFamily, ...]:
        queue_depth, slots_busy, slots_total, memory, cache = families = self.describe()
        memory.add_metric(["process_rss"], self._process.memory_info().rss)
        if self.status is None:
            for family in (queue_depth, slots_busy, slots_total):
                family.add_metric([], 0)
            return families
        status = self.status()
        queue_depth.add_metric([], status.queue_depth)
        slots_busy.add_metric([], status.slots_busy)
        slots_total.add_metric([], status.slots_total)
        memory.add_metric(["budget"], self.budget_bytes)
        memory.add_metric(["planned"], status.held_bytes)
        memory.add_metric(["state_pool"], status.state_pool_bytes)
        if status.prefix_cache is not None:
            memory.add_metric(["prefix_cache"], status.prefix_cache.bytes)
            for figure in ("entries", "bytes", "hits", "misses", "tokens_saved", "evictions", "skipped"):
                cache.add_metric([figure], getattr(status.prefix_cache, figure))
        return families


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("nemotron_edge_requests", "Requests by RPC and how they ended",
                                ["rpc", "outcome"], registry=r)
        self.tokens = Counter("nemotron_edge_generated_tokens", "Output tokens generated, by channel",
                              ["channel"], registry=r)
        self.constrained = Counter("nemotron_edge_constrained_answers",
                                   "Answers constrained by a grammar (tool calls, response_format), by how they "
                                   "ended: complete, cut_off (a token limit came first), failed, unfinished",
                                   ["outcome"], registry=r)
        self._engine_gauges = _EngineGauges()
        r.register(self._engine_gauges)
        self.ttft = Histogram("nemotron_edge_time_to_first_token_seconds", "Arrival to first output token",
                              buckets=_TTFT_BUCKETS, registry=r)
        self.token_latency = Histogram("nemotron_edge_token_latency_seconds",
                                       "Time between consecutive output tokens", buckets=_TOKEN_BUCKETS,
                                       registry=r)
        self.queue_wait = Histogram("nemotron_edge_queue_wait_seconds", "Arrival to admission into the batch",
                                    buckets=_QUEUE_BUCKETS, registry=r)
        self.stage_seconds = Histogram("nemotron_edge_stage_seconds", "Time of each stage of preparing a call",
                                       ["stage"], buckets=_STAGE_BUCKETS, registry=r)
        self.stages_running = Gauge("nemotron_edge_stages_running", "Stages of preparing a call running now",
                                    ["stage"], registry=r)
        self._http = None

    def attach(self, status: Callable[[], EngineStatus], budget_bytes: int) -> None:
        """Start reading the live gauges from a loaded engine's status snapshots, one per scrape."""
        self._engine_gauges.budget_bytes = budget_bytes
        self._engine_gauges.status = status

    def finished(self, rpc: str, final: Final) -> None:
        """A stream ended with a Final record."""
        self.requests.labels(rpc=rpc, outcome=final.finish_reason).inc()
        if final.grammar is not None:
            self.constrained.labels(outcome=final.grammar).inc()
        u = final.usage
        for channel, n in (("reasoning", u.reasoning_tokens), ("answer", u.answer_tokens), ("forced", u.forced_tokens)):
            if n:
                self.tokens.labels(channel=channel).inc(n)
        t = final.timings
        if final.token_ids:
            self.ttft.observe(t.time_to_first_token_ms / 1000)
        for ms in t.token_latencies_ms:
            self.token_latency.observe(ms / 1000)
        self.queue_wait.observe(t.queue_wait_ms / 1000)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Count and time one stage of preparing a call while it runs."""
        with self.stages_running.labels(stage=name).track_inprogress(), self.stage_seconds.labels(stage=name).time():
            yield

    def refused(self, rpc: str, code_name: str) -> None:
        """A call answered with an error status (name as grpc.StatusCode.name, e.g. INVALID_ARGUMENT)."""
        self.requests.labels(rpc=rpc, outcome=code_name.lower()).inc()

    def serve_http(self, port: int) -> None:
        """Serve /metrics on 127.0.0.1:`port` only: the figures reveal load and timing, nothing for the LAN."""
        self._http, _thread = start_http_server(port, addr="127.0.0.1", registry=self.registry)
        log.info("metrics on http://127.0.0.1:%d/metrics", port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
