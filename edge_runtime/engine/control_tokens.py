"""Which generated tokens may become text: the model's control tokens never do, except where a parser reads them.

A tokenizer's added tokens are the model's control tokens: the turn markers (`<SPECIAL_10>`, ...), `<s>`,
`</s>`, `<unk>`, and the tags the model writes in its own output (`<think>`, `<TOOLCALL>`, ...). Ordinary
text never needs one (byte-level BPE spells any text from its learned vocabulary), and none is text a user
should see, so output shows none of them, whatever the tokenizer's `special` flag says: the tags are
non-special so that `decode(skip_special_tokens=True)` keeps them for parsers, and a runtime cannot count on
every tokenizer marking them alike. The one exception is `<TOOLCALL>`/`</TOOLCALL>` on the answer channel of
a request whose tool-call parser reads them (and takes them out of the text). The think tags need no such
exception: the thinking stage gives every token its channel by id.

What is read is the table of added tokens (14 in the demo tokenizer, at most a few thousand in real ones),
never the vocabulary, and once per tokenizer; per token it is one set lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from tokenizers import Tokenizer

from edge_runtime.engine.records import Channel
from edge_runtime.engine.toolcalls import CLOSE_TAG, OPEN_TAG


@dataclass(frozen=True)
class ControlTokens:
    """One tokenizer's control tokens, by id."""

    ids: frozenset[int]  # every added token
    tool_tags: frozenset[int]  # the <TOOLCALL> tags among them

    def shown(self, token_id: int, channel: Channel, parsing_tools: bool) -> bool:
        """Whether this token's text goes to the output (`parsing_tools`: the request's answer has a
        tool-call parser)."""
        if token_id not in self.ids:
            return True
        return parsing_tools and channel is Channel.ANSWER and token_id in self.tool_tags


# Keyed by the tokenizer object: the runtime never adds tokens to a loaded tokenizer, and an engine keeps
# one for its lifetime, so a small cache reads each table once.
@lru_cache(maxsize=8)
def control_tokens(tokenizer: Tokenizer) -> ControlTokens:
    by_text = {token.content: token_id for token_id, token in tokenizer.get_added_tokens_decoder().items()}
    tool_tags = frozenset(by_text[tag] for tag in (OPEN_TAG, CLOSE_TAG) if tag in by_text)
    return ControlTokens(frozenset(by_text.values()), tool_tags)
