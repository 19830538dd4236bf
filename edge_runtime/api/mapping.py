"""edge.proto's enums and the runtime's, both ways: the one table per enum that the servicer (records to
protos) and the client (protos to records) share."""

from __future__ import annotations

from edge_runtime.api import edge_pb2 as pb
from edge_runtime.engine.records import Channel, FinishReason, GrammarOutcome, Priority, ThinkingEnd

PRIORITY_FROM_PROTO = {
    pb.PRIORITY_UNSPECIFIED: Priority.NORMAL,
    pb.PRIORITY_REALTIME: Priority.REALTIME,
    pb.PRIORITY_NORMAL: Priority.NORMAL,
    pb.PRIORITY_BACKGROUND: Priority.BACKGROUND,
}
PRIORITY_TO_PROTO = {Priority.REALTIME: pb.PRIORITY_REALTIME, Priority.NORMAL: pb.PRIORITY_NORMAL,
                     Priority.BACKGROUND: pb.PRIORITY_BACKGROUND}
CHANNEL_TO_PROTO = {Channel.REASONING: pb.CHANNEL_REASONING, Channel.ANSWER: pb.CHANNEL_ANSWER}
CHANNEL_FROM_PROTO = {pb.CHANNEL_REASONING: Channel.REASONING, pb.CHANNEL_ANSWER: Channel.ANSWER}
# An expired request never reaches the wire as a Final: the call ends with DEADLINE_EXCEEDED first.
FINISH_TO_PROTO = {FinishReason.STOP: pb.FINISH_REASON_STOP, FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
                   FinishReason.STOP_SEQUENCE: pb.FINISH_REASON_STOP_SEQUENCE,
                   FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED, FinishReason.DEADLINE: pb.FINISH_REASON_CANCELLED,
                   FinishReason.ERROR: pb.FINISH_REASON_ERROR}
FINISH_FROM_PROTO = {pb.FINISH_REASON_STOP: FinishReason.STOP, pb.FINISH_REASON_LENGTH: FinishReason.LENGTH,
                     pb.FINISH_REASON_STOP_SEQUENCE: FinishReason.STOP_SEQUENCE,
                     pb.FINISH_REASON_CANCELLED: FinishReason.CANCELLED, pb.FINISH_REASON_ERROR: FinishReason.ERROR}
THINKING_END_TO_PROTO = {ThinkingEnd.MODEL: pb.THINKING_ENDED_BY_MODEL, ThinkingEnd.TOKEN_BUDGET: pb.THINKING_ENDED_BY_TOKEN_BUDGET,
                         ThinkingEnd.DEADLINE: pb.THINKING_ENDED_BY_DEADLINE, ThinkingEnd.DISABLED: pb.THINKING_ENDED_BY_DISABLED}
THINKING_END_FROM_PROTO = {v: k for k, v in THINKING_END_TO_PROTO.items()}
GRAMMAR_TO_PROTO = {GrammarOutcome.COMPLETE: pb.GRAMMAR_OUTCOME_COMPLETE, GrammarOutcome.CUT_OFF: pb.GRAMMAR_OUTCOME_CUT_OFF,
                    GrammarOutcome.FAILED: pb.GRAMMAR_OUTCOME_FAILED, GrammarOutcome.UNFINISHED: pb.GRAMMAR_OUTCOME_UNFINISHED}
GRAMMAR_FROM_PROTO = {v: k for k, v in GRAMMAR_TO_PROTO.items()}

# The proto SamplingParams' optional scalars, named as the engine's SamplingParams fields.
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                   "frequency_penalty", "seed", "logprobs")
