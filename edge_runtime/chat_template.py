"""Render a model's chat template on the device exactly as transformers' `apply_chat_template` does.

The device has no transformers, but the prompt it builds must be byte-identical to the one the model
was trained and evaluated with. This module rebuilds transformers' jinja environment (sandbox,
`trim_blocks`/`lstrip_blocks`, its `tojson`, `raise_exception`, `strftime_now`, `dict`, `namespace`, loop
controls) and its message preprocessing (None-valued keys dropped, reasoning fields aliased,
`continue_final_message` handled by tagging the final message and cutting the render there).

Like transformers, the template is NOT given `continue_final_message`: transformers never passes it, so
a template that tests `continue_final_message is defined` sees it undefined, and we must do the same.

Per-request reasoning control (`reasoning=` in `ChatTemplate.render`) is done only through what the
Nemotron template itself supports: the `/think` and `/no_think` markers. The template decides from the
LAST user or system message carrying a marker (in one message `/think` beats `/no_think`) and strips the
markers from what it renders. So to force a mode we append ` /no_think` (or ` /think`) to the last
user/system message, first removing any `/think` from it when forcing it off; the rendered text of that
message is unchanged because the template strips the markers and surrounding whitespace anyway. With
no user or system message at all, a system message holding just the marker is put first, which the
template renders exactly like a missing system message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
THINK_MARKER = "/think"
NO_THINK_MARKER = "/no_think"

# transformers' own sentinel, kept verbatim: the cut-back logic below depends on its trailing space.
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
# The named special tokens transformers hands to every template (`special_tokens_map`).
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class _GenerationTag(jinja2.ext.Extension):
    """Accepts `{% generation %}...{% endgeneration %}` so templates written for assistant masks compile.

    transformers uses the tag to record assistant spans; rendering text needs only the body.
    """

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


class _TemplateDict:
    # transformers exposes `dict` through this narrow callable so templates cannot reach the real type.
    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    # Same guard as transformers: no underscore attributes, so no path to CPython internals.
    def __init__(*args: Any, **kwargs: Any) -> None:
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set namespace attribute {name!r}")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # Not jinja's built-in: that one HTML-escapes `<`, `>`, `&` and `'`, which would change the prompt.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


def _plain(value: Any) -> Any:
    """Rebuild template inputs from plain JSON types (as transformers does) so the sandbox sees no objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    return f"<{type(value).__name__}>"


def _normalize(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Drop None-valued keys and alias reasoning fields, the way transformers prepares a chat."""
    out = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise TypeError(f"chat messages must be mappings, got {message!r}")
        msg = _plain({k: v for k, v in message.items() if v is not None})
        reasoning = next((msg[k] for k in _REASONING_FIELDS if msg.get(k) is not None), None)
        if reasoning is not None:
            msg = {"thinking": reasoning, **msg, "reasoning_content": reasoning}
        out.append(msg)
    return out


def _force_reasoning(messages: list[dict[str, Any]], enabled: bool) -> list[dict[str, Any]]:
    """Make the template's own `/think`/`/no_think` logic pick `enabled` (see the module docstring)."""
    marker = THINK_MARKER if enabled else NO_THINK_MARKER
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.get("role") in ("user", "system") and isinstance(message.get("content"), str):
            content = message["content"]
            if not enabled:
                # Within one message `/think` wins, so it has to go; loop because removal can form a new one.
                while THINK_MARKER in content:
                    content = content.replace(THINK_MARKER, "")
            forced = list(messages)
            forced[index] = {**message, "content": f"{content} {marker}"}
            return forced
    return [{"role": "system", "content": marker}, *messages]


def thinking_enabled(rendered_prompt: str) -> bool:
    """Whether the prompt leaves the model inside an open `<think>` (so its first tokens are reasoning)."""
    start = rendered_prompt.rfind(THINK_OPEN)
    return start >= 0 and THINK_CLOSE not in rendered_prompt[start:]


class ChatTemplate:
    """A compiled chat template plus the special-token names it may reference."""

    def __init__(self, template_text: str, special_tokens: Mapping[str, str]) -> None:
        self.template_text = template_text
        self.special_tokens = dict(special_tokens)
        self._template = _environment().from_string(template_text)

    @classmethod
    def from_tokenizer_config(cls, config: Mapping[str, Any]) -> ChatTemplate:
        """Build from a parsed `tokenizer_config.json` (its `chat_template` and named special tokens)."""
        special = {key: config[key] for key in SPECIAL_TOKEN_KEYS if isinstance(config.get(key), str)}
        return cls(config["chat_template"], special)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        reasoning: bool | None = None,
    ) -> str:
        """Render `messages` to the prompt text; `reasoning` forces thinking on/off, None keeps the template's choice."""
        if not messages:
            raise ValueError("cannot render an empty conversation")
        if continue_final_message and add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt are mutually exclusive")
        chat = _normalize(messages)
        if reasoning is not None:
            chat = _force_reasoning(chat, reasoning)
        final_text = ""
        if continue_final_message:
            final_text = chat[-1].get("content")
            if not isinstance(final_text, str):
                raise ValueError("continue_final_message needs a final message with string content")
            chat[-1] = {**chat[-1], "content": final_text + _CONTINUE_TAG}
        tool_schemas = None if tools is None else [_plain(dict(tool)) for tool in tools]
        rendered = self._template.render(
            **_plain(self.special_tokens),
            messages=chat,
            tools=tool_schemas,
            documents=None,
            add_generation_prompt=add_generation_prompt,
        )
        if continue_final_message:
            rendered = _cut_at_continue_tag(rendered, final_text)
        return rendered


def _cut_at_continue_tag(rendered: str, final_text: str) -> str:
    """End the prompt where the final message's text ends, as transformers does."""
    tag = _CONTINUE_TAG.strip()
    if final_text.strip() not in rendered or tag not in rendered:
        raise ValueError("continue_final_message is set but the template dropped part of the final message")
    tag_loc = rendered.rindex(tag)
    if rendered[tag_loc : tag_loc + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
        return rendered[:tag_loc]
    # The template stripped the tag's trailing space, so it may have trimmed the message's own spacing too.
    return rendered[:tag_loc].rstrip()
