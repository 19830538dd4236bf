"""What a request asks its answer to be, written as one llguidance grammar for the grammar stage (grammar.py).

Two things shape an answer. The tool choice: `auto` (text, or text followed by valid tool calls), `required`
(only tool calls), `none` (only text, never a call) or a tool's name (only calls to it); `parallel_tool_calls`
false allows one call instead of a list of them. And the response format: free text, any JSON object, a
JSON Schema, a regular expression, or a Lark grammar. A tool call is valid when it is written in the model's
own format, as the chat template renders one: `<TOOLCALL>[{"name": "move_arm", "arguments": {...}}]</TOOLCALL>`
with a declared name and arguments that satisfy that tool's `parameters` schema.

JSON is written compactly with the template's separators (`, ` and `: `, as `tojson` writes them): a grammar
that allowed free whitespace would let a model pad an answer forever. The answer may begin with a little
whitespace (the `\\n\\n` the thinking stage forces after `</think>`). The tags are matched as the tokenizer's
own `<TOOLCALL>` tokens when it has them (found by their text), as text otherwise.

Each schema is checked on its own first, so that a keyword the grammar cannot enforce (`uniqueItems`, `not`,
...) is refused with the field it came from, never dropped: `AnswerFormat.grammar()` raises a RequestError
naming `tools[i].parameters` or `response_format`. None means the answer is free and needs no grammar.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llguidance import regex_to_lark

from edge_runtime.engine.records import RequestError
from edge_runtime.engine.toolcalls import CLOSE_TAG, OPEN_TAG

# Compact JSON with the chat template's separators; llguidance reads these options from the schema itself.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
LEADING_SPACE = r"/[ \t\r\n]{1,4}/"
TEXT_WITHOUT_CALLS = f"/(?s:.+)/ & ~/(?s:.*{OPEN_TAG}.*)/"


class ToolChoice(enum.StrEnum):
    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"
    NAMED = "named"  # the request names the one tool to call


class FormatKind(enum.StrEnum):
    TEXT = "text"
    JSON_OBJECT = "json_object"
    JSON_SCHEMA = "json_schema"
    REGEX = "regex"
    LARK = "lark"


@dataclass(frozen=True)
class ResponseFormat:
    """The answer's own shape (when it is not a tool call). `spec`: the schema (a dict) for JSON_SCHEMA, the
    pattern for REGEX, the grammar's text for LARK, None otherwise."""

    kind: FormatKind = FormatKind.TEXT
    spec: dict[str, Any] | str | None = None

    @classmethod
    def from_openai(cls, fmt: Any) -> "ResponseFormat":
        """OpenAI's `response_format`: {"type": "text"}, {"type": "json_object"} or {"type": "json_schema",
        "json_schema": {"name": ..., "schema": {...}}}; also {"type": "regex", "regex": PATTERN} and
        {"type": "lark", "lark": GRAMMAR}. None: free text."""
        if fmt is None:
            return cls()
        if not isinstance(fmt, dict):
            raise RequestError("response_format", f"must be an object, got {type(fmt).__name__}")
        try:
            kind = FormatKind(fmt.get("type", "text"))
        except ValueError:
            raise RequestError("response_format.type", f"unknown type {str(fmt.get('type'))[:40]!r}; one of "
                                                       f"{', '.join(k.value for k in FormatKind)}") from None
        if kind is FormatKind.JSON_SCHEMA:
            spec = fmt.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise RequestError("response_format.json_schema.schema", "must be a JSON Schema object")
            return cls(kind, schema)
        if kind in (FormatKind.REGEX, FormatKind.LARK):
            if not isinstance(fmt.get(kind.value), str):
                raise RequestError(f"response_format.{kind.value}", "must be a string")
            return cls(kind, fmt[kind.value])
        return cls(kind)


@dataclass(frozen=True)
class ToolTags:
    """How the grammar writes `<TOOLCALL>` and `</TOOLCALL>`: token references or quoted text."""

    open: str = json.dumps(OPEN_TAG)
    close: str = json.dumps(CLOSE_TAG)

    @classmethod
    def for_tokenizer(cls, token_to_id: Callable[[str], int | None]) -> "ToolTags":
        ids = [token_to_id(OPEN_TAG), token_to_id(CLOSE_TAG)]
        return cls(*(f"<[{i}]>" for i in ids)) if None not in ids else cls()


@dataclass(frozen=True)
class AnswerFormat:
    """One request's answer constraints (chat requests: tools as the chat layer holds them)."""

    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str = "auto"  # auto | none | required | a tool's name
    parallel_tool_calls: bool = True
    response_format: ResponseFormat = ResponseFormat()

    @property
    def choice(self) -> ToolChoice:
        named = self.tool_choice not in (ToolChoice.AUTO, ToolChoice.NONE, ToolChoice.REQUIRED)
        return ToolChoice.NAMED if named else ToolChoice(self.tool_choice)

    def check_choice(self) -> None:
        """A tool_choice that names a tool must name a declared one; required and named need tools."""
        names = [_tool(t)["name"] for t in self.tools]
        if self.choice is ToolChoice.NAMED and self.tool_choice not in names:
            raise RequestError("tool_choice", f"names unknown tool {self.tool_choice[:64]!r}; tools: {names}")
        if self.choice in (ToolChoice.REQUIRED, ToolChoice.NAMED) and not self.tools:
            raise RequestError("tool_choice", f"{self.tool_choice!r} needs tools")

    def grammar(self, tags: ToolTags, check: Callable[[str, str], None]) -> str | None:
        """The llguidance grammar (its JSON text) for the answer, or None when the answer is free text.
        `check(where, grammar)` raises a RequestError naming `where` when llguidance refuses `grammar`."""
        self.check_choice()
        choice = self.choice
        calls = None
        if self.tools and choice is not ToolChoice.NONE:
            wanted = [t for t in self.tools if choice is not ToolChoice.NAMED or _tool(t)["name"] == self.tool_choice]
            calls = self._calls_rules(wanted, tags, check)
        answer = self._format_rule(check)
        if calls is None and answer is None and not (self.tools and choice is ToolChoice.NONE):
            return None
        rules = [f"start: {LEADING_SPACE} body | body"]
        if choice in (ToolChoice.REQUIRED, ToolChoice.NAMED):
            rules.append("body: calls")
        elif answer is not None:  # a formatted answer, or (auto) calls instead of it
            rules.append("body: answer" + (" | calls" if calls else ""))
            rules.append(f"answer: {answer}")
        else:  # free text, and (auto) calls after it
            rules.append("body: TEXT" + (" | TEXT? calls" if calls else ""))
            rules.append(f"TEXT: {TEXT_WITHOUT_CALLS}")
        rules += calls or []
        grammars = [{"lark_grammar": "\n".join(rules) + "\n"}]
        if self.response_format.kind is FormatKind.LARK:
            grammars.append({"name": "answer_format", "lark_grammar": self.response_format.spec})
        return json.dumps({"grammars": grammars})

    def _calls_rules(self, tools: list[dict[str, Any]], tags: ToolTags, check: Callable[[str, str], None]) -> list[str]:
        rules = []
        for i, t in enumerate(tools):
            fn = _tool(t)
            where = f"tools[{self.tools.index(t)}].parameters"
            schema = _json_schema(_arguments_schema(fn.get("parameters"), where))
            check(where, _lark_grammar(f"start: {schema}"))
            head = json.dumps('{"name": ' + json.dumps(fn["name"], ensure_ascii=False) + ', "arguments": ',
                              ensure_ascii=False)
            rules.append(f"call_{i}: {head} {schema} \"}}\"")
        rules.append("call: " + " | ".join(f"call_{i}" for i in range(len(tools))))
        more = ' (", " call)*' if self.parallel_tool_calls else ""
        rules.append(f'calls: {tags.open} "[" call{more} "]" {tags.close}')
        return rules

    def _format_rule(self, check: Callable[[str, str], None]) -> str | None:
        kind, spec = self.response_format.kind, self.response_format.spec
        if kind is FormatKind.TEXT:
            return None
        if kind is FormatKind.JSON_OBJECT:
            return _json_schema({"type": "object"})
        if kind is FormatKind.JSON_SCHEMA:
            if not isinstance(spec, dict):
                raise RequestError("response_format.json_schema", "must be a JSON object")
            rule = _json_schema(spec)
            check("response_format.json_schema", _lark_grammar(f"start: {rule}"))
            return rule
        if not isinstance(spec, str) or not spec:
            raise RequestError(f"response_format.{kind.value}", "is empty")
        if kind is FormatKind.REGEX:
            rule = f"/{regex_to_lark(spec)}/"
            check("response_format.regex", _lark_grammar(f"start: {rule}"))
            return rule
        check("response_format.lark", json.dumps({"grammars": [{"lark_grammar": spec}]}))
        return "@answer_format"


def _tool(t: dict[str, Any]) -> dict[str, Any]:
    return t.get("function") or t


def _arguments_schema(parameters: Any, where: str) -> dict[str, Any]:
    """A tool's parameters as the schema of its `arguments` object (an absent type means an object)."""
    if parameters is None:
        return {"type": "object"}
    if not isinstance(parameters, dict):
        raise RequestError(where, "must be a JSON Schema object")
    if "type" not in parameters:
        return {**parameters, "type": "object"}
    if parameters["type"] != "object":
        raise RequestError(where, f"must describe a JSON object (the call's arguments), got type {parameters['type']!r}")
    return parameters


def _json_schema(schema: dict[str, Any]) -> str:
    # The schema's own "x-guidance" options (llguidance's, not JSON Schema's) are replaced: ours keep the JSON
    # compact and the grammar strict.
    return "%json " + json.dumps({**schema, "x-guidance": JSON_STYLE}, ensure_ascii=False)


def _lark_grammar(lark: str) -> str:
    return json.dumps({"grammars": [{"lark_grammar": lark}]})
