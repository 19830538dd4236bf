"""Grammar-constrained decoding with llguidance: the engine's grammar compiler and a sequence's grammar stage.

`GrammarCompiler` holds the bundle's tokenizer as llguidance reads it (built once per engine, on the first
constrained request: it walks the whole vocabulary) and turns a request's `AnswerFormat` (answer_format.py)
into a `Grammar`: a compiled matcher that is never advanced itself, which each sequence copies. The last
CACHED_GRAMMARS are kept, keyed by what they were compiled from: an agent sends the same tools call after
call. A grammar llguidance refuses, or accepts only with a warning (a keyword it would ignore), is a
RequestError naming the field it came from.

`GrammarStage` is a stage of a sequence's sampler chain (sampler.py), active on the answer channel only, so
the reasoning stays free: `apply(logits)` writes the grammar's mask into the row (-inf for every token it
does not allow), allowing the request's stop tokens exactly when the answer so far is complete;
`accept(token)` advances the matcher on every committed answer token, forced or drawn. A matcher error, a
committed token the grammar refuses, or a row in which no token is left (a dead end) raises GrammarError,
which finishes that request with an error that says so: never a hang, never an answer that does not parse.
"""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
from llguidance import LLMatcher, LLTokenizer
from tokenizers import Tokenizer

from edge_runtime.engine.answer_format import AnswerFormat, FormatKind, ToolTags
from edge_runtime.engine.records import RequestError


CACHED_GRAMMARS = 32


class GrammarError(RuntimeError):
    """The grammar stage cannot go on: the request ends with FinishReason.ERROR and this message."""


@dataclass(frozen=True, eq=False)
class Grammar:
    """A compiled answer grammar for one vocabulary; `matcher()` is a fresh copy for one sequence."""

    text: str  # the llguidance grammar, for logs and tests
    vocab_size: int
    _prototype: LLMatcher = field(repr=False)

    def matcher(self) -> LLMatcher:
        return self._prototype.deep_copy()


class GrammarCompiler:
    """One engine's way from `AnswerFormat`s to `Grammar`s. `stop_ids`: the engine's end-of-sequence tokens,
    which llguidance allows where a grammar is complete."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, stop_ids: Iterable[int]):
        self._source = tokenizer
        self.vocab_size = vocab_size
        self.stop_ids = tuple(sorted(stop_ids))
        self.tags = ToolTags.for_tokenizer(tokenizer.token_to_id)
        self._tokenizer: LLTokenizer | None = None
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict[str, Grammar | None] = collections.OrderedDict()

    @property
    def tokenizer(self) -> LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = LLTokenizer(self._source.to_str(), n_vocab=self.vocab_size,
                                              eos_token=list(self.stop_ids))
            return self._tokenizer

    def compile(self, answer: AnswerFormat) -> Grammar | None:
        """The grammar of `answer`, or None when its answer is free text."""
        key = json.dumps(asdict(answer), ensure_ascii=False)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        grammar = self._compile(answer)
        with self._lock:
            self._cache[key] = grammar
            if len(self._cache) > CACHED_GRAMMARS:
                self._cache.popitem(last=False)
        return grammar

    def _compile(self, answer: AnswerFormat) -> Grammar | None:
        text = answer.grammar(self.tags, self.check)
        if text is None:
            return None
        matcher = LLMatcher(self.tokenizer, text, log_level=0)
        if matcher.is_error():
            raise RequestError("tools" if answer.response_format.kind is FormatKind.TEXT else "response_format",
                               f"cannot be enforced: {matcher.get_error()}")
        return Grammar(text, self.vocab_size, matcher)

    def check(self, where: str, grammar: str) -> None:
        """RequestError naming `where` unless llguidance compiles `grammar` without error or warning."""
        failed, messages = LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
        if failed or messages:
            raise RequestError(where, f"cannot be enforced: {'; '.join(messages)[:500]}")


class GrammarStage:
    """One sequence's grammar: the mask before each answer token is drawn, the matcher's advance after it."""

    def __init__(self, grammar: Grammar, stop_ids: Iterable[int], engine_stop_ids: Iterable[int] = ()):
        self._matcher = grammar.matcher()
        self._words = np.zeros((grammar.vocab_size + 31) // 32, dtype=np.int32)
        self._stops = np.array(sorted(set(stop_ids)), dtype=np.int64)
        # llguidance allows the engine's end-of-sequence ids where the grammar is complete; a request that
        # ignores them (ignore_eos) must not draw them as text.
        self._eos = np.array(sorted(set(engine_stop_ids) - set(stop_ids)), dtype=np.int64)
        self.tokens = 0  # answer tokens the grammar has accepted
        self.error: str | None = None  # what stopped it, once it has raised GrammarError

    @property
    def complete(self) -> bool:
        """The answer so far satisfies the grammar."""
        return self._matcher.is_accepting()

    def fits(self, token_ids: list[int]) -> bool:
        """Whether the grammar, where it stands, accepts all of `token_ids` (nothing is consumed)."""
        return self._matcher.validate_tokens(token_ids) == len(token_ids)

    def apply(self, logits: np.ndarray) -> None:
        """Mask, in place in this row of logits [V], every token the grammar does not allow next."""
        m = self._matcher
        m.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        if m.is_error():
            self._fail(f"the answer's grammar failed: {m.get_error()}")
        vocab = logits.shape[-1]
        allowed = np.unpackbits(self._words.view(np.uint8), count=vocab, bitorder="little").view(bool)
        stops = self._stops[self._stops < vocab]
        stop_logits = logits[stops]
        logits[~allowed] = -np.inf
        logits[self._eos[self._eos < vocab]] = -np.inf
        logits[stops] = stop_logits if m.is_accepting() else -np.inf
        if not (logits > -np.inf).any():
            if m.is_stopped():
                self._fail("the answer is complete, but the request has no stop token to end it (ignore_eos)")
            self._fail(f"no token of the vocabulary can continue the answer after {self.tokens} token(s) "
                       "(the grammar is at a dead end)")

    def accept(self, token_id: int) -> None:
        """Advance on a committed answer token that is not a stop token."""
        if not self._matcher.consume_token(token_id):
            self._fail(f"token {token_id} does not fit the answer's grammar: {self._matcher.get_error()}")
        self.tokens += 1

    def _fail(self, message: str) -> None:
        self.error = message
        raise GrammarError(message)
