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

Bounded rendering. A template is a program, and a request's messages are its input: a template that loops
(`range(100000)` nested in itself, or over every character of every message) or builds strings that grow
without end would hold a worker for as long as it runs. Each render gets a budget (`RenderLimits`): every
for-loop iteration (all loops: the compiled code routes each loop's iterable through the budget, not only
`range`), call, filter, intercepted operator (`*`, `**`, `%`, `+`), `~` concatenation and output
expression costs a step, plus one per STEP_CHARS characters of the string it produced; no string or sequence
built on the way, and not the prompt itself, may exceed `max_chars`; size-multiplying operations (`*`,
`replace`, `join`, `expandtabs`, widths in `%`/`format`/`center`...) are checked before they run, so a
refused one allocates nothing. Past a bound rendering stops with `TemplateLimitError`, whose message names
the bound. A render also stops, with `RenderStopped`, at its next step once its `stop` event is set (the
call that wanted it is over).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
THINK_MARKER = "/think"
NO_THINK_MARKER = "/no_think"

# transformers' own sentinel, kept verbatim: the cut-back logic below depends on its trailing space.
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
# The named special tokens transformers hands to every template (`special_tokens_map`).
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# A string result costs one more step per this many characters, so copying text is paid for by its size.
STEP_CHARS = 64
# Integers a template computes stay below this many bits (`2 ** 10 ** 10` would never finish).
MAX_INT_BITS = 4096
# A number inside a format string (a width or precision) has at most this many digits, whatever max_chars.
_FORMAT_NUMBER = re.compile(r"\d+")


@dataclass(frozen=True)
class RenderLimits:
    """What one render may cost (see the module docstring)."""

    max_steps: int
    max_chars: int


class TemplateLimitError(jinja2.exceptions.TemplateError):
    """Rendering went past one of its `RenderLimits`; the message names the bound."""


class RenderStopped(Exception):
    """The render's `stop` event was set: whoever wanted the prompt is gone."""


class _Budget:
    """One render's steps and size bound."""

    def __init__(self, limits: RenderLimits, stop: threading.Event | None):
        self.limits, self.stop = limits, stop
        self.steps = 0

    def charge(self, steps: int = 1) -> None:
        self.steps += steps
        if self.steps > self.limits.max_steps:
            raise TemplateLimitError(f"rendering took more than {self.limits.max_steps} steps (loop iterations, calls, "
                                     "filters, operators, outputs); the template loops too much for this input")
        if self.stop is not None and self.stop.is_set():
            raise RenderStopped("rendering stopped: the call that asked for it is over")

    def allow(self, size: int, what: str) -> None:
        if size > self.limits.max_chars:
            raise TemplateLimitError(f"{what} would hold {size} characters or items; at most {self.limits.max_chars}")

    def result(self, value: Any, what: str) -> Any:
        """Charge for `value` once it exists, and refuse it past the size bounds."""
        if isinstance(value, (str, list, tuple, dict)):
            self.allow(len(value), what)
            self.charge(1 + len(value) // STEP_CHARS)
        elif isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise TemplateLimitError(f"{what} gave an integer of more than {MAX_INT_BITS} bits")
        else:
            self.charge()
        return value


_BUDGET: ContextVar[_Budget | None] = ContextVar("chat_template_budget", default=None)


def _sized(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, list, tuple, dict)) else None


def _check_format(budget: _Budget, fmt: Any, what: str) -> None:
    """Widths and precisions in a %- or {}-format string: `"%999999999d"` allocates before it can be refused."""
    if isinstance(fmt, str):
        digits = len(str(budget.limits.max_chars))
        if any(len(m) > digits or int(m) > budget.limits.max_chars for m in _FORMAT_NUMBER.findall(fmt)):
            raise TemplateLimitError(f"{what}: a width or precision above {budget.limits.max_chars}")


def _precheck(budget: _Budget, name: str, target: Any, args: tuple, kwargs: dict) -> None:
    """Refuse a filter, or a method of a str, whose result would exceed the size bound, before it runs (an
    integer argument is a width or a count: none may exceed the bound)."""
    what = f"{name}()"
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and value > budget.limits.max_chars:
            raise TemplateLimitError(f"{what}: argument {value} is above {budget.limits.max_chars}")
    if not isinstance(target, str):
        return
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        old, new = args[0], args[1]
        hits = target.count(old) if old else len(target) + 1
        budget.allow(len(target) + hits * max(0, len(new) - len(old)), what)
    elif name == "expandtabs":
        size = args[0] if args and isinstance(args[0], int) else kwargs.get("tabsize", 8)
        budget.allow(len(target) + target.count("\t") * max(0, size), what)
    elif name == "join" and args and (n := _sized(args[0])) is not None:
        budget.allow(len(target) * max(0, n - 1), what)
    elif name in ("format", "format_map"):
        _check_format(budget, target, what)


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


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles every for-loop to iterate through `environment.bounded_iter` and every `~` concatenation
    through `environment.checked`, so that no loop or growing string escapes the render's budget."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        node.iter = nodes.Call(nodes.EnvironmentAttribute("bounded_iter"), [node.iter], [], None, None,
                               lineno=node.iter.lineno)
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked(")
        super().visit_Concat(node, frame)
        self.write(', "~")')


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """transformers' sandbox, with every loop iteration, call, filter, operator and output charged to the
    render's budget (`_BUDGET`; compile-time constant folding runs with none and is not charged)."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def bounded_iter(self, iterable: Iterable[Any]) -> Iterator[Any]:
        budget = _BUDGET.get()
        for item in iterable:
            if budget is not None:
                budget.charge()
            yield item

    def checked(self, value: Any, what: str) -> Any:
        budget = _BUDGET.get()
        return value if budget is None else budget.result(value, what)

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        budget = _BUDGET.get()
        if budget is None:
            return super().call(__context, __obj, *args, **kwargs)
        if isinstance(__obj, LoopContext) and args:  # `loop(children)` of a recursive for-loop
            args = (__self.bounded_iter(args[0]), *args[1:])
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        name = getattr(method, "__name__", "call")
        if isinstance(target := getattr(method, "__self__", None), str):
            _precheck(budget, name, target, args, kwargs)
        return budget.result(super().call(__context, __obj, *args, **kwargs), f"{name}()")

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        budget = _BUDGET.get()
        if budget is not None:
            what = f"the {operator} operator"
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if (size := _sized(seq)) is not None and isinstance(n, int):
                        budget.allow(size * max(0, n), what)
            elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 \
                    and left.bit_length() * right > MAX_INT_BITS:
                raise TemplateLimitError(f"{what} gave an integer of more than {MAX_INT_BITS} bits")
            elif operator == "%":
                _check_format(budget, left, what)
        result = super().call_binop(context, operator, left, right)
        return result if budget is None else budget.result(result, f"the {operator} operator")


def _bounded_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    """`f` charged to the render's budget. The wrapper takes the context, which also keeps jinja from running
    the filter at compile time on constant arguments, outside any budget."""
    pass_arg = _PassArg.from_obj(f)

    @jinja2.pass_context
    def bounded(context: jinja2.runtime.Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        lead = {_PassArg.context: (context,), _PassArg.environment: (context.environment,),
                _PassArg.eval_context: (context.eval_ctx,)}.get(pass_arg, ())
        budget = _BUDGET.get()
        if budget is None:
            return f(*lead, value, *args, **kwargs)
        _precheck(budget, name, value, args, kwargs)
        return budget.result(f(*lead, value, *args, **kwargs), f"the {name} filter")

    return bounded


def _output(value: Any) -> Any:
    """Every `{{ ... }}` output passes here (jinja's `finalize`): charged by its size."""
    budget = _BUDGET.get()
    if budget is not None:
        budget.result(value, "an output")
    return value


def _environment() -> _BoundedEnvironment:
    env = _BoundedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols], finalize=_output
    )
    env.filters = {name: _bounded_filter(name, f) for name, f in env.filters.items()}
    env.filters["tojson"] = _bounded_filter("tojson", _tojson)
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
        limits: RenderLimits | None = None,
        stop: threading.Event | None = None,
    ) -> str:
        """Render `messages` to the prompt text; `reasoning` forces thinking on/off, None keeps the template's
        choice. With `limits`, rendering is bounded (module docstring); a set `stop` ends it at its next step."""
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
        variables = dict(**_plain(self.special_tokens), messages=chat, tools=tool_schemas, documents=None,
                         add_generation_prompt=add_generation_prompt)
        if limits is None:
            rendered = self._template.render(**variables)
        else:
            rendered = _bounded_render(self._template, variables, _Budget(limits, stop))
        if continue_final_message:
            rendered = _cut_at_continue_tag(rendered, final_text)
        return rendered


def _bounded_render(template: jinja2.Template, variables: dict[str, Any], budget: _Budget) -> str:
    token = _BUDGET.set(budget)
    try:
        parts: list[str] = []
        size = 0
        for chunk in template.generate(**variables):
            size += len(chunk)
            budget.allow(size, "the rendered prompt")
            budget.charge(1 + len(chunk) // STEP_CHARS)
            parts.append(chunk)
        return "".join(parts)
    finally:
        _BUDGET.reset(token)


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
