"""Agreement at full size: transformers' NemotronHForCausalLM (bf16) against a bundle, on the same prompts.

`PROMPTS` prompts of `TOKENS` token ids (bench.variants.prompt_ids), each side in its own process, so that
the 9B model in transformers (17.8 GB in bf16) and the bundle are never resident together:
- `python -m bench.real_size.agreement reference CKPT OUT`: transformers' logits at every position of every
  prompt, one forward pass, saved as float32 [PROMPTS, TOKENS, vocab];
- `python -m bench.real_size.agreement bundle BUNDLE OUT`: the bundle's logits at the same positions,
  teacher-forced on ONNX Runtime (prefill of the first token, then one decode step per next token).
Compared per position over the prompts: the relative error of the logits, |ours - ref| / |ref| (L2 over
the vocabulary), and whether the top-1 token agrees. The same protocol on the `small` preset sits beside
it, to say whether the full-size figures are of the same order.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from bench import artifacts

PROMPTS, TOKENS = 4, 16


def prompts(vocab: int) -> list[list[int]]:
    from bench.variants import prompt_ids

    return [prompt_ids(100 + i, TOKENS, vocab) for i in range(PROMPTS)]


def reference_logits(ckpt: Path) -> np.ndarray:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.bfloat16).eval()
    ids = torch.tensor(prompts(model.config.vocab_size))
    with torch.inference_mode():
        return model(ids).logits.float().numpy()  # [PROMPTS, TOKENS, vocab]


def bundle_logits(bundle_dir: Path) -> np.ndarray:
    from edge_runtime.bundle.reader import open_bundle
    from edge_runtime.engine.providers import ProviderConfig
    from edge_runtime.engine.runner import OrtModelRunner
    from edge_runtime.engine.state_pool import StatePool

    bundle = open_bundle(bundle_dir, verify=False)
    rows = prompts(bundle.config.vocab_size)
    pool = StatePool(bundle.state_layout, PROMPTS, TOKENS)
    runner = OrtModelRunner(bundle, pool, ProviderConfig(custom_op_library=artifacts.kernel_library()[0]),
                            max_rows=PROMPTS)
    slots = [pool.allocate() for _ in rows]
    # The runner returns its own logits buffer, overwritten by the next call: keep copies.
    out = [runner.prefill(slots, [r[:1] for r in rows], [0] * PROMPTS).copy()]
    for t in range(1, TOKENS):
        out.append(runner.decode(slots, [r[t] for r in rows], [t] * PROMPTS).copy())
    return np.stack(out, axis=1).astype(np.float32)  # [PROMPTS, TOKENS, vocab]


def logits_of(kind: str, path: Path, out: Path, log: Path) -> np.ndarray:
    """`kind`'s logits computed in a child process (its stderr in `log`)."""
    with open(log, "w") as err:
        done = subprocess.run([sys.executable, "-m", "bench.real_size.agreement", kind, str(path), str(out)],
                              stderr=err, cwd=artifacts.REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} logits of {path} failed; see {log}")
    return np.load(out)


def compare(ours: np.ndarray, ref: np.ndarray) -> dict:
    rel = np.linalg.norm(ours - ref, axis=-1) / np.linalg.norm(ref, axis=-1)  # [PROMPTS, TOKENS]
    agree = ours.argmax(-1) == ref.argmax(-1)
    return {"relative_error_by_position": rel.mean(0).tolist(), "top1_by_position": agree.mean(0).tolist(),
            "relative_error": float(rel.mean()), "relative_error_max": float(rel.max()),
            "top1": float(agree.mean()), "positions": int(agree.size)}


def agreement(work: Path, name: str, ckpt: Path, bundle: Path) -> dict:
    ref = logits_of("reference", ckpt, work / f"agreement-{name}-reference.npy", work / f"agreement-{name}-reference.log")
    ours = logits_of("bundle", bundle, work / f"agreement-{name}-bundle.npy", work / f"agreement-{name}-bundle.log")
    return {"checkpoint": str(ckpt), "bundle": str(bundle), "prompts": PROMPTS, "tokens": TOKENS, **compare(ours, ref)}


if __name__ == "__main__":
    kind, path, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    np.save(out, reference_logits(path) if kind == "reference" else bundle_logits(path))
