"""The synthetic tokenizer: a real byte-level BPE carrying the model's control tokens by name."""

from __future__ import annotations

import json
from functools import lru_cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from edge_runtime.engine.token_ids import encode
from nemotron_export.tokenizer_synth import (
    CHAT_TEMPLATE_PATH,
    CONTROL_TAGS,
    EOS_TOKEN,
    SPECIAL_TOKENS,
    build_tokenizer,
    load_chat_template,
)

MULTIBYTE = [
    "plain ascii text, with punctuation!",
    "Crème brûlée in Zürich — déjà vu.",
    "你好，世界！東京は日本の首都です。",
    "emoji 😀🚀 and a family 👨‍👩‍👧 with ZWJ",
    "mixed\ttabs\n\nnewlines   and  spaces ",
    "Привет, мир. Καλημέρα. שלום. مرحبا",
    "\u0000 control \u007f and a lone combining mark e\u0301",
]


@pytest.mark.parametrize("text", MULTIBYTE)
def test_round_trip_multibyte(synth_tokenizer: Tokenizer, text: str) -> None:
    ids = synth_tokenizer.encode(text).ids
    assert synth_tokenizer.decode(ids, skip_special_tokens=False) == text


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_any_text(text: str) -> None:
    tokenizer = _shared()
    assert tokenizer.decode(tokenizer.encode(text).ids, skip_special_tokens=False) == text


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.sampled_from(MULTIBYTE), st.lists(st.sampled_from([*SPECIAL_TOKENS, *CONTROL_TAGS, " ", "x"]))
                 .map("".join)))
def test_the_runtime_encodes_as_encode_does(text: str) -> None:
    """edge_runtime.engine.token_ids.encode (which releases the GIL) gives the ids of Tokenizer.encode."""
    tokenizer = _shared()
    assert encode(tokenizer, text) == tokenizer.encode(text, add_special_tokens=False).ids


@lru_cache(maxsize=1)
def _shared() -> Tokenizer:
    # A plain cached builder rather than a fixture: hypothesis reruns the test body many times.
    return build_tokenizer(1000)


@pytest.mark.parametrize("token", SPECIAL_TOKENS + CONTROL_TAGS)
def test_control_tokens_are_single_tokens(synth_tokenizer: Tokenizer, token: str) -> None:
    token_id = synth_tokenizer.token_to_id(token)
    assert token_id is not None
    assert synth_tokenizer.encode(f"abc{token}def").ids.count(token_id) == 1
    assert synth_tokenizer.encode(token).ids == [token_id]


def test_tags_survive_skip_special_but_turn_markers_do_not(synth_tokenizer: Tokenizer) -> None:
    ids = synth_tokenizer.encode("<think>\nhmm\n</think>\n\nhi<SPECIAL_12>").ids
    assert synth_tokenizer.decode(ids, skip_special_tokens=True) == "<think>\nhmm\n</think>\n\nhi"


@pytest.mark.parametrize("vocab_size", [1000, 4096])
def test_vocab_size(vocab_size: int) -> None:
    assert build_tokenizer(vocab_size).get_vocab_size() == vocab_size


def test_split_digits_writes_every_number_with_single_digit_tokens() -> None:
    text = "Distance: 18 + 9 = 27 meters. {\"grip_force\": 51} x 2025, y 7"
    plain, split = build_tokenizer(1000, text), build_tokenizer(1000, text, split_digits=True)
    assert any(sum(c.isdigit() for c in t) > 1 for t in plain.encode(text).tokens)  # the corpus merges digits
    tokens = split.encode(text).tokens
    assert all(sum(c.isdigit() for c in t) <= 1 for t in tokens), tokens
    assert {"Ġ1", "8", "Ġ5", "1"} <= set(tokens)  # a leading space stays with the first digit
    assert split.decode(split.encode(text).ids) == text
    for token in CONTROL_TAGS:
        assert split.encode(token).ids == [split.token_to_id(token)]


def test_training_is_deterministic() -> None:
    assert build_tokenizer(1000).to_str() == build_tokenizer(1000).to_str()


def test_too_small_vocab_rejected() -> None:
    with pytest.raises(ValueError):
        build_tokenizer(200)


def test_template_is_the_reference_template() -> None:
    text = load_chat_template()
    assert CHAT_TEMPLATE_PATH.name == "chat_template.jinja"
    assert "<SPECIAL_11>Assistant" in text and "<TOOLCALL>" in text


def test_transformers_loads_written_files(tokenizer_dir, hf_tokenizer, synth_tokenizer: Tokenizer) -> None:
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == load_chat_template()
    assert hf_tokenizer.eos_token == EOS_TOKEN
    assert hf_tokenizer.eos_token_id == synth_tokenizer.token_to_id(EOS_TOKEN)
    text = "Hello <think>wörld 你好</think>"
    assert hf_tokenizer.encode(text, add_special_tokens=False) == synth_tokenizer.encode(text).ids
    rendered = hf_tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<SPECIAL_10>System\n\n<SPECIAL_11>User\nhi\n<SPECIAL_11>Assistant\n<think>\n"
