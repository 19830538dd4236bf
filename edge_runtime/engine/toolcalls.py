"""Streaming extraction of `<TOOLCALL>[...]</TOOLCALL>` blocks from the model's answer text.

The model calls tools by writing `<TOOLCALL>[{"name": ..., "arguments": {...}}, ...]</TOOLCALL>` in its
answer (the chat template's format). The service streams the answer as text deltas; this parser sits in
that stream and splits it into answer text, which never shows a tag or the start of one, and parsed
`ToolCall` records, produced when the closing tag arrives.

Bad output from the model is data, not an exception: malformed JSON, a wrong shape, or a tool name that
is not in the request's tool list become a `ToolCall` with `error` set, and an unclosed block at the end
of the stream becomes one too. Text around the block (e.g. the `\\n\\n` the template puts before it) is
passed through untouched; trimming it is the caller's choice.

A small state machine: TEXT (passing answer text, holding back a suffix that could start the open tag)
and CALL (collecting the block body until the close tag).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

OPEN_TAG = "<TOOLCALL>"
CLOSE_TAG = "</TOOLCALL>"


@dataclass(frozen=True)
class TextDelta:
    """Answer text that is safe to show."""

    text: str


@dataclass(frozen=True)
class ToolCall:
    """One call from a `<TOOLCALL>` block; `error` is set (and `arguments` may be None) when it is unusable."""

    name: str
    arguments_json: str
    arguments: dict[str, Any] | None
    error: str | None = None


ToolCallEvent = TextDelta | ToolCall


class _State(enum.Enum):
    TEXT = "text"
    CALL = "call"


def held_back_length(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag` (it may yet become the tag)."""
    for length in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-length:]):
            return length
    return 0


class ToolCallParser:
    """Feed answer text deltas, get `TextDelta` and `ToolCall` events; call `flush()` at end of stream."""

    def __init__(self, tool_names: Iterable[str] | None = None) -> None:
        # None means "the request declared no tool list": any name is accepted.
        self._tool_names = None if tool_names is None else frozenset(tool_names)
        self._state = _State.TEXT
        self._held = ""  # TEXT: the end of the text so far that may begin the open tag
        # CALL: the block body so far, in pieces, and its end that may begin the close tag; only that end
        # and the new text are searched, so a long block costs no more per delta than a short one.
        self._body: list[str] = []
        self._tail = ""
        self.chars_searched = 0  # characters searched for a tag, for checking the work stays linear

    def feed(self, delta: str) -> list[ToolCallEvent]:
        events: list[ToolCallEvent] = []
        while True:
            if self._state is _State.TEXT:
                buffer, self._held = self._held + delta, ""
                self.chars_searched += len(buffer)
                start = buffer.find(OPEN_TAG)
                if start < 0:
                    keep = held_back_length(buffer, OPEN_TAG)
                    _emit_text(events, buffer[: len(buffer) - keep])
                    self._held = buffer[len(buffer) - keep :]
                    return events
                _emit_text(events, buffer[:start])
                delta = buffer[start + len(OPEN_TAG) :]
                self._state = _State.CALL
            else:
                window = self._tail + delta
                self.chars_searched += len(window)
                end = window.find(CLOSE_TAG)
                if end < 0:
                    self._body.append(delta)
                    self._tail = window[1 - len(CLOSE_TAG) :]
                    return events
                body = "".join(self._body)
                cut = end - len(self._tail)  # negative: the tag began in the tail, already in the body
                body = body[: len(body) + cut] if cut < 0 else body + delta[:cut]
                events.extend(self._parse_block(body))
                delta = window[end + len(CLOSE_TAG) :]
                self._body, self._tail = [], ""
                self._state = _State.TEXT

    def flush(self, unterminated: str | None = None) -> list[ToolCallEvent]:
        """End of stream: release held-back text, or report an unclosed block as an error record (with
        `unterminated` as its error when the caller knows why it was left open)."""
        events: list[ToolCallEvent] = []
        if self._state is _State.TEXT:
            _emit_text(events, self._held)
        else:
            events.append(ToolCall("", "".join(self._body), None, unterminated or f"unterminated {OPEN_TAG} block"))
        self._held, self._body, self._tail = "", [], ""
        self._state = _State.TEXT
        return events

    def _parse_block(self, body: str) -> list[ToolCall]:
        try:
            parsed = json.loads(body)
        except json.JSONDecodeError as exc:
            return [ToolCall("", body, None, f"invalid JSON in {OPEN_TAG} block: {exc}")]
        # The format is a list; a lone object is the same call without its brackets, so accept it.
        items = [parsed] if isinstance(parsed, dict) else parsed
        if not isinstance(items, list):
            return [ToolCall("", body, None, f"{OPEN_TAG} block must hold a JSON list of calls")]
        return [self._parse_call(item) for item in items]

    def _parse_call(self, item: Any) -> ToolCall:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return ToolCall("", json.dumps(item, ensure_ascii=False), None, 'a call must be an object with a string "name"')
        name = item["name"]
        raw = item.get("arguments", {})
        if isinstance(raw, str):
            # The template allows arguments written as a JSON string; keep the model's own text.
            arguments_json = raw
            try:
                arguments = json.loads(raw)
            except json.JSONDecodeError as exc:
                return ToolCall(name, raw, None, f"arguments are not valid JSON: {exc}")
        else:
            arguments_json = json.dumps(raw, ensure_ascii=False)
            arguments = raw
        if not isinstance(arguments, dict):
            return ToolCall(name, arguments_json, None, "arguments must be a JSON object")
        if self._tool_names is not None and name not in self._tool_names:
            return ToolCall(name, arguments_json, arguments, f"unknown tool {name!r}")
        return ToolCall(name, arguments_json, arguments)


def _emit_text(events: list[ToolCallEvent], text: str) -> None:
    if text:
        events.append(TextDelta(text))
