"""Token ids to streamed text: incremental detokenization and stop-string matching.

A byte-level BPE token can hold part of a UTF-8 character (an emoji is often split over two or three
tokens), so decoding one token at a time shows U+FFFD garbage. `tokenizers.decoders.DecodeStream` does
the incremental part with the prefix-offset technique of vLLM and TGI: it keeps a short window of ids,
decodes it, and returns only the text the newest ids add beyond the previous chunk, and only once that
text no longer ends in U+FFFD (an incomplete byte sequence). `IncrementalDecoder` wraps it and adds what
it lacks: an end of stream (`flush` releases the pending bytes, U+FFFD included), and prompt context whose
text is itself incomplete (raw prompt ids that stop mid-character, or a literal U+FFFD), which
DecodeStream would otherwise hand back as the start of the first chunk. Emitted text concatenated equals
`tokenizer.decode(all ids)`.

`StopMatcher` sits after it: it never emits any part of a stop string, holding back the longest suffix
of the text that could still grow into one. When several stop strings occur, the one completed first in
the stream wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

REPLACEMENT_CHAR = "\ufffd"
# Prompt tokens decoded ahead of the first generated one, so that decoders that look at context (e.g.
# a leading space) see some; vLLM uses the same small window.
PROMPT_WINDOW = 5


class IncrementalDecoder:
    """Push generated token ids one at a time; get back only complete, valid text."""

    def __init__(
        self, tokenizer: Tokenizer, prompt_ids: Sequence[int] | None = None, skip_special_tokens: bool = True
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        context = list(prompt_ids[-PROMPT_WINDOW:]) if prompt_ids else []
        self._stream = DecodeStream(ids=context, skip_special_tokens=skip_special_tokens)
        # DecodeStream counts the context as shown only if its text does not end in U+FFFD; otherwise its
        # first chunk starts with the context's text, cut off here.
        context_text = self._decode(context)
        self._unshown_context = context_text if context_text.endswith(REPLACEMENT_CHAR) else ""
        # DecodeStream keeps its window private and has no end of stream, so flush() works from a copy:
        # the ids whose text was emitted last (the context DecodeStream decodes them against) and those
        # pending since.
        self._emitted_ids = context
        self._pending_ids: list[int] = []

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" while a character is still partial)."""
        self._pending_ids.append(token_id)
        text = self._stream.step(self._tokenizer, token_id)
        if text is None:
            return ""
        text, self._unshown_context = text[len(self._unshown_context) :], ""
        self._emitted_ids, self._pending_ids = self._pending_ids, []
        return text

    def flush(self) -> str:
        """End of stream: release whatever is pending, U+FFFD included (the bytes will never complete)."""
        pending, self._pending_ids = self._pending_ids, []
        if not pending:
            return ""
        prefix_text = self._decode(self._emitted_ids)
        return self._decode(self._emitted_ids + pending)[len(prefix_text) :]

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special)


class StopMatcher:
    """Text deltas in, (text safe to emit, matched stop string or None) out; nothing after a match."""

    def __init__(self, stop_strings: Iterable[str]) -> None:
        self.stop_strings = tuple(stop_strings)
        if any(not stop for stop in self.stop_strings):
            raise ValueError("stop strings must be non-empty")
        self._pending = ""
        self.matched: str | None = None

    def push(self, text: str) -> tuple[str, str | None]:
        if self.matched is not None:
            return "", self.matched
        buffer = self._pending + text
        hit = self._earliest_match(buffer)
        if hit is not None:
            start, stop = hit
            self.matched = stop
            self._pending = ""
            return buffer[:start], stop
        keep = self._held_back_length(buffer)
        self._pending = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], None

    def flush(self) -> str:
        """End of stream: the held-back text turned out not to be a stop string."""
        pending, self._pending = self._pending, ""
        return pending

    def _earliest_match(self, buffer: str) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        best_key: tuple[int, int] | None = None
        for stop in self.stop_strings:
            index = buffer.find(stop)
            # The stop string completed first wins (longer on a tie): the only rule that gives the
            # same answer however the text is split into deltas.
            key = (index + len(stop), -len(stop))
            if index >= 0 and (best_key is None or key < best_key):
                best, best_key = (index, stop), key
        return best

    def _held_back_length(self, buffer: str) -> int:
        longest = 0
        for stop in self.stop_strings:
            for length in range(min(len(buffer), len(stop) - 1), longest, -1):
                if stop.startswith(buffer[-length:]):
                    longest = length
                    break
        return longest
