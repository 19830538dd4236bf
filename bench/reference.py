"""The reference: transformers' NemotronHForCausalLM on the same checkpoint, in a worker subprocess.

The worker (`python -m bench.reference CHECKPOINT THREADS`) loads the model once and then answers one
timed call per request line, so the cases can interleave its runs with ours, round by round: a change in
machine load during a case then falls on both sides. It runs apart from our engines so that neither
runtime's thread pool (torch's OpenMP threads, ONNX Runtime's workers) sits in the other's process, and
torch is never imported next to the runtime.

- decode: `generate()` greedy (do_sample=False), min_new_tokens = max_new_tokens so every row produces
  exactly that many tokens, from equal-length prompts with an all-ones attention mask; tokens/s counts
  batch x new tokens over the wall time of the call (its prompt prefill included, as in ours).
- prefill: one forward over the prompt, `logits_to_keep=1` (what generate's first step computes).
- generate: one prompt, `generate()` sampling with the request's temperature and top_p after
  torch.manual_seed(seed), exactly `new_tokens` tokens; answers the seconds and the token ids (the thinking
  case's two-call method on transformers).
transformers falls back to its PyTorch implementations of the Mamba kernels (mamba_ssm and causal_conv1d
are CUDA-only); that is the reference as a CPU user gets it, in float32 with torch.set_num_threads(THREADS).
The first calls in a fresh process run several times slower (measured here: 1.3, then 4, then 36
tokens/s at batch 1), hence the cases' two warm-up rounds. torch's OpenMP threads spin at barriers, so
this reference slows down far more than ONNX Runtime when other processes compete for the two cores
(seen here: prefill at 20-60 tokens/s at a load average of 3.7, 460-600 at 0.8).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARK = "@@bench "  # prefix of the worker's answer lines (anything else on its stdout is ignored)


class Reference:
    def __init__(self, checkpoint: Path, threads: int):
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.reference", str(checkpoint), str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        self.info = self._read()

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        raise RuntimeError(f"transformers reference exited with {self.proc.wait()} (its stderr is above)")

    def _call(self, **request) -> float:
        return self._ask(**request)["value"]

    def _ask(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def decode(self, prompts: list[list[int]], new_tokens: int) -> float:
        """Tokens/s of one greedy generate() of `new_tokens` for each of `prompts` (equal lengths)."""
        return self._call(op="decode", prompts=prompts, new_tokens=new_tokens)

    def prefill(self, prompt: list[int]) -> float:
        """Tokens/s of one forward over `prompt`."""
        return self._call(op="prefill", prompt=prompt)

    def generate(self, prompt: list[int], new_tokens: int, temperature: float, top_p: float, seed: int) -> list[int]:
        """The `new_tokens` token ids sampled after `prompt` (EOS not allowed to end it early)."""
        return self._ask(op="generate", prompt=prompt, new_tokens=new_tokens, temperature=temperature, top_p=top_p,
                         seed=seed)["token_ids"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(60)

    def __enter__(self) -> "Reference":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(checkpoint: str, threads: int) -> None:
    import torch
    import transformers

    def answer(value: dict) -> None:
        print(MARK + json.dumps(value), flush=True)

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    answer({"load_s": round(time.perf_counter() - t0, 1), "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads()})
    with torch.inference_mode():
        for line in sys.stdin:
            r = json.loads(line)
            if r["op"] == "decode":
                ids = torch.tensor(r["prompts"])
                n = r["new_tokens"]
                t = time.perf_counter()
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                     do_sample=False, pad_token_id=0)
                seconds = time.perf_counter() - t
                assert out.shape == (ids.shape[0], ids.shape[1] + n), out.shape
                answer({"value": ids.shape[0] * n / seconds})
            elif r["op"] == "generate":
                ids = torch.tensor([r["prompt"]])
                n = r["new_tokens"]
                torch.manual_seed(r["seed"])
                t = time.perf_counter()
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                     do_sample=True, temperature=r["temperature"], top_p=r["top_p"], top_k=0,
                                     pad_token_id=0)
                seconds = time.perf_counter() - t
                answer({"value": seconds, "token_ids": out[0, ids.shape[1]:].tolist()})
            else:
                ids = torch.tensor([r["prompt"]])
                t = time.perf_counter()
                model(ids, logits_to_keep=1)
                answer({"value": ids.shape[1] / (time.perf_counter() - t)})


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]))
