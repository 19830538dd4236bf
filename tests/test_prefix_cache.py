"""The prefix state cache: snapshots found by the exact token ids of their prefix, bit-identical state,
the same generation as from scratch, kept within their budget (issue 21)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edge_runtime.bundle.reader import open_bundle
from edge_runtime.engine.engine import Engine, EngineConfig
from edge_runtime.engine.prefix_cache import BLOCK, PrefixCache
from edge_runtime.engine.providers import ProviderConfig
from edge_runtime.engine.records import GenerationRequest, RequestError, SamplingParams
from edge_runtime.engine.runner import OrtModelRunner
from edge_runtime.engine.scheduler import SchedulerConfig
from edge_runtime.engine.state_copy import DeviceCopier, Range, identity_model
from edge_runtime.engine.state_pool import StatePool
from edge_runtime.engine.token_ids import encode

GREEDY = SamplingParams(greedy=True, logprobs=3)


def ids(seed: int, n: int, vocab: int = 1000) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(5, vocab, n)]


# ---- the cache on its own ------------------------------------------------------------------------------------


def _put(cache: PrefixCache, tokens: list[int], nbytes: int = 10, pinned: bool = False):
    return cache.insert(tokens, nbytes, lambda: {"s": np.asarray(tokens[-1:])}, pinned=pinned)


@pytest.mark.parametrize("lengths", [(5, 40), (BLOCK, BLOCK + 1), (BLOCK - 1, 3 * BLOCK + 7), (2 * BLOCK, 150)])
def test_the_longest_cached_prefix_within_the_limit_is_found(lengths):
    cache = PrefixCache(10**6, b"bundle")
    prompt = ids(0, 400)
    for n in lengths:
        _put(cache, prompt[:n])
    short, long = lengths
    assert cache.lookup(prompt, limit=len(prompt)).length == long
    assert cache.lookup(prompt, limit=long).length == long
    assert cache.lookup(prompt, limit=long - 1).length == short
    assert cache.lookup(prompt, limit=short - 1) is None
    other = list(prompt)
    other[short - 1] += 1  # differs inside the shorter prefix: neither matches
    assert cache.lookup(other, limit=len(other)) is None
    other = list(prompt)
    other[long - 1] += 1  # differs in the last token of the longer one only
    assert cache.lookup(other, limit=len(other)).length == short
    assert (cache.stats.hits, cache.stats.misses) == (4, 2)
    assert cache.stats.tokens_saved == 2 * long + 2 * short


def test_a_snapshot_of_another_bundle_never_matches():
    prompt = ids(1, 100)
    cache = PrefixCache(10**6, b"bundle-a")
    _put(cache, prompt[:80])
    assert cache.lookup(prompt, 100) is not None
    other = PrefixCache(10**6, b"bundle-b")
    other._filed = cache._filed  # the same entries, looked up under another bundle's chain
    assert other.lookup(prompt, 100) is None


def test_snapshots_stay_within_the_budget_least_recently_used_first_and_pinned_never_go():
    cache = PrefixCache(30, b"b")
    a, b, c, d = (ids(s, 20) for s in range(4))
    _put(cache, a, pinned=True)
    _put(cache, b)
    _put(cache, c)
    assert cache.stats.bytes == 30 and cache.stats.entries == 3
    assert cache.lookup(b + [1], 21) is not None  # b is now more recent than c
    _put(cache, d)
    assert cache.lookup(c + [1], 21) is None and cache.stats.evictions == 1
    assert all(cache.lookup(x + [1], 21) is not None for x in (a, b, d))
    taken = []
    assert cache.insert(ids(9, 20), 21, lambda: taken.append(1) or {}) is None  # 10 pinned + 21 > 30
    assert not taken and cache.stats.skipped == 1 and cache.stats.bytes == 30
    assert _put(cache, a) is not None and cache.stats.entries == 3  # held already: not copied again


# ---- state snapshots on a real pool and runner ---------------------------------------------------------------


def test_the_device_copy_graph_is_valid_onnx_and_copies_ranges_by_address():
    model = onnx.load_from_string(identity_model([np.dtype(np.float32), np.dtype(np.float16)]))
    onnx.checker.check_model(model, full_check=True)
    a, b = np.arange(10, dtype=np.float32), np.zeros(10, np.float32)
    c, d = np.arange(6, dtype=np.float16), np.zeros(6, np.float16)
    copier = DeviceCopier("cpu", 0, [np.float32, np.float16])
    copier.copy([Range(a.ctypes.data + 8, 5, a.dtype), Range(c.ctypes.data, 6, c.dtype)],
                [Range(b.ctypes.data + 4, 5, b.dtype), Range(d.ctypes.data, 6, d.dtype)])
    np.testing.assert_array_equal(b, [0, 2, 3, 4, 5, 6, 0, 0, 0, 0])
    np.testing.assert_array_equal(d, c)
    with pytest.raises(ValueError, match="range 1 is 5 x float16 to 6 x float16"):
        copier.copy([Range(a.ctypes.data, 5, a.dtype), Range(c.ctypes.data, 5, c.dtype)],
                    [Range(b.ctypes.data, 5, b.dtype), Range(d.ctypes.data, 6, d.dtype)])


@pytest.mark.parametrize("fixture", ["tiny_bundle", "tiny_int4_bundle"])
def test_a_restored_snapshot_gives_the_logits_of_the_uninterrupted_run_bit_for_bit(fixture, request):
    bundle = open_bundle(request.getfixturevalue(fixture))
    pool = StatePool(bundle.state_layout, 3, 256)
    runner = OrtModelRunner(bundle, pool, ProviderConfig(), max_rows=1)
    prompt, n = ids(2, 90), 70
    runner.prefill([0], [prompt[:n]], [0])
    reference = runner.prefill([0], [prompt[n:]], [n]).copy()
    runner.prefill([1], [prompt[:n]], [0])
    snap = pool.snapshot(1, n)
    assert snap.nbytes == pool.snapshot_nbytes(n) == sum(v.tensor_size_in_bytes() for v in snap.values.values())
    runner.prefill([2], [ids(3, 100)], [0])  # the slot holds another sequence's state before the restore
    pool.restore(2, snap)
    np.testing.assert_array_equal(runner.prefill([2], [prompt[n:]], [n]), reference)
    for k in range(4):  # and decoding on goes on identically
        token = int(np.argmax(reference[0])) + k
        a = runner.decode([0], [token], [len(prompt) + k]).copy()
        np.testing.assert_array_equal(runner.decode([2], [token], [len(prompt) + k]), a)


# ---- through the engine --------------------------------------------------------------------------------------


def _engine(bundle, cache_bytes: int = 64 << 20, chunk: int = 256) -> Engine:
    return Engine(bundle, EngineConfig(prefix_cache_bytes=cache_bytes, scheduler=SchedulerConfig(prefill_chunk=chunk)))


def _run(engine: Engine, prompt: list[int], **kw):
    return engine.generate(GenerationRequest(prompt, GREEDY, max_tokens=64, ignore_eos=True, **kw))


@pytest.mark.parametrize("fixture", ["tiny_bundle", "tiny_int4_bundle"])
def test_a_request_from_a_snapshot_generates_what_it_would_from_scratch(fixture, request):
    bundle = request.getfixturevalue(fixture)
    system, n = ids(4, 100), 100
    first, second = system + ids(5, 20), system + ids(6, 30)
    cached = _engine(bundle)
    warm = _run(cached, first, capture_at=(n,))
    assert warm.usage.cached_prompt_tokens == 0 and cached.status().prefix_cache.entries == 1
    seq = cached.submit(GenerationRequest(second, GREEDY, max_tokens=64, ignore_eos=True))
    cached.run_until_done([seq])
    hit = seq.wait()
    assert hit.usage.cached_prompt_tokens == n
    # From scratch with a chunk boundary at the same position: the same logits, so the same log-probabilities.
    bounded = Engine(bundle, EngineConfig(scheduler=SchedulerConfig(prefill_chunk=n)))
    ref_seq = bounded.submit(GenerationRequest(second, GREEDY, max_tokens=64, ignore_eos=True))
    bounded.run_until_done([ref_seq])
    assert hit.token_ids == ref_seq.wait().token_ids
    assert _deltas_logprobs(seq) == _deltas_logprobs(ref_seq)
    # From scratch in one chunk: the same 64 greedy tokens.
    assert hit.token_ids == _run(_engine(bundle, cache_bytes=0), second).token_ids
    status = cached.status().prefix_cache
    assert (status.hits, status.tokens_saved) == (1, n)


def _deltas_logprobs(seq) -> list:
    return [(lp.token_id, lp.logprob, lp.top) for e in seq.events() for lp in getattr(e, "logprobs", [])]


def test_concurrent_requests_sharing_a_cached_prefix_never_see_each_others_state(tiny_bundle):
    system = ids(7, 80)
    prompts = [system + ids(10 + k, 5 + 7 * k) for k in range(4)]
    alone = [_run(_engine(tiny_bundle, cache_bytes=0), p).token_ids for p in prompts]
    engine = _engine(tiny_bundle)
    _run(engine, system + [9], capture_at=(len(system),))
    seqs = [engine.submit(GenerationRequest(p, GREEDY, max_tokens=64, ignore_eos=True)) for p in prompts]
    engine.run_until_done(seqs)
    assert [s.wait().token_ids for s in seqs] == alone
    assert [s.wait().usage.cached_prompt_tokens for s in seqs] == [len(system)] * 4


def test_the_cache_can_be_bypassed_per_request_and_captures_are_checked(tiny_bundle):
    engine = _engine(tiny_bundle)
    prompt = ids(8, 50)
    _run(engine, prompt, capture_at=(40,))
    assert _run(engine, prompt, prefix_cache=False).usage.cached_prompt_tokens == 0
    assert _run(engine, prompt).usage.cached_prompt_tokens == 40
    for bad in ((0,), (51,), tuple(range(1, 11))):
        with pytest.raises(RequestError, match="capture_at"):
            engine.submit(GenerationRequest(prompt, GREEDY, capture_at=bad))
    with pytest.raises(RequestError, match="prefix_cache_bytes"):
        Engine(tiny_bundle, EngineConfig(prefix_cache_bytes=-1))


def test_snapshots_count_in_what_the_engine_holds_and_a_full_cache_skips_captures(tiny_bundle):
    probe = _engine(tiny_bundle)
    one = probe.pool.snapshot_nbytes(60)
    engine = _engine(tiny_bundle, cache_bytes=one + one // 2)
    before = engine.status().held_bytes
    _run(engine, ids(11, 70), capture_at=(60,), pin_captures=True)
    assert engine.status().held_bytes == before + one
    _run(engine, ids(12, 70), capture_at=(60,))
    stats = engine.status().prefix_cache
    assert (stats.entries, stats.skipped, stats.bytes) == (1, 1, one)


# ---- chat: where a conversation is snapshotted -------------------------------------------------------------

SYSTEM = {"role": "system", "content": "You are the assistant of a two-armed mobile robot. Answer briefly."}


def _chat(chat, messages, **kw):
    from edge_runtime.engine.chat import ChatRequest

    seq = chat.submit(ChatRequest(messages=messages, sampling={"temperature": 0.0}, max_tokens=48, **kw))
    chat.engine.run_until_done([seq])
    return seq.wait()


def _prefix_len(chat, messages, **kw) -> int:
    text = chat.template.render(messages, add_generation_prompt=False, **kw)
    return len(encode(chat.engine.tokenizer, text))


def test_the_next_turn_of_a_conversation_prefills_only_what_is_new():
    from edge_runtime.bundle.demo import DEMO_BUNDLE
    from edge_runtime.engine.chat import Chat

    chat = Chat(_engine(DEMO_BUNDLE))
    turn = [SYSTEM, {"role": "user", "content": "The robot drives at 2 meters per second. How far is 8 meters?"}]
    first = _chat(chat, turn)
    assert first.usage.cached_prompt_tokens == 0
    turn = turn + [{"role": "assistant", "content": first.answer_text},
                   {"role": "user", "content": "And 12 meters?"}]
    second = _chat(chat, turn)
    # Everything up to the first turn's generation prompt came from the cache: its reasoning is not in the
    # history, so the prefix the first turn rendered is a token prefix of the second's prompt.
    assert second.usage.cached_prompt_tokens == _prefix_len(chat, turn[:2]) > 0
    # Asked with a new question and the same system prompt: the system part and the user header are cached.
    other = [SYSTEM, {"role": "user", "content": "Which arm is closer?"}]
    text = chat.template.render(other, add_generation_prompt=True)
    head = len(encode(chat.engine.tokenizer, text[:text.index("Which arm")]))
    assert _chat(chat, other).usage.cached_prompt_tokens == head
    # The template takes /no_think out of the message and changes only the generation prompt, after the
    # snapshot: the text before it is token-identical, so it matches, and the answer is the uncached one.
    off = [SYSTEM, {"role": "user", "content": "Which arm is closer? /no_think"}]
    hit = _chat(chat, off)
    assert hit.usage.cached_prompt_tokens == _prefix_len(chat, other) and hit.reasoning_text == ""
    assert hit.token_ids == _chat(chat, off, prefix_cache=False).token_ids
    # And a request may keep out of the cache altogether.
    assert _chat(chat, turn, prefix_cache=False).usage.cached_prompt_tokens == 0


def test_the_memory_plan_sets_the_cache_share_aside_before_the_sequences(tiny_bundle):
    from edge_runtime.bundle.memory_plan import plan_for_bundle

    bundle = open_bundle(tiny_bundle)
    plain = plan_for_bundle(bundle, 1 << 30, 512)
    shared = plan_for_bundle(bundle, 1 << 30, 512, prefix_cache_bytes=256 << 20)
    assert shared.available_bytes == plain.available_bytes - (256 << 20)
    assert shared.max_sequences < plain.max_sequences
    engine = Engine(tiny_bundle, EngineConfig(memory_budget=1 << 30, max_context=512, prefix_cache_bytes=256 << 20))
    expected = plan_for_bundle(bundle, 1 << 30, 512, engine.max_rows, prefix_cache_bytes=256 << 20,
                               prefill_chunk=engine.config.scheduler.max_step_tokens)
    assert engine.plan == expected and engine.cache.budget == 256 << 20


def test_a_default_share_takes_a_fraction_of_what_the_budget_leaves(tiny_bundle):
    from edge_runtime.bundle.memory_plan import plan_for_bundle

    engine = Engine(tiny_bundle, EngineConfig(memory_budget=1 << 30, max_context=512, prefix_cache_share=0.125))
    left = plan_for_bundle(open_bundle(tiny_bundle), 1 << 30, 512, engine.max_rows,
                           prefill_chunk=engine.config.scheduler.max_step_tokens).available_bytes
    assert engine.cache.budget == int(left * 0.125) == engine.plan.prefix_cache_bytes
    with pytest.raises(RequestError, match="prefix_cache_share"):
        Engine(tiny_bundle, EngineConfig(prefix_cache_share=1.0))
