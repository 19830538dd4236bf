"""`nemotron-edge chat`: one chat turn, in process or against a running server, reasoning shown apart.

On a terminal the reasoning is dimmed and the answer plain; tool calls are printed as JSON lines.
`--tools FILE` offers the model the tools in a JSON file; with `--tool-result TEXT` a tool call the model
makes is answered with that text (as the tool's response) and the model's reply to it follows: one tool
round trip. `--tool-choice` (auto, required, none or a tool's name), `--one-call`, `--json-schema FILE`
and `--regex PATTERN` constrain the answer while it is decoded. `--json` prints the final record (usage, how thinking ended, finish reason, texts, tool calls).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from edge_runtime.bundle.reader import BundleError
from edge_runtime.bundle.signature import KeyFileError, load_trusted_keys
from edge_runtime.engine.records import Channel, Delta, Event, Final, RequestError, ToolCallRecord

DIM, RESET = "\033[2m", "\033[0m"
# gRPC status codes that mean the request (not the server) is at fault: exit code 2.
CALLER_ERRORS = {"INVALID_ARGUMENT", "FAILED_PRECONDITION", "UNAUTHENTICATED"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="one chat turn with reasoning shown apart (in process, or --server)")
    p.add_argument("message", help="the user's message")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--bundle", help="bundle directory for an in-process chat (default: the embedded demo bundle)")
    where.add_argument("--server", help="address of a running server, e.g. unix:/run/nemotron-edge/edge.sock")
    p.add_argument("--trusted-key", action="append", default=[], metavar="PUB",
                   help="in process: Ed25519 public key (PEM) the bundle must be signed by, repeatable")
    p.add_argument("--token-file", help="bearer token file for --server")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="with --server: wait up to this long for the server to be loaded and serving")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--tools", type=Path, metavar="FILE", help="JSON file with a list of tools the model may call")
    p.add_argument("--tool-result", metavar="TEXT",
                   help="answer the model's tool call with this text and show its reply (one round trip)")
    p.add_argument("--tool-choice", default=None, metavar="CHOICE",
                   help="with --tools: auto (default), required, none, or the name of the tool to call")
    p.add_argument("--one-call", action="store_true", help="with --tools: at most one tool call in the reply")
    answer = p.add_mutually_exclusive_group()
    answer.add_argument("--json-schema", type=Path, metavar="FILE", help="the answer satisfies this JSON Schema")
    answer.add_argument("--regex", metavar="PATTERN", help="the answer matches this regular expression")
    p.add_argument("--no-think", action="store_true", help="reasoning off (the model card's /no_think)")
    p.add_argument("--max-thinking-tokens", type=int)
    p.add_argument("--thinking-grace-tokens", type=int)
    p.add_argument("--thinking-deadline-ms", type=float)
    p.add_argument("--max-answer-tokens", type=int)
    p.add_argument("--max-tokens", type=int, default=1024)
    sampling = p.add_mutually_exclusive_group()
    sampling.add_argument("--seed", type=int, help="sampling seed (reasoning on samples at temperature 0.6, top-p 0.95)")
    sampling.add_argument("--greedy", action="store_true", help="greedy decoding (temperature 0)")
    p.add_argument("--json", action="store_true", help="print the final record as JSON")
    p.set_defaults(func=run)


def sampling_of(args: argparse.Namespace) -> dict:
    """The request's sampling fields the command line sets; the rest stay the model card's defaults."""
    if args.greedy:
        return {"temperature": 0.0}
    return {} if args.seed is None else {"seed": args.seed}


def messages_of(args: argparse.Namespace) -> list[dict]:
    messages = [{"role": "system", "content": args.system}] if args.system else []
    return messages + [{"role": "user", "content": args.message}]


MAX_JSON_FILE_BYTES = 1 << 20


def tools_of(args: argparse.Namespace) -> list[dict] | None:
    if args.tools is None:
        return None
    tools = _json_file(args.tools, "tools")
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise RequestError("tools", f"{args.tools}: expected a JSON list of tool objects")
    return tools


def response_format_of(args: argparse.Namespace) -> dict | None:
    """The OpenAI-style response_format the flags ask for, or None for free text."""
    if args.regex is not None:
        return {"type": "regex", "regex": args.regex}
    if args.json_schema is None:
        return None
    return {"type": "json_schema", "json_schema": {"schema": _json_file(args.json_schema, "json_schema")}}


def _json_file(path: Path, what: str):
    try:
        if path.stat().st_size > MAX_JSON_FILE_BYTES:
            raise RequestError(what, f"{path}: larger than {MAX_JSON_FILE_BYTES} bytes")
        return json.loads(path.read_text())
    except OSError as e:
        raise RequestError(what, f"{path}: cannot read: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(what, f"{path}: not JSON: {e}") from None


def round_trip(messages: list[dict], final: Final, result: str) -> list[dict] | None:
    """The conversation with the model's tool calls and `result` as the tool's response appended; None
    when the model called no tool."""
    if not final.tool_calls:
        return None
    calls = [{"name": c.name, "arguments": json.loads(c.arguments_json)} for c in final.tool_calls if c.error is None]
    return messages + [{"role": "assistant", "content": final.answer_text, "tool_calls": calls},
                       {"role": "tool", "content": result}]


class Display:
    """Streams events to a terminal: reasoning dimmed, answer plain, tool calls as JSON lines."""

    def __init__(self, out: TextIO, color: bool):
        self.out, self.color = out, color
        self.channel: Channel | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, Delta) and event.text:
            if event.channel != self.channel:
                if self.channel is not None:
                    self.out.write(RESET if self.color else "")
                    self.out.write("\n" if self.channel is Channel.REASONING else "")
                if event.channel is Channel.REASONING:
                    self.out.write(DIM if self.color else "[reasoning] ")
                self.channel = event.channel
            self.out.write(event.text)
        elif isinstance(event, ToolCallRecord):
            self.out.write(("\n" if self.channel else "") + json.dumps({"tool_call": asdict(event)}) + "\n")
            self.channel = None
        elif isinstance(event, Final):
            self.out.write((RESET if self.color and self.channel is Channel.REASONING else "") + "\n")
        self.out.flush()


def final_record(final: Final) -> dict:
    record = asdict(final)
    record["usage"]["completion_tokens"] = final.usage.completion_tokens
    return record


def run(args: argparse.Namespace) -> int:
    from edge_runtime.client import EdgeError
    from edge_runtime.service.auth import TokenFileError

    display = None if args.json else Display(sys.stdout, sys.stdout.isatty())
    try:
        messages, tools = messages_of(args), tools_of(args)
        turn = functools.partial(_run_server, args) if args.server else _local_turns(args)
        final = turn(messages, tools, display)
        then = round_trip(messages, final, args.tool_result) if args.tool_result is not None else None
        if then is not None:
            if display is not None:
                print(json.dumps({"tool_response": args.tool_result}), flush=True)
            final = turn(then, tools, display)
    except (BundleError, RequestError, TokenFileError, KeyFileError) as e:
        print(f"nemotron-edge chat: {e}", file=sys.stderr)
        return 2
    except EdgeError as e:
        print(f"nemotron-edge chat: {e}", file=sys.stderr)
        return 2 if e.code.name in CALLER_ERRORS else 1
    if args.json:
        print(json.dumps(final_record(final)))
    if final.finish_reason == "error":
        print(f"nemotron-edge chat: {final.error}", file=sys.stderr)
        return 1
    return 0


def _local_turns(args: argparse.Namespace) -> Callable[[list[dict], list[dict] | None, Display | None], Final]:
    """Chat turns on one in-process engine."""
    from edge_runtime.engine.chat import Chat
    from edge_runtime.bundle.demo import resolve_bundle
    from edge_runtime.engine.engine import Engine, EngineConfig

    engine = Engine(resolve_bundle(args.bundle), EngineConfig(trusted_keys=load_trusted_keys(args.trusted_key)))
    return functools.partial(_run_local, args, Chat(engine))


def _run_local(args: argparse.Namespace, chat, messages: list[dict], tools: list[dict] | None,
               display: Display | None) -> Final:
    from edge_runtime.engine.answer_format import ResponseFormat
    from edge_runtime.engine.chat import ChatRequest

    engine = chat.engine
    request = ChatRequest(
        messages, tools=tools, reasoning=False if args.no_think else None,
        tool_choice=args.tool_choice or "auto", parallel_tool_calls=not args.one_call,
        response_format=ResponseFormat.from_openai(response_format_of(args)),
        max_thinking_tokens=args.max_thinking_tokens, thinking_grace_tokens=args.thinking_grace_tokens,
        thinking_deadline_ms=args.thinking_deadline_ms, max_answer_tokens=args.max_answer_tokens,
        max_tokens=args.max_tokens, sampling=sampling_of(args),
    )
    handle = chat.submit(request, display)
    engine.run_until_done([handle])
    return handle.final


def _run_server(args: argparse.Namespace, messages: list[dict], tools: list[dict] | None, display: Display | None) -> Final:
    from edge_runtime.client import EdgeClient
    from edge_runtime.service.auth import read_token

    if args.trusted_key:
        raise KeyFileError("--trusted-key: checks a bundle loaded in process; a server checks its own "
                           "([model] trusted_keys in its config)")
    token = read_token(Path(args.token_file)) if args.token_file else None
    with EdgeClient(args.server, token=token) as client:
        if args.wait > 0:
            client.wait_until_serving(timeout=args.wait)
        stream = client.chat(
            messages, tools=tools, reasoning=False if args.no_think else None,
            tool_choice=args.tool_choice, parallel_tool_calls=False if args.one_call else None,
            response_format=response_format_of(args),
            max_thinking_tokens=args.max_thinking_tokens, thinking_grace_tokens=args.thinking_grace_tokens,
            thinking_deadline_ms=args.thinking_deadline_ms, max_answer_tokens=args.max_answer_tokens,
            max_tokens=args.max_tokens, sampling=sampling_of(args))
        for event in stream:
            if display is not None:
                display(event)
        return stream.final
