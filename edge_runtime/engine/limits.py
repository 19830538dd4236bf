"""How much one request may carry, derived from the model's context limit: the bounds the service checks
before it parses, renders or tokenizes anything.

A request is only worth serving if its prompt fits the context (`max_context` tokens), so each bound is what
a context's worth of prompt could need, with a wide margin; each can be set in `[limits]` instead.

  max_text_chars      all the text a prompt is made of, together: a Generate prompt or a CountTokens text; a
                      chat's message contents, names and tool-call arguments, its tools' names, descriptions and
                      schemas, its thinking close text; and the rendered prompt itself. Default: context x
                      CHARS_PER_TOKEN. A token of Nemotron's vocabulary averages about 4 characters of English;
                      a text refused here would need 4x that to fit.
  max_request_bytes   the serialized request, checked on the raw bytes before protobuf parses them: UTF-8's 4
                      bytes for each of max_text_chars, plus ENVELOPE_BYTES for everything else (sampling, 16
                      stop strings of 1000 characters, ids); at most gRPC's transport limit, MAX_MESSAGE_BYTES.
  max_messages        messages plus the tool calls in them: context (each renders to at least one token).
  max_tools           context // TOKENS_PER_TOOL (a tool's name and empty schema alone render to more).
  template_max_steps  the chat template's budget for one render (chat_template.RenderLimits):
                      TEMPLATE_STEPS_PER_ITEM per message and tool allowed plus one per
                      TEMPLATE_CHARS_PER_STEP characters of text. The model's own template takes about 8 steps
                      a message or tool and one per 9 characters.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_runtime.bundle.chat_template import RenderLimits
from edge_runtime.engine.records import RequestError

# The largest message either peer of the gRPC service accepts (edge_runtime/service/options.py sets the
# channels to it): a request is refused past the smaller max_request_bytes before it is parsed.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
CHARS_PER_TOKEN = 16
ENVELOPE_BYTES = 128 * 1024
TOKENS_PER_TOOL = 16
TEMPLATE_STEPS_PER_ITEM = 16
TEMPLATE_CHARS_PER_STEP = 4


@dataclass(frozen=True)
class RequestLimits:
    max_request_bytes: int
    max_text_chars: int
    max_messages: int
    max_tools: int
    template_max_steps: int

    @classmethod
    def for_context(cls, context: int, *, max_request_bytes: int | None = None, max_text_chars: int | None = None,
                    max_messages: int | None = None, max_tools: int | None = None,
                    template_max_steps: int | None = None) -> RequestLimits:
        """The defaults for a `context`-token limit (module docstring), each replaced by the value given."""
        text = max_text_chars or context * CHARS_PER_TOKEN
        messages = max_messages or context
        tools = max_tools or max(1, context // TOKENS_PER_TOOL)
        return cls(
            max_request_bytes=max_request_bytes or min(MAX_MESSAGE_BYTES, 4 * text + ENVELOPE_BYTES),
            max_text_chars=text,
            max_messages=messages,
            max_tools=tools,
            template_max_steps=template_max_steps
            or TEMPLATE_STEPS_PER_ITEM * (messages + tools) + text // TEMPLATE_CHARS_PER_STEP,
        )

    @property
    def render(self) -> RenderLimits:
        """What one chat template render may cost: the step budget, and the prompt's own text bound."""
        return RenderLimits(max_steps=self.template_max_steps, max_chars=self.max_text_chars)

    def check_counts(self, items: int, tools: int, prefix: str = "") -> None:
        """`items` messages and tool calls in them, and `tools`, against max_messages and max_tools."""
        if items > self.max_messages:
            raise RequestError(f"{prefix}messages", f"{items} messages and tool calls; at most {self.max_messages} "
                                                    "([limits] max_messages)")
        if tools > self.max_tools:
            raise RequestError(f"{prefix}tools", f"{tools} tools; at most {self.max_tools} ([limits] max_tools)")

    def tally(self) -> TextTally:
        return TextTally(self.max_text_chars)


class TextTally:
    """The characters of a request's text fields, added up field by field against max_text_chars: the field
    that crosses the limit is the one named."""

    def __init__(self, limit: int):
        self.limit, self.total = limit, 0

    def add(self, where: str, text: str) -> None:
        self.total += len(text)
        if self.total > self.limit:
            raise RequestError(where, f"the request's text reaches {self.total} characters here; at most "
                                      f"{self.limit} in all ([limits] max_text_chars)")
