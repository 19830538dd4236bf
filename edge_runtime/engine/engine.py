"""The generation engine: request -> scheduler -> model runner -> sampler -> output processing -> stream.

`Engine.step()` is one turn of that line: admit waiting requests into free state slots, run one decode
batch and one batch of prompt chunks, let each sequence's sampler chain choose its next token (its stages
force or mask, the rest is drawn), and turn committed tokens into events. A request is one `Sequence`
from submission to its `Final`. `start()` runs steps on a background
thread; tests may call `step()` directly. The memory plan sizes the state pool once at start-up, so
admission by free slot keeps the engine inside its budget by construction; with or without a budget, a
pool this machine's free memory cannot hold is refused, with a message, before it is allocated.

With a prefix cache (`EngineConfig.prefix_cache_bytes`, a share of the memory budget that the plan sets
aside before the slots), a sequence admitted to a slot starts from the longest cached prefix of its prompt, and the
prompt positions it asks for (`GenerationRequest.capture_at`) are snapshotted as its prefill passes them.

A request with a grammar (`GenerationRequest.grammar`, compiled by `Engine.grammars`) gets a grammar stage in
its sampler chain; its Final says how the constrained answer ended (`Final.grammar`), and an answer a token
limit cut off before its grammar was complete ends with an error that says so.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import psutil
from tokenizers import Tokenizer

from edge_runtime.bundle.reader import Bundle, BundleError, open_bundle
from edge_runtime.bundle.signature import TrustedKey, open_trusted_bundle
from edge_runtime.bundle.checks import is_int
from edge_runtime.bundle.memory_plan import MemoryPlan, plan_for_bundle
from edge_runtime.engine.grammar import GrammarCompiler, GrammarStage
from edge_runtime.engine.providers import ProviderConfig
from edge_runtime.engine.runner import OrtModelRunner
from edge_runtime.engine.output import OutputProcessor
from edge_runtime.engine.prefix_cache import CacheStats, PrefixCache
from edge_runtime.engine.records import (Delta, EngineUnavailableError, Event, Final, FinishReason,
                                         GenerationRequest, GrammarOutcome, RequestError, Usage)
from edge_runtime.engine.sampler import Choice, SamplerChain, SamplerState, choose
from edge_runtime.engine.scheduler import Scheduler, SchedulerConfig
from edge_runtime.engine.sequence import Sequence
from edge_runtime.engine.state_pool import StatePool
from edge_runtime.engine.thinking import ThinkingController
from edge_runtime.bundle.units import format_bytes

END_OF_TURN = "<SPECIAL_12>"
MAX_CAPTURES = 8  # prefix-cache snapshots one request may ask for


@dataclass
class EngineConfig:
    memory_budget: int | None = None  # bytes; None: bundle limits alone decide the slot count (if memory holds it)
    max_context: int | None = None  # per-sequence tokens (prompt + output); default: the bundle's limit
    max_batch: int | None = None  # sequences in one model call; default: the bundle's limit
    max_sequences: int | None = None  # sequences holding a slot at once (the budget may allow fewer); default: max_batch
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    providers: ProviderConfig = field(default_factory=ProviderConfig)
    verify_bundle: bool = True
    # Set: a bundle opened from a path must be signed by one of these, and its files are always verified.
    trusted_keys: tuple[TrustedKey, ...] = ()
    prefix_cache_bytes: int = 0  # the prefix cache's share of the memory (of the budget, when one is set); 0: no cache
    # With a budget and no prefix_cache_bytes: this fraction of what the budget leaves after the weights,
    # overhead and working memory goes to the cache (so a tight budget never fails for a default cache).
    prefix_cache_share: float = 0.0


@dataclass(frozen=True)
class EngineStatus:
    """A snapshot of what the engine holds and does, for status reports and metrics (read without a lock:
    each figure is current, together they may straddle a step)."""

    slots_total: int
    slots_busy: int
    queue_depth: int
    held_bytes: int  # weights, overhead, working memory, slots' state and prefix snapshots by the engine's own accounting
    working_bytes: int
    state_bytes_per_slot: int
    state_pool_bytes: int
    weight_bytes: int  # resident weights (with pre-packed copies) by the plan, else weights.bin's size
    steps: int
    tokens_generated: int
    decode_tokens_per_second: float
    prefix_cache: CacheStats | None = None  # None: no prefix cache


class Engine:
    def __init__(self, bundle: Bundle | str | Path, config: EngineConfig | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config or EngineConfig()
        self.bundle = bundle if isinstance(bundle, Bundle) else self._open(bundle)
        self.model_config = self.bundle.config
        self.clock = clock
        self.tokenizer = _tokenizer(self.bundle)
        cache_bytes = self.config.prefix_cache_bytes
        if not is_int(cache_bytes) or cache_bytes < 0:
            raise RequestError("prefix_cache_bytes", f"must be an integer >= 0, got {cache_bytes!r}")
        for name in ("memory_budget", "max_context", "max_batch", "max_sequences"):
            value = getattr(self.config, name)
            if value is not None and (not is_int(value) or value < 1):
                raise RequestError(name, f"must be a positive integer, got {value!r}")
        limits = self.bundle.limits
        self.max_context = min(self.config.max_context or limits["max_context"], limits["max_context"])
        self.max_rows = min(self.config.max_batch or limits["max_batch"], limits["max_batch"])
        slots = self.config.max_sequences or self.max_rows
        self.plan: MemoryPlan | None = None
        if not 0.0 <= self.config.prefix_cache_share < 1.0:
            raise RequestError("prefix_cache_share", f"must be in [0, 1), got {self.config.prefix_cache_share!r}")
        if self.config.memory_budget is not None:
            plan = lambda cache: plan_for_bundle(
                self.bundle, self.config.memory_budget, self.max_context, self.max_rows,
                prefill_chunk=self.config.scheduler.max_step_tokens, prefix_cache_bytes=cache,
                prepacked_copies=self.config.providers.prepacked_copies(self.bundle.weights["format"]))
            if not cache_bytes and self.config.prefix_cache_share:
                cache_bytes = int(plan(0).available_bytes * self.config.prefix_cache_share)
            self.plan = plan(cache_bytes)
            slots = min(self.plan.max_sequences, slots)
            if slots < 1:
                raise RequestError("memory_budget", f"no sequence of {self.max_context} tokens fits the budget")
        self.num_slots = slots
        self._check_memory()
        self.pool = StatePool(self.bundle.state_layout, slots, self.max_context, self.config.providers.state_device())
        self.runner = OrtModelRunner(self.bundle, self.pool, self.config.providers, self.max_rows)
        self.scheduler = Scheduler(self.config.scheduler, self.max_rows)
        self.cache: PrefixCache | None = None
        if cache_bytes:
            self.cache = PrefixCache(cache_bytes, self.bundle.identity.encode())
        self.eos_ids = set(self.model_config.eos_token_ids)
        if self.tokenizer is not None and self.tokenizer.token_to_id(END_OF_TURN) is not None:
            self.eos_ids.add(self.tokenizer.token_to_id(END_OF_TURN))
        self.grammars = (GrammarCompiler(self.tokenizer, self.model_config.vocab_size, self.eos_ids)
                         if self.tokenizer is not None else None)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._sequences: list[Sequence] = []
        self._accepting = True
        self._thread: threading.Thread | None = None
        self._stop = False
        self.steps = 0
        self.slot_moves = 0  # running sequences moved down into a finished one's slot (_compact)
        self.tokens_generated = 0
        self._decode_rate = _Rate()

    def _open(self, path: str | Path) -> Bundle:
        if self.config.trusted_keys:
            return open_trusted_bundle(path, self.config.trusted_keys)
        return open_bundle(path, verify=self.config.verify_bundle)

    def _check_memory(self) -> None:
        """Refuse a state pool and logits buffers that the memory available now cannot hold. (The weights are
        mapped from their file, not allocated; a budget's plan counts them.)"""
        need = StatePool.planned_bytes(self.bundle.state_layout, self.num_slots, self.max_context) \
            + OrtModelRunner.logits_bytes(self.model_config.vocab_size, self.max_rows)
        available = psutil.virtual_memory().available
        if need > available:
            raise RequestError("memory", (
                f"{self.num_slots} sequence(s) of {self.max_context} tokens in calls of {self.max_rows} need "
                f"{format_bytes(need)} of state and buffers; {format_bytes(available)} is available: lower "
                "max_context, max_batch or max_sequences, or set a memory budget"))

    # ---- submission ---------------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, on_event: Callable[[Event], None] | None = None) -> Sequence:
        """Validate and queue a request; the returned Sequence is the caller's handle on it."""
        self._validate(request)
        stop_ids = frozenset(request.stop_token_ids) | (frozenset() if request.ignore_eos else frozenset(self.eos_ids))
        thinking = None
        if request.thinking is not None:
            if self.tokenizer is None:
                raise RequestError("thinking", "this bundle has no tokenizer; thinking budgets need one")
            thinking = ThinkingController(self.tokenizer, request.thinking, stop_ids,
                                          clock=lambda: self.clock() * 1000.0)
        grammar = None
        if request.grammar is not None:
            grammar = GrammarStage(request.grammar, stop_ids, self.eos_ids)
            if thinking is not None and thinking.config.enabled and not grammar.fits(thinking.forced_answer_ids):
                raise RequestError("thinking_close_text", f"its text after </think> "
                                   f"({request.thinking.close_text!r}) does not fit the answer's grammar")
        seq = Sequence(
            request=request,
            chain=SamplerChain(SamplerState.create(request.sampling, request.prompt_ids), thinking, stop_ids, grammar),
            output=OutputProcessor(self.tokenizer, request.prompt_ids, request.stop_strings, request.tool_names),
            max_tokens=request.max_tokens if request.max_tokens is not None
            else self.max_context - len(request.prompt_ids),
            submitted=self.clock(),
            on_event=on_event,
        )
        with self._wake:
            if not self._accepting:
                raise EngineUnavailableError("the engine is draining and accepts no new requests")
            self.scheduler.enqueue(seq, free_slots=self.pool.free_slots)
            self._sequences.append(seq)
            self._wake.notify()
        return seq

    def _validate(self, r: GenerationRequest) -> None:
        vocab = self.model_config.vocab_size
        if not r.prompt_ids:
            raise RequestError("prompt", "is empty")
        if len(r.prompt_ids) >= self.max_context:
            raise RequestError("prompt", f"{len(r.prompt_ids)} tokens leave no room in the context limit of {self.max_context}")
        bad = next((t for t in r.prompt_ids if not 0 <= int(t) < vocab), None)
        if bad is not None:
            raise RequestError("token_ids", f"id {bad} is outside the vocabulary [0, {vocab})")
        if len(r.capture_at) > MAX_CAPTURES or any(not is_int(n) or not 1 <= n <= len(r.prompt_ids) for n in r.capture_at):
            raise RequestError("capture_at", f"at most {MAX_CAPTURES} positions within the prompt's "
                                             f"{len(r.prompt_ids)} tokens, got {list(r.capture_at)[:MAX_CAPTURES + 1]}")
        if r.max_tokens is not None and (not is_int(r.max_tokens) or r.max_tokens < 1):
            raise RequestError("max_tokens", f"must be at least 1, got {r.max_tokens}")
        bad = next((t for t in r.stop_token_ids if not 0 <= int(t) < vocab), None)
        if bad is not None:
            raise RequestError("stop_token_ids", f"id {bad} is outside the vocabulary [0, {vocab})")
        if r.grammar is not None and r.grammar.vocab_size != vocab:
            raise RequestError("grammar", f"was compiled for a vocabulary of {r.grammar.vocab_size}, not {vocab}")
        try:
            r.sampling.validate()
        except ValueError as e:
            raise RequestError("sampling", str(e)) from None

    # ---- the step -----------------------------------------------------------------------------------------

    def has_work(self) -> bool:
        return bool(self._sequences)

    def step(self) -> bool:
        """One engine turn. Returns False when there was nothing to do."""
        with self._lock:
            self._reap_cancelled_and_expired()
            self._admit()
            self._compact()
            plan = self.scheduler.plan()
        if not plan:
            return False
        fresh: list[tuple[Sequence, np.ndarray]] = []
        for start in range(0, len(plan.decode), self.max_rows):  # more sequences than rows take turns
            seqs = plan.decode[start:start + self.max_rows]
            logits = self._run_batch(seqs, lambda: self.runner.decode(
                [s.slot for s in seqs], [s.next_token for s in seqs], [s.computed for s in seqs]))
            if logits is not None:
                last_call = start + self.max_rows >= len(plan.decode)  # else the next call reuses the buffer
                for k, s in enumerate(seqs):
                    s.computed += 1
                    fresh.append((s, logits[k] if last_call else logits[k].copy()))
                self._decode_rate.add(len(seqs), self.clock())
        if plan.prefill:
            seqs = [s for s, _ in plan.prefill]
            chunks = [s.tokens[s.computed:s.computed + n] for s, n in plan.prefill]
            logits = self._run_batch(seqs, lambda: self.runner.prefill(
                [s.slot for s in seqs], chunks, [s.computed for s in seqs]))
            if logits is not None:
                for k, (s, n) in enumerate(plan.prefill):
                    s.computed += n
                    if s.captures and s.captures[0] == s.computed:
                        self._capture(s)
                    if not s.prefilling:
                        fresh.append((s, logits[k]))
        self._choose_and_commit(fresh)
        self.steps += 1
        return True

    def _run_batch(self, seqs: list[Sequence], call: Callable[[], np.ndarray]) -> np.ndarray | None:
        try:
            return call()
        except Exception as e:  # a failed model call ends its batch, never the engine
            for s in seqs:
                self._finish(s, FinishReason.ERROR, error=f"model call failed: {e}")
            return None

    def _choose_and_commit(self, fresh: list[tuple[Sequence, np.ndarray]]) -> None:
        if not fresh:
            return
        try:
            choices = choose([row for _, row in fresh], [s.chain for s, _ in fresh])
        except Exception as e:  # a bad row fails its batch's sampling, never the engine
            for s, _ in fresh:
                self._finish(s, FinishReason.ERROR, error=f"sampling failed: {type(e).__name__}: {e}")
            return
        now = self.clock()
        for (s, _), choice in zip(fresh, choices):
            try:
                self._commit(s, choice, now)
            except Exception as e:  # one sequence's failure never stops the others
                self._finish(s, FinishReason.ERROR, error=f"{type(e).__name__}: {e}")

    def _commit(self, s: Sequence, choice: Choice, now: float) -> None:
        if choice.error is not None:
            return self._finish(s, FinishReason.ERROR, error=choice.error)
        if s.last_token is None:
            s.timings.time_to_first_token_ms = (now - s.submitted) * 1000
        else:
            s.timings.token_latencies_ms.append((now - s.last_token) * 1000)
        s.last_token = now
        token = choice.token_id
        s.generated.append(token)
        self.tokens_generated += 1
        accepted = s.chain.accept(token)
        if accepted.stops:  # counted and streamed as an id, never as text
            s.emit(Delta("", accepted.channel, [token], [choice.logprobs] if choice.logprobs is not None else []))
            return self._finish(s, FinishReason.STOP)
        for event in s.output.push(token, accepted.channel, choice.logprobs):
            s.emit(event)
        s.tokens.append(token)
        if s.output.stopped_by is not None:
            return self._finish(s, FinishReason.STOP_SEQUENCE)
        limit = self._length_limit(s)
        if limit is not None:
            return self._finish(s, FinishReason.LENGTH, limit=limit)
        s.next_token = token

    def _length_limit(self, s: Sequence) -> str | None:
        """The token limit that ends `s` now, if one does."""
        if s.chain.exhausted:
            return "max_answer_tokens"
        if len(s.generated) >= s.max_tokens:
            return "max_tokens"
        return "the context limit" if len(s.tokens) >= self.max_context else None

    # ---- admission, cancellation, completion ----------------------------------------------------------------

    def _admit(self) -> None:
        while self.pool.free_slots and self.scheduler.peek_waiting() is not None:
            s = self.scheduler.pop_waiting()
            s.slot = self.pool.allocate()
            s.timings.queue_wait_ms = (self.clock() - s.submitted) * 1000
            if self.cache is not None and s.request.prefix_cache:
                self._start_from_cache(s)
            self.scheduler.running.append(s)

    def _compact(self) -> None:
        """Keep the running sequences' slots consecutive from 0. The runner makes one call per run of
        consecutive slots, each a read of all the weights, so a hole left by a finished sequence would split
        every decode step until a new request filled it. _admit has run, so a free slot means no request is
        waiting for one: the topmost sequence moves down into the hole (a copy of its state on the device)."""
        while self.scheduler.running:
            top = max(self.scheduler.running, key=lambda s: s.slot)
            hole = self.pool.lowest_free()
            if hole is None or hole > top.slot:
                return
            top.slot = self.pool.move(top.slot, top.computed)
            self.slot_moves += 1

    def _start_from_cache(self, s: Sequence) -> None:
        """Copy the longest cached prefix of the prompt into the slot (one token is always left to prefill: its
        logits choose the first token), and plan the snapshots the request asked for beyond it."""
        snap = self.cache.lookup(s.request.prompt_ids, s.prompt_len - 1)
        if snap is not None:
            self.pool.restore(s.slot, snap.state)
            s.computed = s.cached = snap.length
        s.captures = sorted({n for n in s.request.capture_at if n > s.computed})

    def _capture(self, s: Sequence) -> None:
        n = s.captures.pop(0)
        self.cache.insert(s.tokens[:n], self.pool.snapshot_nbytes(n), lambda: self.pool.snapshot(s.slot, n),
                          pinned=s.request.pin_captures)

    def _reap_cancelled_and_expired(self) -> None:
        now = self.clock()
        for s in list(self._sequences):
            deadline = s.request.deadline
            if s.cancelled:
                self._finish(s, FinishReason.CANCELLED, locked=True)
            elif deadline is not None and now >= deadline:
                self._finish(s, FinishReason.DEADLINE, error="deadline exceeded", locked=True)

    def _finish(self, s: Sequence, reason: FinishReason, error: str | None = None, locked: bool = False,
                limit: str | None = None) -> None:
        """End `s` with `reason`; `limit`: the token limit that ended it (LENGTH)."""
        if s.done:
            return
        grammar = s.chain.grammar
        outcome = None
        if grammar is not None:
            outcome = (GrammarOutcome.FAILED if grammar.error else GrammarOutcome.COMPLETE if grammar.complete
                       else GrammarOutcome.CUT_OFF if reason is FinishReason.LENGTH else GrammarOutcome.UNFINISHED)
            if outcome is GrammarOutcome.CUT_OFF:
                error = (f"{limit} ended the answer before it was complete: its tool call or response format is "
                         f"unfinished ({grammar.tokens} answer token(s) written)" if grammar.tokens else
                         f"{limit} ended the request before its constrained answer began")
        if reason not in (FinishReason.CANCELLED, FinishReason.DEADLINE, FinishReason.ERROR):
            for event in s.output.finish(cut_off=error if outcome is GrammarOutcome.CUT_OFF else None):
                s.emit(event)
        if locked:
            self._release(s)
        else:
            with self._lock:
                self._release(s)
        thinking = s.chain.thinking
        usage = Usage(prompt_tokens=s.prompt_len, cached_prompt_tokens=s.cached)
        if thinking is not None:
            usage.reasoning_tokens, usage.answer_tokens, usage.forced_tokens = \
                thinking.reasoning_tokens, thinking.answer_tokens, thinking.forced_tokens
        else:
            usage.answer_tokens = len(s.generated)
        s.timings.total_ms = (self.clock() - s.submitted) * 1000
        s.emit(Final(
            finish_reason=reason, usage=usage, timings=s.timings,
            thinking_ended_by=thinking.ended_by if thinking is not None else None, token_ids=list(s.generated),
            reasoning_text=s.output.reasoning_text, answer_text=s.output.answer_text,
            tool_calls=list(s.output.tool_calls), error=error, grammar=outcome,
        ))

    def _release(self, s: Sequence) -> None:
        if s.slot is not None:
            if s in self.scheduler.running:
                self.scheduler.running.remove(s)
                self.pool.release(s.slot)
        else:
            self.scheduler.remove_waiting(s)
        if s in self._sequences:
            self._sequences.remove(s)

    # ---- running ------------------------------------------------------------------------------------------

    def run_until_done(self, sequences: list[Sequence] | None = None) -> None:
        """Step on the caller's thread until `sequences` (default: everything) are finished."""
        while (any(not s.done for s in sequences) if sequences else self.has_work()):
            self.step()

    def generate(self, request: GenerationRequest) -> Final:
        seq = self.submit(request)
        if self._thread is None:
            self.run_until_done([seq])
        return seq.wait()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="nemotron-edge-engine", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stop and not self._sequences:
                    self._wake.wait(0.5)
                if self._stop:
                    return
            try:
                self.step()
            except Exception as e:  # a bug in one step must not silently kill the service: fail what runs
                for s in list(self._sequences):
                    self._finish(s, FinishReason.ERROR, error=f"engine step failed: {type(e).__name__}: {e}")

    @property
    def alive(self) -> bool:
        """The engine thread is running (always True when steps are driven by the caller)."""
        return self._thread is None or self._thread.is_alive()

    def stop_accepting(self) -> None:
        with self._lock:
            self._accepting = False

    def shutdown(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for s in list(self._sequences):
            self._finish(s, FinishReason.CANCELLED, error="engine shut down")

    def wake(self) -> None:
        with self._wake:
            self._wake.notify()

    # ---- status -------------------------------------------------------------------------------------------

    def status(self) -> EngineStatus:
        busy = self.slots_busy  # read once: the engine thread frees slots meanwhile, and the figures must agree
        plan = self.plan
        return EngineStatus(
            slots_total=self.num_slots, slots_busy=busy, queue_depth=self.queue_depth, held_bytes=self.held_bytes,
            working_bytes=self.working_bytes, state_bytes_per_slot=self.pool.slot_nbytes,
            state_pool_bytes=self.pool.nbytes,
            weight_bytes=plan.resident_weight_bytes if plan else self.runner.weights.nbytes,
            steps=self.steps, tokens_generated=self.tokens_generated,
            decode_tokens_per_second=self.decode_tokens_per_second(),
            prefix_cache=replace(self.cache.stats) if self.cache is not None else None,
        )

    @property
    def slots_busy(self) -> int:
        return self.num_slots - self.pool.free_slots

    @property
    def queue_depth(self) -> int:
        return self.scheduler.queue_depth

    def decode_tokens_per_second(self) -> float:
        return self._decode_rate.rate(self.clock())

    @property
    def working_bytes(self) -> int:
        """Working memory held for model calls: the plan's prefill working memory and each row's decode
        working memory (0 without a plan: unaccounted)."""
        if self.plan is None:
            return 0
        rows = self.plan.rows(self.num_slots)
        return self.plan.prefill_working_bytes + rows * self.plan.decode_working_bytes_per_sequence

    @property
    def held_bytes(self) -> int:
        """Everything the engine holds by its own accounting: weights (with their pre-packed copies) and
        runtime overhead from the plan, working memory, and the slots' state. The plan sized the slots so
        that this is at most `plan.total_bytes(num_slots, context)`, hence within the budget."""
        plan = self.plan
        base = plan.resident_weight_bytes + plan.overhead_bytes if plan else self.runner.weights.nbytes
        cached = self.cache.stats.bytes if self.cache is not None else 0
        return base + self.working_bytes + self.pool.nbytes + cached


def _tokenizer(bundle: Bundle) -> Tokenizer | None:
    path = bundle.tokenizer_file("tokenizer.json")
    if path is None:
        return None
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library raises plain Exceptions for a file it cannot read
        raise BundleError(f"{path}: not a tokenizer ({e})") from None


class _Rate:
    """Tokens per second over a sliding window of recent steps."""

    def __init__(self, window_s: float = 10.0):
        self.window = window_s
        self.samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, n: int, now: float) -> None:
        self.samples.append((now, n))
        while now - self.samples[0][0] > self.window:
            self.samples.popleft()

    def rate(self, now: float) -> float:
        recent = [(t, k) for t, k in self.samples if now - t <= self.window]
        if len(recent) < 2:
            return 0.0
        span = recent[-1][0] - recent[0][0]
        return sum(k for _, k in recent[1:]) / span if span > 0 else 0.0
