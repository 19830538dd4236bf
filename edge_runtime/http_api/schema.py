"""The OpenAI-compatible request bodies, validated by pydantic: what `POST /v1/chat/completions` and
`POST /v1/completions` accept.

Fields follow OpenAI's chat-completions and completions APIs; fields a client library sends that change
nothing here (`model`, `user`, `store`, `metadata`, ...) are accepted and ignored, as vLLM does, and so are
unknown ones. A field we cannot honour with a value that would need it (`n` > 1, `echo`) is refused. Our
extras ride in the body beside them, as vLLM's extra sampling fields do (the `openai` client's
`extra_body`): the thinking budget (`max_thinking_tokens`, `thinking_grace_tokens`, `thinking_deadline_ms`,
`max_answer_tokens`), `reasoning` (on or off; also `chat_template_kwargs.enable_thinking`), `priority`,
`top_k`, `min_p`, `repetition_penalty` and `ignore_eos`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_STOP = 16


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class FunctionCall(_Body):
    name: str
    arguments: str = "{}"  # a JSON object, as a string (OpenAI's shape)


class ToolCall(_Body):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None  # an earlier reply's reasoning: the template drops it anyway

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class Function(_Body):
    name: str = Field(min_length=1)
    description: str = ""
    parameters: dict[str, Any] | None = None


class Tool(_Body):
    type: Literal["function"] = "function"
    function: Function


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"] = "function"
    function: NamedFunction


class StreamOptions(_Body):
    include_usage: bool = False


class ChatTemplateKwargs(_Body):
    enable_thinking: bool | None = None


class _Sampling(_Body):
    temperature: Annotated[float, Field(ge=0.0, le=100.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    seed: Annotated[int, Field(ge=0)] | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    priority: Literal["realtime", "normal", "background"] | None = None
    ignore_eos: bool = False

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None  # checked by ResponseFormat.from_openai, naming the field
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    reasoning: bool | None = None
    chat_template_kwargs: ChatTemplateKwargs | None = None
    max_thinking_tokens: Annotated[int, Field(ge=0)] | None = None
    thinking_grace_tokens: Annotated[int, Field(ge=0)] | None = None
    thinking_deadline_ms: Annotated[float, Field(ge=0)] | None = None
    max_answer_tokens: Annotated[int, Field(ge=0)] | None = None


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] | Annotated[list[int], Field(min_length=1)]
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    echo: Literal[False] = False
    max_tokens: Annotated[int, Field(ge=1)] | None = 16  # OpenAI's default for completions
