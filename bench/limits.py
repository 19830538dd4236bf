"""`python -m bench.limits [--budget 400MiB] [--reps 3]`: big, slow and hostile inputs against the real service.

The demo bundle served by `nemotron-edge serve --budget BUDGET` in a subprocess, with its default [limits]
(derived from the bundle's context, 2048 tokens). Each input of the table is serialized once, then sent
`reps` times as those bytes on a gRPC channel (so a row times the transport and the service, not the
client building 10 MB protos); a row gives the status code, the median time from sending to the answer,
and the server's peak RSS so far (/proc VmHWM: it only grows, so the last row's is the whole run's). The inputs: a 10 MB
Generate prompt, a 10 MB Chat message, a 10 MB CountTokens text, a 14 MB tool schema (as the issue
measured them), two inputs within the size limit but past a per-field bound (a 100 kB prompt: more text
than max_text_chars; 3000 messages: more than max_messages), and a chat template that loops (a copy of the demo bundle whose template starts with
`range(100000)` nested in itself, served by a second server). Also: `GetStatus.used_bytes` against the
budget, and the idle RSS (the baseline the README states).

The parallel case needs a large request that is accepted and worked on: a third server with its limits
raised (`--max-request-bytes 16MiB --max-text-chars 20000000`) tokenizes a 10 MB CountTokens text while
a tiny Chat is sent once the server reports the tokenization running (its `nemotron_edge_stages_running`
metric); the row says which was answered first and the tiny Chat's latency, against its latency on the
idle server.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc

from bench.service import Server
from edge_runtime.api import edge_pb2 as pb
from edge_runtime.bundle.reader import MANIFEST_FILE, manifest_digest, open_bundle
from edge_runtime.client import EdgeClient, EdgeError
from edge_runtime.bundle.demo import DEMO_BUNDLE
from edge_runtime.bundle.units import format_bytes, parse_bytes

MiB = 2**20
BIG_SEND = [("grpc.max_send_message_length", 64 * MiB)]
TEN_MB = "hello world " * (10_000_000 // 12)
LOOPING = "{%- for i in range(100000) -%}{%- for j in range(100000) -%}{%- endfor -%}{%- endfor -%}"


def _proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _answer(call: Callable[[], object]) -> tuple[str, float]:
    """(status code name, seconds to the answer)."""
    start = time.perf_counter()
    try:
        call()
        code = "OK"
    except EdgeError as e:
        code = e.code.name
    return code, time.perf_counter() - start


def _send(client: EdgeClient, method: str, request) -> Callable[[], object]:
    """A call of `method` that sends `request` serialized beforehand, and reads the whole answer."""
    data = request.SerializeToString()
    path = f"/nemotron_edge.v1.EdgeLM/{method}"
    if method == "CountTokens":
        call = client.channel.unary_unary(path, request_serializer=bytes)
        return lambda: _raising(lambda: call(data))
    call = client.channel.unary_stream(path, request_serializer=bytes)
    return lambda: _raising(lambda: list(call(data)))


def _raising(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except grpc.RpcError as e:
        raise EdgeError.from_rpc(e) from None


def _tiny_chat(client: EdgeClient) -> None:
    client.chat("hi", max_tokens=2).result()


def _looping_bundle(workdir: Path) -> Path:
    out = workdir / "looping-bundle"
    shutil.copytree(DEMO_BUNDLE, out)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    manifest["tokenizer"]["chat_template"] = LOOPING + open_bundle(DEMO_BUNDLE, verify=False).chat_template
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return out


def _tokenizing(metrics_port: int) -> bool:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=60).read().decode()
    return 'nemotron_edge_stages_running{stage="tokenize"} 1.0' in text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _parallel(workdir: Path, budget: str) -> dict:
    """A tiny Chat sent while a 10 MB CountTokens is tokenized (limits raised so that it is accepted)."""
    port = _free_port()
    server = Server(workdir / "raised", DEMO_BUNDLE, None, "--metrics-port", str(port), "--max-request-bytes",
                    "16MiB", "--max-text-chars", "20000000", budget=budget)
    try:
        with EdgeClient(server.address, options=BIG_SEND) as big, EdgeClient(server.address) as small:
            _tiny_chat(small)
            answered: list[str] = []
            times: dict[str, float] = {}

            def large() -> None:
                times["large"] = _answer(lambda: big.count_tokens(TEN_MB))[1]
                answered.append("large")

            thread = threading.Thread(target=large)
            thread.start()
            while not _tokenizing(port):
                time.sleep(0.005)
            times["small"] = _answer(lambda: _tiny_chat(small))[1]
            answered.append("small")
            thread.join()
    finally:
        server.stop()
    return {"small_first": answered[0] == "small", "small_s": times["small"], "large_s": times["large"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", default="400MiB", help="the service's --budget")
    p.add_argument("--reps", type=int, default=3, help="times each input is sent (the median time is shown)")
    args = p.parse_args()
    budget = parse_bytes(args.budget)
    schema = json.dumps({"type": "object", "description": "x" * 14_000_000})
    rows: list[tuple[str, str, float, int]] = []
    with tempfile.TemporaryDirectory(prefix="bench-limits-") as tmp:
        server = Server(Path(tmp) / "default", DEMO_BUNDLE, None, budget=args.budget)
        pid = server.proc.pid
        try:
            with EdgeClient(server.address, options=BIG_SEND) as c:
                for _ in range(3):
                    _tiny_chat(c)
                idle_rss = _proc_status(pid, "VmRSS")
                idle_chat = statistics.median(_answer(lambda: _tiny_chat(c))[1] for _ in range(5))
                status = c.status().memory
                two = pb.SamplingParams(max_tokens=2)
                inputs = [
                    ("10 MB Generate prompt", _send(c, "Generate", pb.GenerateRequest(prompt=TEN_MB, sampling=two))),
                    ("10 MB Chat message", _send(c, "Chat", pb.ChatRequest(
                        messages=[pb.Message(role="user", content=TEN_MB)], sampling=two))),
                    ("10 MB CountTokens", _send(c, "CountTokens", pb.CountTokensRequest(text=TEN_MB))),
                    ("14 MB tool schema", _send(c, "Chat", pb.ChatRequest(
                        messages=[pb.Message(role="user", content="hi")], sampling=two,
                        tools=[pb.Tool(name="t", parameters_json=schema)]))),
                    ("100 kB Generate prompt", _send(c, "Generate", pb.GenerateRequest(prompt="x" * 100_000,
                                                                                      sampling=two))),
                    ("3000 one-word messages", _send(c, "Chat", pb.ChatRequest(
                        messages=[pb.Message(role="user", content="hi")] * 3000, sampling=two))),
                ]
                for name, call in inputs:
                    answers = [_answer(call) for _ in range(args.reps)]
                    codes = sorted({code for code, _ in answers})
                    rows.append((name, "/".join(codes), statistics.median(t for _, t in answers),
                                 _proc_status(pid, "VmHWM")))
                after_rss = _proc_status(pid, "VmRSS")
        finally:
            server.stop()
        looping = Server(Path(tmp) / "looping", _looping_bundle(Path(tmp)), None, budget=args.budget)
        try:
            with EdgeClient(looping.address) as c:
                answers = [_answer(lambda: c.chat("hi", max_tokens=2, timeout=600).result()) for _ in range(args.reps)]
                rows.append(("looping chat template", "/".join(sorted({a for a, _ in answers})),
                             statistics.median(t for _, t in answers), _proc_status(looping.proc.pid, "VmHWM")))
        finally:
            looping.stop()
        parallel = _parallel(Path(tmp), args.budget)

    print(f"budget {format_bytes(budget)}; idle RSS {idle_rss / MiB:.0f} MiB; "
          f"budget + idle RSS {(budget + idle_rss) / MiB:.0f} MiB")
    print(f"GetStatus: used_bytes {status.used_bytes / MiB:.1f} MiB, budget_bytes {status.budget_bytes / MiB:.1f} MiB")
    print()
    print("| input | answer | time | peak RSS |")
    print("|---|---|---|---|")
    for name, code, seconds, peak in rows:
        print(f"| {name} | {code} | {seconds * 1000:.1f} ms | {peak / MiB:.0f} MiB |")
    print()
    peak = max(r[3] for r in rows)
    print(f"RSS after the inputs: {after_rss / MiB:.0f} MiB; peak RSS {peak / MiB:.0f} MiB "
          f"{'within' if peak <= budget + idle_rss else 'ABOVE'} budget + idle RSS")
    print(f"tiny Chat on the idle server: {idle_chat * 1000:.1f} ms")
    print(f"tiny Chat sent while a 10 MB CountTokens was tokenized (limits raised): answered first: "
          f"{'yes' if parallel['small_first'] else 'no'}; {parallel['small_s'] * 1000:.1f} ms "
          f"(the CountTokens took {parallel['large_s']:.2f} s)")


if __name__ == "__main__":
    main()
