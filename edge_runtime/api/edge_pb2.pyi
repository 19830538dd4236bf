from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_REALTIME: _ClassVar[Priority]
    PRIORITY_NORMAL: _ClassVar[Priority]
    PRIORITY_BACKGROUND: _ClassVar[Priority]

class Channel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_UNSPECIFIED: _ClassVar[Channel]
    CHANNEL_REASONING: _ClassVar[Channel]
    CHANNEL_ANSWER: _ClassVar[Channel]
    CHANNEL_TOOL_CALL: _ClassVar[Channel]

class ThinkingEndedBy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    THINKING_ENDED_BY_UNSPECIFIED: _ClassVar[ThinkingEndedBy]
    THINKING_ENDED_BY_MODEL: _ClassVar[ThinkingEndedBy]
    THINKING_ENDED_BY_TOKEN_BUDGET: _ClassVar[ThinkingEndedBy]
    THINKING_ENDED_BY_DEADLINE: _ClassVar[ThinkingEndedBy]
    THINKING_ENDED_BY_DISABLED: _ClassVar[ThinkingEndedBy]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_STOP_SEQUENCE: _ClassVar[FinishReason]
    FINISH_REASON_CANCELLED: _ClassVar[FinishReason]
    FINISH_REASON_ERROR: _ClassVar[FinishReason]

class GrammarOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRAMMAR_OUTCOME_UNSPECIFIED: _ClassVar[GrammarOutcome]
    GRAMMAR_OUTCOME_COMPLETE: _ClassVar[GrammarOutcome]
    GRAMMAR_OUTCOME_CUT_OFF: _ClassVar[GrammarOutcome]
    GRAMMAR_OUTCOME_FAILED: _ClassVar[GrammarOutcome]
    GRAMMAR_OUTCOME_UNFINISHED: _ClassVar[GrammarOutcome]
PRIORITY_UNSPECIFIED: Priority
PRIORITY_REALTIME: Priority
PRIORITY_NORMAL: Priority
PRIORITY_BACKGROUND: Priority
CHANNEL_UNSPECIFIED: Channel
CHANNEL_REASONING: Channel
CHANNEL_ANSWER: Channel
CHANNEL_TOOL_CALL: Channel
THINKING_ENDED_BY_UNSPECIFIED: ThinkingEndedBy
THINKING_ENDED_BY_MODEL: ThinkingEndedBy
THINKING_ENDED_BY_TOKEN_BUDGET: ThinkingEndedBy
THINKING_ENDED_BY_DEADLINE: ThinkingEndedBy
THINKING_ENDED_BY_DISABLED: ThinkingEndedBy
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_STOP_SEQUENCE: FinishReason
FINISH_REASON_CANCELLED: FinishReason
FINISH_REASON_ERROR: FinishReason
GRAMMAR_OUTCOME_UNSPECIFIED: GrammarOutcome
GRAMMAR_OUTCOME_COMPLETE: GrammarOutcome
GRAMMAR_OUTCOME_CUT_OFF: GrammarOutcome
GRAMMAR_OUTCOME_FAILED: GrammarOutcome
GRAMMAR_OUTCOME_UNFINISHED: GrammarOutcome

class Message(_message.Message):
    __slots__ = ("role", "content", "tool_calls", "tool_call_id", "name")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    tool_calls: _containers.RepeatedCompositeFieldContainer[ToolCall]
    tool_call_id: str
    name: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ..., tool_calls: _Optional[_Iterable[_Union[ToolCall, _Mapping]]] = ..., tool_call_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("id", "name", "arguments_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    arguments_json: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., arguments_json: _Optional[str] = ...) -> None: ...

class Tool(_message.Message):
    __slots__ = ("name", "description", "parameters_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    parameters_json: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., parameters_json: _Optional[str] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "seed", "max_tokens", "stop", "stop_token_ids", "ignore_eos", "logprobs")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_P_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repetition_penalty: float
    presence_penalty: float
    frequency_penalty: float
    seed: int
    max_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    ignore_eos: bool
    logprobs: int
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., min_p: _Optional[float] = ..., repetition_penalty: _Optional[float] = ..., presence_penalty: _Optional[float] = ..., frequency_penalty: _Optional[float] = ..., seed: _Optional[int] = ..., max_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., stop_token_ids: _Optional[_Iterable[int]] = ..., ignore_eos: _Optional[bool] = ..., logprobs: _Optional[int] = ...) -> None: ...

class ChatRequest(_message.Message):
    __slots__ = ("request_id", "messages", "tools", "tool_choice", "reasoning", "max_thinking_tokens", "thinking_grace_tokens", "thinking_deadline_ms", "max_answer_tokens", "thinking_close_text", "sampling", "priority", "no_prefix_cache", "capture_after", "parallel_tool_calls", "response_format")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CHOICE_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    MAX_THINKING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    THINKING_GRACE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    THINKING_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_ANSWER_TOKENS_FIELD_NUMBER: _ClassVar[int]
    THINKING_CLOSE_TEXT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    NO_PREFIX_CACHE_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_AFTER_FIELD_NUMBER: _ClassVar[int]
    PARALLEL_TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    tools: _containers.RepeatedCompositeFieldContainer[Tool]
    tool_choice: str
    reasoning: bool
    max_thinking_tokens: int
    thinking_grace_tokens: int
    thinking_deadline_ms: int
    max_answer_tokens: int
    thinking_close_text: str
    sampling: SamplingParams
    priority: Priority
    no_prefix_cache: bool
    capture_after: _containers.RepeatedScalarFieldContainer[int]
    parallel_tool_calls: bool
    response_format: ResponseFormat
    def __init__(self, request_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., tools: _Optional[_Iterable[_Union[Tool, _Mapping]]] = ..., tool_choice: _Optional[str] = ..., reasoning: _Optional[bool] = ..., max_thinking_tokens: _Optional[int] = ..., thinking_grace_tokens: _Optional[int] = ..., thinking_deadline_ms: _Optional[int] = ..., max_answer_tokens: _Optional[int] = ..., thinking_close_text: _Optional[str] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., priority: _Optional[_Union[Priority, str]] = ..., no_prefix_cache: _Optional[bool] = ..., capture_after: _Optional[_Iterable[int]] = ..., parallel_tool_calls: _Optional[bool] = ..., response_format: _Optional[_Union[ResponseFormat, _Mapping]] = ...) -> None: ...

class ResponseFormat(_message.Message):
    __slots__ = ("json_object", "json_schema", "regex", "lark")
    JSON_OBJECT_FIELD_NUMBER: _ClassVar[int]
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    REGEX_FIELD_NUMBER: _ClassVar[int]
    LARK_FIELD_NUMBER: _ClassVar[int]
    json_object: bool
    json_schema: str
    regex: str
    lark: str
    def __init__(self, json_object: _Optional[bool] = ..., json_schema: _Optional[str] = ..., regex: _Optional[str] = ..., lark: _Optional[str] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("request_id", "prompt", "token_ids", "sampling", "priority")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt: str
    token_ids: TokenIds
    sampling: SamplingParams
    priority: Priority
    def __init__(self, request_id: _Optional[str] = ..., prompt: _Optional[str] = ..., token_ids: _Optional[_Union[TokenIds, _Mapping]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., priority: _Optional[_Union[Priority, str]] = ...) -> None: ...

class ChatEvent(_message.Message):
    __slots__ = ("delta", "tool_call", "final")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    delta: Delta
    tool_call: ToolCallEvent
    final: Final
    def __init__(self, delta: _Optional[_Union[Delta, _Mapping]] = ..., tool_call: _Optional[_Union[ToolCallEvent, _Mapping]] = ..., final: _Optional[_Union[Final, _Mapping]] = ...) -> None: ...

class Delta(_message.Message):
    __slots__ = ("text", "channel", "token_ids", "logprobs")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    text: str
    channel: Channel
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprob]
    def __init__(self, text: _Optional[str] = ..., channel: _Optional[_Union[Channel, str]] = ..., token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[_Union[TokenLogprob, _Mapping]]] = ...) -> None: ...

class TokenLogprob(_message.Message):
    __slots__ = ("token_id", "logprob", "top")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    logprob: float
    top: _containers.RepeatedCompositeFieldContainer[TopLogprob]
    def __init__(self, token_id: _Optional[int] = ..., logprob: _Optional[float] = ..., top: _Optional[_Iterable[_Union[TopLogprob, _Mapping]]] = ...) -> None: ...

class TopLogprob(_message.Message):
    __slots__ = ("token_id", "logprob")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    logprob: float
    def __init__(self, token_id: _Optional[int] = ..., logprob: _Optional[float] = ...) -> None: ...

class ToolCallEvent(_message.Message):
    __slots__ = ("index", "name", "arguments_json", "error", "id")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    arguments_json: str
    error: str
    id: str
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., arguments_json: _Optional[str] = ..., error: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "reasoning_tokens", "answer_tokens", "forced_tokens", "completion_tokens", "cached_prompt_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASONING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ANSWER_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FORCED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    reasoning_tokens: int
    answer_tokens: int
    forced_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., reasoning_tokens: _Optional[int] = ..., answer_tokens: _Optional[int] = ..., forced_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cached_prompt_tokens: _Optional[int] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queue_wait_ms", "time_to_first_token_ms", "mean_token_latency_ms", "p50_token_latency_ms", "p95_token_latency_ms", "total_ms")
    QUEUE_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_TOKEN_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    P50_TOKEN_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    P95_TOKEN_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    queue_wait_ms: float
    time_to_first_token_ms: float
    mean_token_latency_ms: float
    p50_token_latency_ms: float
    p95_token_latency_ms: float
    total_ms: float
    def __init__(self, queue_wait_ms: _Optional[float] = ..., time_to_first_token_ms: _Optional[float] = ..., mean_token_latency_ms: _Optional[float] = ..., p50_token_latency_ms: _Optional[float] = ..., p95_token_latency_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class Final(_message.Message):
    __slots__ = ("usage", "thinking_ended_by", "finish_reason", "error_message", "timings", "grammar")
    USAGE_FIELD_NUMBER: _ClassVar[int]
    THINKING_ENDED_BY_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_FIELD_NUMBER: _ClassVar[int]
    usage: Usage
    thinking_ended_by: ThinkingEndedBy
    finish_reason: FinishReason
    error_message: str
    timings: Timings
    grammar: GrammarOutcome
    def __init__(self, usage: _Optional[_Union[Usage, _Mapping]] = ..., thinking_ended_by: _Optional[_Union[ThinkingEndedBy, str]] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., error_message: _Optional[str] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., grammar: _Optional[_Union[GrammarOutcome, str]] = ...) -> None: ...

class ChatInput(_message.Message):
    __slots__ = ("messages", "tools", "reasoning")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    tools: _containers.RepeatedCompositeFieldContainer[Tool]
    reasoning: bool
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., tools: _Optional[_Iterable[_Union[Tool, _Mapping]]] = ..., reasoning: _Optional[bool] = ...) -> None: ...

class CountTokensRequest(_message.Message):
    __slots__ = ("text", "chat")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    text: str
    chat: ChatInput
    def __init__(self, text: _Optional[str] = ..., chat: _Optional[_Union[ChatInput, _Mapping]] = ...) -> None: ...

class CountTokensResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SpecialToken(_message.Message):
    __slots__ = ("text", "id")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    text: str
    id: int
    def __init__(self, text: _Optional[str] = ..., id: _Optional[int] = ...) -> None: ...

class ChatTemplateCapabilities(_message.Message):
    __slots__ = ("supports_tools", "supports_reasoning_toggle", "special_tokens")
    SUPPORTS_TOOLS_FIELD_NUMBER: _ClassVar[int]
    SUPPORTS_REASONING_TOGGLE_FIELD_NUMBER: _ClassVar[int]
    SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    supports_tools: bool
    supports_reasoning_toggle: bool
    special_tokens: _containers.RepeatedCompositeFieldContainer[SpecialToken]
    def __init__(self, supports_tools: _Optional[bool] = ..., supports_reasoning_toggle: _Optional[bool] = ..., special_tokens: _Optional[_Iterable[_Union[SpecialToken, _Mapping]]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("config_json", "layer_pattern", "bundle_id", "bundle_hash", "exporter_version", "weight_format", "weight_group_size", "max_context", "max_batch", "has_tokenizer", "chat_template")
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    LAYER_PATTERN_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_HASH_FIELD_NUMBER: _ClassVar[int]
    EXPORTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    HAS_TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    config_json: str
    layer_pattern: str
    bundle_id: str
    bundle_hash: str
    exporter_version: str
    weight_format: str
    weight_group_size: int
    max_context: int
    max_batch: int
    has_tokenizer: bool
    chat_template: ChatTemplateCapabilities
    def __init__(self, config_json: _Optional[str] = ..., layer_pattern: _Optional[str] = ..., bundle_id: _Optional[str] = ..., bundle_hash: _Optional[str] = ..., exporter_version: _Optional[str] = ..., weight_format: _Optional[str] = ..., weight_group_size: _Optional[int] = ..., max_context: _Optional[int] = ..., max_batch: _Optional[int] = ..., has_tokenizer: _Optional[bool] = ..., chat_template: _Optional[_Union[ChatTemplateCapabilities, _Mapping]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MemoryStatus(_message.Message):
    __slots__ = ("budget_bytes", "weight_bytes", "fixed_state_bytes_per_sequence", "kv_bytes_per_token", "working_bytes", "overhead_bytes", "planned_context", "planned_max_sequences", "state_bytes_in_use", "used_bytes", "process_rss_bytes")
    BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    FIXED_STATE_BYTES_PER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    WORKING_BYTES_FIELD_NUMBER: _ClassVar[int]
    OVERHEAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    PLANNED_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PLANNED_MAX_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    STATE_BYTES_IN_USE_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROCESS_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    budget_bytes: int
    weight_bytes: int
    fixed_state_bytes_per_sequence: int
    kv_bytes_per_token: int
    working_bytes: int
    overhead_bytes: int
    planned_context: int
    planned_max_sequences: int
    state_bytes_in_use: int
    used_bytes: int
    process_rss_bytes: int
    def __init__(self, budget_bytes: _Optional[int] = ..., weight_bytes: _Optional[int] = ..., fixed_state_bytes_per_sequence: _Optional[int] = ..., kv_bytes_per_token: _Optional[int] = ..., working_bytes: _Optional[int] = ..., overhead_bytes: _Optional[int] = ..., planned_context: _Optional[int] = ..., planned_max_sequences: _Optional[int] = ..., state_bytes_in_use: _Optional[int] = ..., used_bytes: _Optional[int] = ..., process_rss_bytes: _Optional[int] = ...) -> None: ...

class ServiceStatus(_message.Message):
    __slots__ = ("memory", "slots_busy", "slots_free", "queue_depth", "decode_tokens_per_second", "uptime_s", "telemetry", "prefix_cache")
    class TelemetryEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    SLOTS_BUSY_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FREE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    DECODE_TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_FIELD_NUMBER: _ClassVar[int]
    memory: MemoryStatus
    slots_busy: int
    slots_free: int
    queue_depth: int
    decode_tokens_per_second: float
    uptime_s: float
    telemetry: _containers.ScalarMap[str, float]
    prefix_cache: PrefixCacheStatus
    def __init__(self, memory: _Optional[_Union[MemoryStatus, _Mapping]] = ..., slots_busy: _Optional[int] = ..., slots_free: _Optional[int] = ..., queue_depth: _Optional[int] = ..., decode_tokens_per_second: _Optional[float] = ..., uptime_s: _Optional[float] = ..., telemetry: _Optional[_Mapping[str, float]] = ..., prefix_cache: _Optional[_Union[PrefixCacheStatus, _Mapping]] = ...) -> None: ...

class PrefixCacheStatus(_message.Message):
    __slots__ = ("budget_bytes", "bytes", "entries", "hits", "misses", "tokens_saved", "evictions", "skipped")
    BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_SAVED_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    budget_bytes: int
    bytes: int
    entries: int
    hits: int
    misses: int
    tokens_saved: int
    evictions: int
    skipped: int
    def __init__(self, budget_bytes: _Optional[int] = ..., bytes: _Optional[int] = ..., entries: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., tokens_saved: _Optional[int] = ..., evictions: _Optional[int] = ..., skipped: _Optional[int] = ...) -> None: ...
