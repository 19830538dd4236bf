"""Output processing for one sequence: committed tokens with their channel in, text events, tool calls and
stops out.

Per token: control tokens dropped by id (turn markers, `<s>`, tags: control_tokens.py says which; never
shown as text) -> incremental detokenization (never half a UTF-8 character) -> think tags spelled out in
ordinary tokens dropped (neither channel ever shows them) -> the text on the token's channel, as the
thinking stage decided it -> on the answer channel, stop strings (never shown partially) and <TOOLCALL>
parsing (never leaking the tag or half a call). The detokenized text of a sequence, before those last
steps, is `tokenizer.decode(shown ids, skip_special_tokens=False)`; a control token between the pieces
of a character does not break it. Every token id reaches the stream exactly once, on the delta of the
step that committed it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenizers import Tokenizer

from edge_runtime.engine.control_tokens import control_tokens
from edge_runtime.engine.detokenizer import IncrementalDecoder, StopMatcher
from edge_runtime.engine.records import Channel, Delta, Event, TokenLogprobs, ToolCallRecord
from edge_runtime.engine.thinking import TagStripper
from edge_runtime.engine.toolcalls import TextDelta, ToolCall, ToolCallParser


@dataclass
class OutputProcessor:
    tokenizer: Tokenizer | None
    prompt_ids: list[int]
    stop_strings: list[str]
    tool_names: list[str] | None
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    stopped_by: str | None = None  # the stop string that ended the answer
    # Each channel's text in pieces, joined when read: appending to a str attribute copies all of it.
    _reasoning: list[str] = field(default_factory=list, init=False, repr=False)
    _answer: list[str] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.tokenizer is not None:
            # Which ids reach the decoder is decided here, by text, not by the tokenizer's special flag.
            self._decoder = IncrementalDecoder(self.tokenizer, self.prompt_ids, skip_special_tokens=False)
            self._control = control_tokens(self.tokenizer)
        self._tags = TagStripper()
        self._channel = Channel.REASONING
        self._stops = StopMatcher(self.stop_strings)
        self._tools = ToolCallParser(self.tool_names) if self.tool_names is not None else None
        self._answer_started = False

    @property
    def reasoning_text(self) -> str:
        return "".join(self._reasoning)

    @property
    def answer_text(self) -> str:
        return "".join(self._answer)

    def push(self, token_id: int, channel: Channel, logprobs: TokenLogprobs | None) -> list[Event]:
        """Events for one committed (non-stop) token."""
        events: list[Event] = []
        if channel is not self._channel:  # text held back so far belongs to the channel it came from
            events += self._text_events(self._tags.flush())
            self._channel = channel
        shown = self.tokenizer is not None and self._control.shown(token_id, channel, self._tools is not None)
        text = self._decoder.push(token_id) if shown else ""
        events += self._text_events(self._tags.feed(text))
        self._attach(events, token_id, channel, logprobs)
        return events

    def finish(self, cut_off: str | None = None) -> list[Event]:
        """Release everything held back (end of stream). `cut_off`: why the answer ended unfinished, the error
        of a tool call left open."""
        if self.stopped_by is not None:
            return []
        text = self._tags.feed(self._decoder.flush()) if self.tokenizer is not None else ""
        events = self._text_events(text + self._tags.flush())
        if self.stopped_by is None:  # flushing the text may itself complete a stop string
            events += self._answer_events(self._stops.flush(), final=True, cut_off=cut_off)
        return events

    def _text_events(self, text: str) -> list[Event]:
        if not text or self.stopped_by is not None:
            return []
        if self._channel is Channel.REASONING:
            self._reasoning.append(text)
            return [Delta(text, Channel.REASONING)]
        text = text if self._answer_started else text.lstrip()
        self._answer_started = self._answer_started or bool(text)
        safe, stop = self._stops.push(text)
        events = self._answer_events(safe, final=False)
        if stop is not None:
            self.stopped_by = stop
            events += self._answer_events("", final=True)
        return events

    def _answer_events(self, text: str, final: bool, cut_off: str | None = None) -> list[Event]:
        if self._tools is None:
            items = [TextDelta(text)] if text else []
        else:
            items = self._tools.feed(text) if text else []
            if final:
                items += self._tools.flush(cut_off)
        events: list[Event] = []
        for item in items:
            if isinstance(item, ToolCall):
                record = ToolCallRecord(len(self.tool_calls), item.name, item.arguments_json, item.error)
                self.tool_calls.append(record)
                events.append(record)
            elif item.text:
                self._answer.append(item.text)
                events.append(Delta(item.text, Channel.ANSWER))
        return events

    @staticmethod
    def _attach(events: list[Event], token_id: int, channel: Channel, logprobs: TokenLogprobs | None) -> None:
        target = next((e for e in events if isinstance(e, Delta) and e.channel is channel), None)
        if target is None:
            target = Delta("", channel)
            events.insert(0, target)
        target.token_ids.append(token_id)
        if logprobs is not None:
            target.logprobs.append(logprobs)
