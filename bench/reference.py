"""The reference: transformers' NemotronHForCausalLM on the same checkpoint, in its own subprocess.

Run apart from our engines so that neither runtime's thread pool (torch's OpenMP threads, ONNX Runtime's
spinning workers) competes with the other, and so that torch is never imported next to the runtime.
`run(spec)` starts `python -m bench.reference SPEC_JSON` and returns its JSON:

- decode: `generate()` greedy (do_sample=False), min_new_tokens = max_new_tokens so every row produces
  exactly that many tokens, from equal-length prompts with an all-ones attention mask; tokens/s counts
  batch x new tokens over the wall time of the call (its prompt prefill included, as in ours).
- prefill: one forward over the prompt, `logits_to_keep=1` (what generate's first step computes).
Before each measurement, `warmups` untimed calls of the same shape: the first calls in a fresh process run
several times slower (measured here: 1.3, then 4, then 36 tokens/s at batch 1), two are enough.
torch's OpenMP threads spin at barriers, so this reference slows down far more than ONNX Runtime when
other processes compete for the two cores (seen here: prefill 20-60 tokens/s at a load average of 3.7,
460-600 at 0.8); the 1-minute load average before and after each measurement is part of the result.
transformers falls back to its PyTorch implementations of the Mamba kernels (mamba_ssm and causal_conv1d
are CUDA-only); that is the reference as a CPU user gets it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(spec: dict, timeout: float | None = None) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.reference", json.dumps(spec)], capture_output=True,
                         text=True, timeout=timeout, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"transformers reference failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _main(spec: dict) -> dict:
    import torch
    import transformers

    torch.set_num_threads(spec["threads"])
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(spec["checkpoint"], dtype=torch.float32).eval()
    result: dict = {"load_s": time.perf_counter() - t0, "torch": torch.__version__,
                    "transformers": transformers.__version__, "threads": torch.get_num_threads(),
                    "decode": {}, "prefill": {}, "load": {}}
    reps = spec["reps"]
    with torch.inference_mode():
        for d in spec.get("decode", []):
            ids = torch.tensor(d["prompts"])

            def gen(n: int) -> float:
                t = time.perf_counter()
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                     do_sample=False, pad_token_id=0)
                dt = time.perf_counter() - t
                assert out.shape == (ids.shape[0], ids.shape[1] + n), out.shape
                return ids.shape[0] * n / dt

            for _ in range(spec["warmups"]):
                gen(d["new_tokens"])
            load = os.getloadavg()[0]
            result["decode"][str(len(d["prompts"]))] = [gen(d["new_tokens"]) for _ in range(reps)]
            result["load"][f"decode b{len(d['prompts'])}"] = [round(load, 2), round(os.getloadavg()[0], 2)]
        for prompt in spec.get("prefill", []):
            ids = torch.tensor([prompt])

            def forward() -> float:
                t = time.perf_counter()
                model(ids, logits_to_keep=1)
                return len(prompt) / (time.perf_counter() - t)

            for _ in range(spec["warmups"]):
                forward()
            load = os.getloadavg()[0]
            result["prefill"][str(len(prompt))] = [forward() for _ in range(reps)]
            result["load"][f"prefill {len(prompt)}"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    return result


if __name__ == "__main__":
    print(json.dumps(_main(json.loads(sys.argv[1]))))
