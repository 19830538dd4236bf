"""Text to token ids without holding the GIL.

`tokenizers.Tokenizer.encode` runs its Rust code holding Python's GIL for the whole call, so a long text
tokenized on a worker thread still stops every other Python thread of the process: the gRPC event loop
(no other call is received or answered) and the engine thread (no token is generated) until it is done.
`encode_batch_fast` releases the GIL while it works and gives the same ids (it skips the character offsets,
which nothing here reads).
"""

from __future__ import annotations

from tokenizers import Tokenizer


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """The ids of `text` as written: no special tokens added."""
    return tokenizer.encode_batch_fast([text], add_special_tokens=False)[0].ids
