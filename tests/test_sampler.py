"""The sampler picks tokens the way its parameters say, reproducibly per request, and rejects bad parameters."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.engine.sampler import (
    SamplerState,
    SamplingParams,
    _nucleus,
    allowed_tokens,
    apply_penalties,
    sample,
)

VOCAB = 131072


def _logits(batch: int, vocab: int = VOCAB, seed: int = 0, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((batch, vocab)) * scale).astype(np.float32)


def _state(prompt: tuple[int, ...] = (), **kw) -> SamplerState:
    return SamplerState.create(SamplingParams(**kw), prompt)


def _draws(logits_row: np.ndarray, n: int, **kw) -> np.ndarray:
    state = _state(**kw)
    return np.array([sample(logits_row[None], [state]).token_ids[0] for _ in range(n)])


def _probs(row: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    x = row.astype(np.float64) / temperature
    e = np.exp(x - x.max())
    return e / e.sum()


def test_greedy_is_argmax_for_every_row():
    logits = _logits(4)
    states = [_state(temperature=0.0), _state(greedy=True, temperature=0.7), _state(temperature=0.0), _state(greedy=True)]
    assert sample(logits, states).token_ids.tolist() == np.argmax(logits, axis=1).tolist()


def test_top_k_1_equals_greedy():
    logits = _logits(3, seed=1)
    states = [_state(temperature=1.5, top_k=1, seed=i) for i in range(3)]
    for _ in range(5):
        assert sample(logits, states).token_ids.tolist() == np.argmax(logits, axis=1).tolist()


def test_seeded_request_is_reproducible_alone_and_in_a_batch():
    logits = _logits(3, seed=2, scale=1.0)  # flat enough that draws actually vary
    params = dict(temperature=0.9, top_p=0.95, seed=1234)

    alone = _state(**params)
    alone_tokens = [int(sample(logits[1:2], [alone]).token_ids[0]) for _ in range(20)]

    batched = [_state(temperature=1.0), _state(**params), _state(temperature=0.0)]
    batched_tokens = [int(sample(logits, batched).token_ids[1]) for _ in range(20)]

    assert alone_tokens == batched_tokens
    assert len(set(alone_tokens)) > 1, "the test logits must be flat enough for draws to differ"


def test_unseeded_requests_differ():
    row = _logits(1, seed=3, scale=0.5)[0]
    assert not np.array_equal(_draws(row, 10, temperature=1.0), _draws(row, 10, temperature=1.0))


def test_top_p_excludes_tokens_outside_the_nucleus():
    vocab = 1000
    row = np.full(vocab, -10.0, dtype=np.float32)
    row[:4] = np.log([0.5, 0.3, 0.15, 0.05]) + 10.0  # ~all mass on tokens 0-3
    probs = _probs(row)
    # Nucleus at 0.9: 0.5 + 0.3 < 0.9, + 0.15 reaches it -> tokens {0, 1, 2}.
    draws = _draws(row, 3000, temperature=1.0, top_p=0.9, seed=7)
    assert set(draws.tolist()) == {0, 1, 2}
    # Renormalised shares: 0.5/0.95, 0.3/0.95, 0.15/0.95 (within 4 standard errors).
    expected = probs[:3] / probs[:3].sum()
    observed = np.bincount(draws, minlength=3)[:3] / len(draws)
    assert np.all(np.abs(observed - expected) < 4 * np.sqrt(expected * (1 - expected) / len(draws)))


def test_top_p_on_a_flat_distribution_keeps_its_share_of_the_full_vocabulary():
    row = np.zeros(VOCAB, dtype=np.float32)  # uniform: the 0.5 nucleus is half the vocabulary
    ids, weights = allowed_tokens(row, SamplingParams(top_p=0.5))
    assert ids.shape[0] == VOCAB // 2 and np.all(weights == 1.0)


def test_min_p_excludes_tokens_below_the_threshold():
    row = np.log(np.array([0.4, 0.3, 0.2, 0.05, 0.03, 0.02])).astype(np.float32)
    # min_p 0.2 -> threshold 0.08: tokens 3, 4, 5 are out.
    draws = _draws(row, 2000, temperature=1.0, min_p=0.2, seed=11)
    assert set(draws.tolist()) == {0, 1, 2}


def test_top_k_excludes_all_but_k():
    row = _logits(1, vocab=5000, seed=4, scale=0.3)[0]
    top = set(np.argsort(-row)[:5].tolist())
    assert set(_draws(row, 500, temperature=2.0, top_k=5, seed=5).tolist()) == top


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    row = np.array([2.0, -2.0, 1.0, -1.0, 0.5], dtype=np.float32)
    state = _state(prompt=(0, 1), repetition_penalty=2.0)
    state.record(3)
    out = apply_penalties(row, state)
    np.testing.assert_allclose(out, [1.0, -4.0, 1.0, -2.0, 0.5])
    assert row[0] == 2.0, "the caller's logits are not modified"


def test_presence_and_frequency_penalties_count_output_tokens_only():
    row = np.zeros(5, dtype=np.float32)
    state = _state(prompt=(4,), presence_penalty=0.5, frequency_penalty=0.25)
    state.record([1, 1, 1, 2])
    out = apply_penalties(row, state)
    np.testing.assert_allclose(out, [0.0, -(0.5 + 3 * 0.25), -(0.5 + 0.25), 0.0, 0.0])


def test_penalties_over_long_prompts_and_outputs_match_a_direct_count():
    rng = np.random.default_rng(11)
    vocab = 3000
    prompt = rng.integers(0, vocab, 700).tolist()
    output = rng.integers(0, vocab + 50, 900).tolist()  # some ids past the logits' width, which are not penalised
    row = rng.standard_normal(vocab).astype(np.float32)
    state = _state(prompt=tuple(prompt), repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.2)
    for token in output[:100]:
        state.record(token)
    state.record(output[100:])
    expected = row.copy()
    seen = sorted(t for t in set(prompt) | set(output) if t < vocab)
    expected[seen] = np.where(expected[seen] > 0, expected[seen] / 1.3, expected[seen] * 1.3)
    for token in set(output):
        if token < vocab:
            expected[token] -= np.float32(0.2) * output.count(token) + np.float32(0.4)
    np.testing.assert_array_equal(apply_penalties(row, state), expected)


def test_penalty_steers_greedy_choice():
    row = np.array([1.0, 0.9, 0.0], dtype=np.float32)
    state = _state(temperature=0.0, repetition_penalty=1.5)
    state.record(0)
    assert sample(row[None], [state]).token_ids[0] == 1


def test_logprobs_shapes_and_normalisation():
    logits = _logits(2, seed=6)
    states = [_state(temperature=0.7, top_p=0.9, logprobs=20, seed=1), _state(temperature=0.0, logprobs=0)]
    result = sample(logits, states)
    sampled, greedy = result.logprobs
    assert sampled is not None and greedy is not None
    assert len(sampled.top) == 20 and greedy.top == []
    # Post-temperature distribution, before truncation.
    expected = np.log(_probs(logits[0], temperature=0.7))
    assert sampled.logprob == pytest.approx(expected[sampled.token_id], abs=1e-6)
    top_ids = [t for t, _ in sampled.top]
    assert top_ids == np.argsort(-expected)[:20].tolist()
    assert [lp for _, lp in sampled.top] == sorted((lp for _, lp in sampled.top), reverse=True)
    assert np.exp([lp for _, lp in sampled.top]).sum() <= 1.0 + 1e-9
    # Greedy: temperature 1, chosen = argmax.
    assert greedy.token_id == int(np.argmax(logits[1]))
    assert greedy.logprob == pytest.approx(np.log(_probs(logits[1]))[greedy.token_id], abs=1e-6)


def test_logprobs_over_a_full_small_vocabulary_sum_to_one():
    row = _logits(1, vocab=20, seed=8)[0]
    lp = sample(row[None], [_state(temperature=1.3, logprobs=20, seed=0)]).logprobs[0]
    assert lp is not None
    assert np.exp([v for _, v in lp.top]).sum() == pytest.approx(1.0)


def test_no_logprobs_unless_asked():
    assert sample(_logits(1, vocab=50), [_state(temperature=1.0)]).logprobs == [None]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("temperature", 1e39),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("min_p", -0.1),
        ("min_p", 1.1),
        ("repetition_penalty", 0.0),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -3.0),
        ("seed", -1),
        ("logprobs", 21),
        ("logprobs", -1),
    ],
)
def test_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}:"):
        SamplingParams(**{field: value}).validate()


def test_model_card_defaults():
    on, off = SamplingParams.model_card_default(True), SamplingParams.model_card_default(False)
    assert (on.temperature, on.top_p, on.is_greedy) == (0.6, 0.95, False)
    assert off.is_greedy
    on.validate()
    off.validate()


def test_batch_and_state_mismatch_is_an_error():
    with pytest.raises(ValueError, match="^states:"):
        sample(_logits(2, vocab=10), [_state()])


def _reference_allowed(row: np.ndarray, p: SamplingParams) -> set[int]:
    """Full-sort reference for the truncation steps."""
    probs = _probs(row, p.temperature)
    order = np.argsort(-probs)
    keep = order[: p.top_k] if p.top_k else order
    sub = probs[keep] / probs[keep].sum()
    if p.top_p < 1.0:
        before = np.cumsum(sub) - sub
        keep, sub = keep[before < p.top_p], sub[before < p.top_p]
    return set(keep[sub >= p.min_p * sub.max()].tolist())


# Random rows and sampling settings, for the properties below.
_sampling_cases = given(
    logits_seed=st.integers(0, 2**32 - 1),
    vocab=st.integers(1, 600),
    scale=st.floats(0.1, 8.0),
    temperature=st.floats(0.05, 3.0),
    top_k=st.integers(0, 50),
    top_p=st.floats(0.01, 1.0),
    min_p=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**63),
)


@settings(max_examples=150, deadline=None)
@_sampling_cases
def test_allowed_tokens_are_exactly_the_full_sort_reference(logits_seed, vocab, scale, temperature, top_k, top_p, min_p,
                                                             seed):
    row = _logits(1, vocab=vocab, seed=logits_seed, scale=scale)[0]
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed).validate()
    ids, weights = allowed_tokens(row, params)
    assert set(ids.tolist()) == _reference_allowed(row, params)
    assert np.allclose(weights / weights.sum(), _probs(row, temperature)[ids] / _probs(row, temperature)[ids].sum())


@settings(max_examples=150, deadline=None)
@_sampling_cases
def test_sampled_token_is_always_allowed(logits_seed, vocab, scale, temperature, top_k, top_p, min_p, seed):
    row = _logits(1, vocab=vocab, seed=logits_seed, scale=scale)[0]
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed).validate()
    state = SamplerState.create(params)
    token = int(sample(row[None], [state]).token_ids[0])
    assert token in _reference_allowed(row, params)


@pytest.mark.parametrize("params", [SamplingParams.model_card_default(True), SamplingParams(temperature=1.0),
                                    SamplingParams(temperature=0.7, top_k=3), SamplingParams(greedy=True)])
def test_nan_and_inf_logits_are_handled_per_row(params):
    """A NaN logit is never drawn, +inf logits take all the probability, masked (-inf) tokens never come up,
    and a row with nothing drawable is an error that names the logits."""
    nan_row = _logits(1, vocab=50, seed=9)[0]
    nan_row[[0, 7]] = np.nan
    inf_row = _logits(1, vocab=50, seed=10)[0]
    inf_row[[3, 11]] = np.inf
    masked = np.full(50, -np.inf, dtype=np.float32)
    masked[[5, 6]] = [1.0, 1.5]
    for _ in range(50):
        assert int(sample(nan_row[None], [SamplerState.create(params)]).token_ids[0]) not in (0, 7)
        assert int(sample(inf_row[None], [SamplerState.create(params)]).token_ids[0]) in (3, 11)
        assert int(sample(masked[None], [SamplerState.create(params)]).token_ids[0]) in (5, 6)
    with pytest.raises(ValueError, match="^logits:"):
        sample(np.full((1, 50), -np.inf, dtype=np.float32), [SamplerState.create(params)])


def _full_sort_nucleus(weights: np.ndarray, mass: float) -> np.ndarray:
    order = np.argsort(-weights, kind="stable")
    cum = np.cumsum(weights[order])
    return order[: int(np.searchsorted(cum, mass, side="left")) + 1]


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n=st.integers(1, 3000), levels=st.integers(1, 12), share=st.floats(0.0, 1.0))
def test_nucleus_is_exactly_the_full_sort_prefix(data, n, levels, share):
    """The nucleus sorts only what it must, yet keeps the very tokens, in the very order, of a stable sort of
    all of them, ties included (equal weights in position order), whether the 64 largest hold the mass or not."""
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if data.draw(st.booleans()):  # few distinct weights: ties everywhere, the nucleus edge among them
        weights = np.exp(rng.integers(0, levels, n).astype(np.float64))
    else:
        weights = np.exp(rng.standard_normal(n) * data.draw(st.floats(0.01, 8.0)))
    mass = share * float(np.cumsum(weights[np.argsort(-weights, kind="stable")])[-1])
    np.testing.assert_array_equal(_nucleus(weights, mass), _full_sort_nucleus(weights, mass))


def test_top_p_on_flat_real_size_logits_matches_the_full_sort():
    """A flat row at the real vocabulary: most tokens are in the nucleus, far more than the first guess."""
    row = _logits(1, seed=12, scale=1.0)[0]
    params = SamplingParams(temperature=1.0, top_p=0.95).validate()
    ids, _ = allowed_tokens(row, params)
    assert ids.shape[0] > 50_000
    assert set(ids.tolist()) == _reference_allowed(row, params)
