"""`nemotron-edge train-demo` as one command: a few steps write a checkpoint that the exporter turns into a
bundle the runtime serves, and a run killed mid-way continues with `--resume`. (Never a real training run:
the shipped model is trained once, by hand; tests/test_demo_model.py checks it.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from edge_runtime.bundle.reader import open_bundle
from edge_runtime.engine.engine import Engine
from edge_runtime.engine.records import GenerationRequest, SamplingParams
from nemotron_export.bundle import ExportOptions, export_bundle
from nemotron_export.demo_model.tasks import PLACES
from nemotron_export.demo_model.train import (DEMO_CONFIG, STATE_FILE, UNSPACED_SHARE, TrainOptions, demo_tokenizer,
                                              init_weights, loss_of, shared_prefix, train_demo, unspaced_words,
                                              weighted_loss)
from nemotron_export.model import NemotronH


def test_a_few_steps_make_a_checkpoint_the_exporter_and_runtime_take(tmp_path: Path) -> None:
    ckpt = train_demo(tmp_path / "ckpt", TrainOptions(steps=2, threads=1, batch_tokens=1024), progress=False)
    assert not (tmp_path / "ckpt.partial").exists()
    record = json.loads((ckpt / "training.json").read_text())
    assert record["steps"] == 2 and record["tokens"] > 0 and record["parameters"] > 4_000_000
    with safe_open(ckpt / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
        assert DEMO_CONFIG.tie_word_embeddings and "lm_head.weight" not in f.keys()  # the embedding, once
        # The table is not trained: it is still its seed's random initialisation (see EMBEDDING_STD).
        init = NemotronH(DEMO_CONFIG)
        init_weights(init, TrainOptions().seed, demo_tokenizer(TrainOptions().seed))
        table = init.backbone.embeddings.weight.detach().to(torch.bfloat16)
        assert torch.equal(f.get_tensor("backbone.embeddings.weight"), table)
    config = json.loads((ckpt / "config.json").read_text())
    assert config["hybrid_override_pattern"] == DEMO_CONFIG.pattern
    bundle = export_bundle(ckpt, tmp_path / "bundle", ExportOptions(max_batch=2, max_context=256), progress=False)
    assert open_bundle(bundle).tokenizer_file("tokenizer.json") is not None
    engine = Engine(bundle)
    final = engine.generate(GenerationRequest(prompt_ids=[1, 2, 3], max_tokens=4, ignore_eos=True,
                                              sampling=SamplingParams(greedy=True)))
    assert len(final.token_ids) == 4


def test_a_killed_run_resumes_where_its_state_was_saved(tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    code = ("import sys; from pathlib import Path; from nemotron_export.demo_model.train import TrainOptions, train_demo;"
            f"train_demo(Path({str(out)!r}), TrainOptions(steps=1000, threads=1, batch_tokens=1024, "
            "save_every_minutes=0.0), progress=False)")
    child = subprocess.Popen([sys.executable, "-c", code])
    state = tmp_path / "ckpt.partial" / STATE_FILE
    try:
        while not (state.exists() and torch.load(state, weights_only=False)["step"] >= 2):
            assert child.poll() is None, "the run ended before it was killed"
            time.sleep(0.2)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    saved = torch.load(state, weights_only=False)
    assert saved["step"] >= 2 and not out.exists()
    steps = saved["step"] + 2  # the resumed run may set its own end
    train_demo(out, TrainOptions(steps=steps, threads=1, batch_tokens=1024), resume=True, progress=False)
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == steps and record["tokens"] > saved["tokens"]


def test_a_batch_s_shared_prefix_runs_once_with_the_loss_and_gradients_of_running_it_in_every_row() -> None:
    model = NemotronH(DEMO_CONFIG)
    init_weights(model, 0, demo_tokenizer(0))
    rng = np.random.default_rng(0)
    prefix = rng.integers(0, DEMO_CONFIG.vocab_size, 70)  # longer than a Mamba chunk (64)
    lengths = torch.tensor([90, 75, 71])
    ids = torch.zeros(3, 90, dtype=torch.long)
    weights = torch.zeros(3, 90)
    for row, n in enumerate(lengths.tolist()):
        ids[row, :n] = torch.from_numpy(np.concatenate([prefix, rng.integers(0, DEMO_CONFIG.vocab_size, n - 70)]))
        weights[row, :n] = torch.from_numpy(rng.uniform(0.2, 1.0, n)).float()
    assert shared_prefix(ids, lengths) == 70

    def gradients(loss: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.requires_grad]

    shared = loss_of(model, ids, weights, lengths)
    shared_grads = gradients(shared)
    # The same loss computed plainly: every row runs its whole sequence.
    logits, _ = model(ids, model.empty_states(3), lengths=lengths, all_logits=True)
    plain = weighted_loss(logits, ids, weights)
    assert torch.allclose(shared, plain, rtol=1e-5)
    for got, want in zip(shared_grads, gradients(plain)):
        assert torch.allclose(got, want, rtol=1e-3, atol=1e-6)


def test_every_place_is_one_token_both_ways_and_its_unspaced_row_is_its_spaced_row_shifted() -> None:
    tokenizer = demo_tokenizer(0)
    vocab = tokenizer.get_vocab()
    pairs = unspaced_words(tokenizer)
    assert all(pairs.get(vocab.get(p)) == vocab["Ġ" + p] for p in PLACES)
    assert tokenizer.encode('"location": "desk"').tokens[-2:] == ["desk", '"']  # as a tool call writes it
    model = NemotronH(DEMO_CONFIG)
    init_weights(model, 0, tokenizer)
    table = model.backbone.embeddings.weight.detach()  # [vocab, hidden]
    shifts = torch.stack([table[u] / UNSPACED_SHARE - table[s] for u, s in pairs.items()])  # [pairs, hidden]
    assert torch.allclose(shifts, shifts[:1].expand_as(shifts), atol=1e-6)
    assert shifts[0].norm() > 0.5 * table[vocab["Ġdesk"]].norm()  # a real shift, not the spaced row again
