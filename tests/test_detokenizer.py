"""Incremental detokenization equals whole-sequence decoding; stop strings never leak, even split across tokens."""

from __future__ import annotations

from functools import lru_cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from edge_runtime.engine.detokenizer import REPLACEMENT_CHAR, IncrementalDecoder, StopMatcher
from nemotron_export.tokenizer_synth import build_tokenizer


@lru_cache(maxsize=1)
def tok() -> Tokenizer:
    # Cached builder rather than a fixture: hypothesis reruns test bodies many times.
    return build_tokenizer(1000)


def stream(decoder: IncrementalDecoder, ids: list[int]) -> list[str]:
    return [decoder.push(i) for i in ids] + [decoder.flush()]


def test_emoji_split_over_tokens_is_held_back() -> None:
    text = "ok 👨‍👩‍👧 done"
    ids = tok().encode(text).ids
    # The point of the test: at least one token must be a partial character on its own.
    assert any(REPLACEMENT_CHAR in tok().decode([i]) for i in ids)
    deltas = stream(IncrementalDecoder(tok()), ids)
    assert "".join(deltas) == text
    assert not any(REPLACEMENT_CHAR in d for d in deltas)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_encoded_text_streams_back_exactly(text: str) -> None:
    ids = tok().encode(text).ids
    deltas = stream(IncrementalDecoder(tok(), skip_special_tokens=False), ids)
    assert "".join(deltas) == text
    # Every delta but the flush is complete text: nothing partial is ever shown.
    assert all(not d.endswith(REPLACEMENT_CHAR) or REPLACEMENT_CHAR in text for d in deltas[:-1])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 999), max_size=30), st.booleans())
def test_random_ids_match_full_decode(ids: list[int], skip_special: bool) -> None:
    decoder = IncrementalDecoder(tok(), skip_special_tokens=skip_special)
    assert "".join(stream(decoder, ids)) == tok().decode(ids, skip_special_tokens=skip_special)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=20), st.text(max_size=20))
def test_with_prompt_context(prompt: str, completion: str) -> None:
    prompt_ids = tok().encode(prompt).ids
    ids = tok().encode(completion).ids
    decoder = IncrementalDecoder(tok(), prompt_ids=prompt_ids, skip_special_tokens=False)
    assert "".join(stream(decoder, ids)) == completion


def test_prompt_context_ending_in_incomplete_text_stays_out_of_the_stream() -> None:
    # Raw prompt ids may stop mid-character, and a prompt may end in a literal U+FFFD: either way the
    # context decodes to text ending in U+FFFD, which DecodeStream does not count as shown.
    literal = tok().encode("abc \ufffd").ids
    assert "".join(stream(IncrementalDecoder(tok(), prompt_ids=literal), tok().encode(" hi").ids)) == " hi"
    ids = tok().encode("ok 👍 then").ids
    cut = next(k for k in range(len(ids)) if tok().decode(ids[:k]).endswith(REPLACEMENT_CHAR))
    # The emoji begun in the prompt belongs to neither side; what follows it streams as usual.
    assert "".join(stream(IncrementalDecoder(tok(), prompt_ids=ids[:cut]), ids[cut:])) == " then"


def test_special_tokens_skipped_by_default() -> None:
    ids = tok().encode("<think>a</think>b<SPECIAL_12>").ids
    assert "".join(stream(IncrementalDecoder(tok()), ids)) == "<think>a</think>b"


def run_stop(matcher: StopMatcher, deltas: list[str]) -> tuple[str, str | None]:
    out, matched = "", None
    for delta in deltas:
        text, matched = matcher.push(delta)
        out += text
    if matched is None:
        out += matcher.flush()
    return out, matched


def test_stop_string_split_across_tokens() -> None:
    ids = tok().encode("The answer is 4.\nUser: next question").ids
    decoder = IncrementalDecoder(tok())
    matcher = StopMatcher(["\nUser:"])
    shown = []
    matched = None
    for i in ids:
        text, matched = matcher.push(decoder.push(i))
        shown.append(text)
        if matched:
            break
    assert matched == "\nUser:"
    assert "".join(shown) == "The answer is 4."
    assert all("\n" not in s for s in shown)


def test_partial_stop_is_held_then_released() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.push("abc ST") == ("abc ", None)
    assert matcher.push("OMP") == ("STOMP", None)
    assert matcher.push("ST") == ("", None)
    assert matcher.flush() == "ST"


def test_first_completed_then_longest_stop_wins() -> None:
    assert StopMatcher(["bc", "abcd", "ab"]).push("xabcd") == ("x", "ab")
    assert StopMatcher(["c", "abc", "zz"]).push("xabc") == ("x", "abc")
    matcher = StopMatcher(["c", "ab"])
    assert matcher.push("xabc") == ("x", "ab")
    assert matcher.push("more") == ("", "ab")


def test_empty_stop_rejected() -> None:
    with pytest.raises(ValueError):
        StopMatcher([""])


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="ab\n<>é", max_size=30),
    stops=st.lists(st.text(alphabet="ab\n<>é", min_size=1, max_size=4), min_size=1, max_size=3),
    data=st.data(),
)
def test_stop_matching_is_split_invariant(text: str, stops: list[str], data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.sets(st.integers(0, len(text)))))
    bounds = [0, *cuts, len(text)]
    deltas = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    out, matched = run_stop(StopMatcher(stops), deltas)
    hits = [(text.find(s) + len(s), -len(s), s) for s in stops if s in text]
    if hits:
        end, _, stop = min(hits)
        assert (out, matched) == (text[: end - len(stop)], stop)
    else:
        assert (out, matched) == (text, None)
