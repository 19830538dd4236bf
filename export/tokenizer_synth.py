"""A small, real byte-level BPE tokenizer that stands in for Nemotron-Nano-9B-v2's 131k-token one.

Tests, the demo bundle and the tiny presets need a tokenizer that behaves like the real one where it
matters (byte-level BPE, so any UTF-8 text round-trips; the model's control tokens as single atomic
tokens; a `tokenizer_config.json` with the real chat template that `transformers.AutoTokenizer` loads)
without downloading anything. It is trained, deterministically and in well under a second, on the
corpus shipped in `corpus/`.

Control tokens are known by their TEXT only. Their ids depend on the vocab size and on training, so any
code that needs one looks it up with `tokenizer.token_to_id("<think>")`.

Special-token choices (mirroring the real checkpoint, see the model card's chat template):
- `<s>` is BOS, `</s>` ends a document.
- `eos_token` is `<SPECIAL_12>`: the template closes every turn with `\\n<SPECIAL_12>\\n`, so it is the token
  the model emits when its answer is done. The real config.json's `eos_token_id` points at `</s>`; a
  runtime should stop on both.
- `pad_token` reuses `<unk>`: the real model defines no pad token and the device runtime never pads.
- The tags the model writes in its own output (`<think>`, `</think>`, `<TOOLCALL>`, ...) are added as
  non-special tokens: atomic when encoding, but kept by `decode(..., skip_special_tokens=True)`, so the
  think-tag stripper and the tool-call parser see them in the decoded text. The turn markers and
  `<s>`/`</s>`/`<unk>` are special and are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

_PACKAGE_DIR = Path(__file__).resolve().parent
CORPUS_DIR = _PACKAGE_DIR / "corpus"
CHAT_TEMPLATE_PATH = _PACKAGE_DIR / "templates" / "chat_template.jinja"

UNK_TOKEN = "<unk>"
BOS_TOKEN = "<s>"
DOC_END_TOKEN = "</s>"
SYSTEM_TURN = "<SPECIAL_10>"
TURN_START = "<SPECIAL_11>"
TURN_END = "<SPECIAL_12>"
EOS_TOKEN = TURN_END
PAD_TOKEN = UNK_TOKEN

SPECIAL_TOKENS: tuple[str, ...] = (UNK_TOKEN, BOS_TOKEN, DOC_END_TOKEN, SYSTEM_TURN, TURN_START, TURN_END)
CONTROL_TAGS: tuple[str, ...] = (
    "<think>",
    "</think>",
    "<TOOLCALL>",
    "</TOOLCALL>",
    "<TOOL_RESPONSE>",
    "</TOOL_RESPONSE>",
    "<AVAILABLE_TOOLS>",
    "</AVAILABLE_TOOLS>",
)

# GPT-2's pre-tokenizer pattern (ByteLevel's own) with one digit a piece instead of a run of digits.
_DIGIT_PIECES = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

# The real model's context length; only informs `model_max_length` in the written config.
MODEL_MAX_LENGTH = 131072


def corpus_text() -> str:
    """The training corpus, control tokens removed."""
    return _without_control_tokens("\n".join(p.read_text(encoding="utf-8") for p in sorted(CORPUS_DIR.glob("*.txt"))))


def _without_control_tokens(text: str) -> str:
    """The trainer does not split on added tokens, so left in, `<SPECIAL_12>` would spend merges on
    pieces like `SPECIAL` that never occur in encoded text (the added token always wins there)."""
    for token in SPECIAL_TOKENS + CONTROL_TAGS:
        text = text.replace(token, "\n")
    return text


def build_tokenizer(vocab_size: int, extra_text: str = "", split_digits: bool = False) -> Tokenizer:
    """Train a byte-level BPE of at most `vocab_size` tokens (control tokens included), on the corpus and
    `extra_text` (a model trained on its own data, like the demo model, tokenizes that data tighter).

    `split_digits` makes every digit its own piece (" 51" is " 5", "1"), so that every number is written
    with the same twenty tokens: a small model that copies and adds numbers then learns it once for all of
    them instead of once per merged token such as " 14"."""
    if vocab_size < 256 + len(SPECIAL_TOKENS) + len(CONTROL_TAGS):
        raise ValueError(f"vocab_size {vocab_size} cannot hold the 256 byte tokens and the control tokens")
    tokenizer = Tokenizer(models.BPE())
    # No prefix space: an encoded string must decode to exactly itself.
    if split_digits:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_DIGIT_PIECES), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(CONTROL_TAGS),
        # The corpus is small: pairs seen once must merge too, or ~4096 tokens are out of reach.
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = corpus_text() + ("\n" + _without_control_tokens(extra_text) if extra_text else "")
    tokenizer.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
    tokenizer = _padded(tokenizer, vocab_size - len(CONTROL_TAGS))
    tokenizer.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in CONTROL_TAGS])
    return tokenizer


def _padded(tokenizer: Tokenizer, size: int) -> Tokenizer:
    """`tokenizer` with its BPE vocabulary filled up to `size` entries by `<unused_N>` tokens that no merge
    builds (the corpus runs out of merges long before the real model's 131072), so a bundle sees the real
    vocabulary's size, and the control tokens keep ids past it as they do when training fills it."""
    if tokenizer.get_vocab_size() >= size:
        return tokenizer
    data = json.loads(tokenizer.to_str())
    vocab = data["model"]["vocab"]
    vocab.update({f"<unused_{i}>": i for i in range(len(vocab), size)})
    return Tokenizer.from_str(json.dumps(data))


def load_chat_template() -> str:
    """The model's chat template, unchanged from the model card."""
    return CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")


def tokenizer_config(chat_template: str) -> dict:
    """The `tokenizer_config.json` contents transformers needs to load the tokenizer and its template."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": UNK_TOKEN,
        "pad_token": PAD_TOKEN,
        "model_max_length": MODEL_MAX_LENGTH,
        "clean_up_tokenization_spaces": False,
        "chat_template": chat_template,
    }


def write_tokenizer_files(tokenizer: Tokenizer, out_dir: str | Path, chat_template: str) -> list[Path]:
    """Write tokenizer.json and tokenizer_config.json into `out_dir`; returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_path = out / "tokenizer.json"
    config_path = out / "tokenizer_config.json"
    tokenizer.save(str(tokenizer_path))
    config_path.write_text(
        json.dumps(tokenizer_config(chat_template), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    return [tokenizer_path, config_path]
