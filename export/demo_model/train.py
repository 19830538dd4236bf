"""`nemotron-edge train-demo --out CKPT`: train the demo model from scratch on the CPU, as one command.

The model is a small Nemotron-H (`DEMO_CONFIG`: Mamba-2, attention and relu² MLP layers in an order like
the real pattern's, with more attention: a pilot with 2 attention layers in 12 copied numbers and names
from the request badly, and copying is what attention does well) trained with the exporter's reference
model (nemotron_export.model) on the generated robot-assistant conversations (tasks.py, train split only),
in the three example modes of examples.py. Its head is tied to the embedding table (unlike the real
model's): a token copied from the request by attention then comes out as itself without a second table
to learn for it. Its tokenizer is the project's byte-level BPE with the model's special tokens, trained on
the corpus plus a sample of the conversations, so the template's tool preamble is few tokens, with every
digit its own token, so copying and adding numbers is learned on ten digits, not on each merged number.

The run is bounded by time (`--minutes`): the learning rate follows a cosine over the fraction of the time
spent, so a slower machine trains on fewer tokens but finishes on time; `--steps` bounds it by steps
instead. Examples are a pure function of the seed and their index, so a run stopped and resumed (`--resume`,
from the state saved every few minutes in `CKPT.partial/`) sees the same data as one that ran through. The
result is a Hugging Face checkpoint (config.json, bf16 model.safetensors, tokenizer files) plus
`training.json` (tokens, steps, minutes, loss by step), written at the end, atomically.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tqdm import tqdm

from edge_runtime.bundle.model_config import ModelConfig
from nemotron_export.demo_model.examples import Example, ExampleBuilder, Mode, prompt_text
from nemotron_export.demo_model.tasks import PLACES, Family, Split, conversations
from nemotron_export.model import NemotronH
from nemotron_export.synth import write_checkpoint
from nemotron_export.tokenizer_synth import build_tokenizer

DEMO_CONFIG = ModelConfig(
    vocab_size=2048, hidden_size=256, intermediate_size=768, pattern="M*-M*-M*-M*-",
    num_attention_heads=4, num_key_value_heads=2, head_dim=64,
    mamba_num_heads=16, mamba_head_dim=32, n_groups=2, ssm_state_size=32, conv_kernel=4, chunk_size=64,
    max_position_embeddings=4096, tie_word_embeddings=True,
)
TOKENIZER_SAMPLE = 400  # conversations of the train split the BPE is trained on, beside the corpus
MODES = ((Mode.THINK, 0.65), (Mode.NO_THINK, 0.2), (Mode.CUT, 0.15))
# Conversations per family in each cycle of the training stream. Reach and travel are learned whole well
# before the end, and their derivations come back inside the tool calls; the stacks' copy and its end, and
# the tool calls' names, were what the held-out misses were made of.
TRAINING_MIX = {Family.REACH: 3, Family.TRAVEL: 3, Family.STACK: 7, Family.TOOL: 7}
WARMUP_STEPS = 100
# The embedding table (the head too, tied) is not trained: it keeps its random initialisation. Names
# (places, objects, colours) are interchangeable in the data, so trained, their vectors were pulled into
# one "a name goes here" direction (cosine 0.95 between places) and nothing downstream could tell them
# apart to copy them; digits, which arithmetic tells apart, were copied fine. Random rows in 256
# dimensions stay nearly orthogonal, and EMBEDDING_STD sizes them so the tied head's logits can reach
# confident values through the final norm's weight.
EMBEDDING_STD = 0.05
# A word's token without its leading space (the `shelf` of `"location": "shelf"`) starts as the same
# random row as its spaced token (`Ġshelf`) plus one vector shared by all such pairs, both scaled back to
# EMBEDDING_STD. Copying a name into JSON is then the copy the model does everywhere plus one fixed shift,
# not a map to learn name by name: with unrelated rows, the JSON named one place whatever the request said.
UNSPACED_SHARE = 0.5 ** 0.5
# The trained checkpoint, kept in the repository (not in the wheel); the embedded demo bundle is exported from it.
DEMO_CHECKPOINT = Path(__file__).resolve().parents[2] / "models" / "demo"
STATE_FILE = "train_state.pt"


@dataclass
class TrainOptions:
    minutes: float = 50.0
    steps: int | None = None  # when set, the run is bounded by steps, not time
    batch_tokens: int = 4096  # rows x padded length per step
    lr: float = 3e-3
    seed: int = 0
    threads: int = 2
    save_every_minutes: float = 5.0


def demo_tokenizer(seed: int = 0) -> Tokenizer:
    """The BPE trained on the corpus, a sample of conversations, and every place as a tool call writes it
    (`"location": "desk"`), so each place is one token with and without its leading space, and the two
    can be tied (`tie_unspaced_words`); the sample alone leaves a rarely called place in pieces."""
    sample = "\n".join(prompt_text(c, reasoning=True) + c.reply()
                       for c in conversations(Split.TRAIN, seed + 1000, TOKENIZER_SAMPLE))
    places = "\n".join(json.dumps({"location": p}) for p in PLACES)
    return build_tokenizer(DEMO_CONFIG.vocab_size, sample + ("\n" + places) * 10, split_digits=True)


def example(builder: ExampleBuilder, conv, seed: int, index: int) -> Example:
    rng = random.Random(f"example:{seed}:{index}")
    mode = rng.choices([m for m, _ in MODES], [w for _, w in MODES])[0]
    return builder.build(conv, mode, rng)


def batches(builder: ExampleBuilder, seed: int, batch_tokens: int, start: int) -> Iterator[tuple[int, list[Example]]]:
    """(examples consumed so far, batch) from example `start` on: pools of 64 sorted by length and cut into
    batches of at most `batch_tokens` padded tokens, so that long tool conversations pad few short ones."""
    convs = conversations(Split.TRAIN, seed, 10**12, TRAINING_MIX)
    for _ in range(start):
        next(convs)
    index = start
    while True:
        pool = sorted((example(builder, next(convs), seed, index + i) for i in range(64)), key=lambda e: len(e.ids))
        index += len(pool)
        batch: list[Example] = []
        for ex in pool:
            if batch and (len(batch) + 1) * len(ex.ids) > batch_tokens:
                yield index, batch
                batch = []
            batch.append(ex)
        yield index, batch


def collate(batch: list[Example]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t = max(len(e.ids) for e in batch)
    ids = torch.zeros(len(batch), t, dtype=torch.long)
    weights = torch.zeros(len(batch), t)
    for i, e in enumerate(batch):
        ids[i, :len(e.ids)] = torch.tensor(e.ids)
        weights[i, :len(e.ids)] = torch.tensor(e.weights)
    return ids, weights, torch.tensor([len(e.ids) for e in batch])


def init_weights(model: NemotronH, seed: int, tokenizer: Tokenizer) -> None:
    """GPT-2 style normal init, residual outputs scaled by depth; Mamba's A and dt as in Mamba-2; the
    embedding table's unspaced words tied to their spaced forms (`tie_unspaced_words`)."""
    torch.manual_seed(seed)
    cfg = model.cfg
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.empty_like(p).uniform_(1, 16)))
            elif name.endswith("dt_bias"):
                dt = torch.exp(torch.empty_like(p).uniform_(math.log(1e-3), math.log(1e-1)))
                p.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
            elif name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:  # D and the norms' weights
                p.fill_(1.0)
            elif name.endswith("embeddings.weight"):
                p.normal_(0, EMBEDDING_STD)
                tie_unspaced_words(p, tokenizer)
            elif "conv1d" in name:
                continue  # PyTorch's default suits a depthwise kernel of 4
            elif name.endswith(("out_proj.weight", "down_proj.weight", "o_proj.weight")):
                p.normal_(0, 0.02 / math.sqrt(2 * len(cfg.pattern)))
            else:
                p.normal_(0, 0.02)


def unspaced_words(tokenizer: Tokenizer) -> dict[int, int]:
    """{id of a word's token without its leading space: id of the spaced token} for every word that has both."""
    vocab = tokenizer.get_vocab()
    words = {t[1:]: i for t, i in vocab.items() if t.startswith("Ġ") and t[1:].isascii() and t[1:].isalpha()}
    return {vocab[word]: spaced for word, spaced in words.items() if word in vocab}


def tie_unspaced_words(table: torch.Tensor, tokenizer: Tokenizer) -> None:
    """Rows [vocab, hidden] of unspaced words := UNSPACED_SHARE * (spaced row + a shared random vector)."""
    shift = torch.randn(table.shape[1]) * EMBEDDING_STD  # [hidden]
    for unspaced, spaced in unspaced_words(tokenizer).items():
        table[unspaced] = UNSPACED_SHARE * (table[spaced] + shift)


def freeze_embeddings(model: NemotronH) -> None:
    """Keep the embedding table (and so the tied head) at its initialisation: see EMBEDDING_STD."""
    model.backbone.embeddings.weight.requires_grad_(False)


def lr_at(opts: TrainOptions, step: int, fraction: float) -> float:
    return opts.lr * min(1.0, (step + 1) / WARMUP_STEPS) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(fraction, 1.0))))


def shared_prefix(ids: torch.Tensor, lengths: torch.Tensor) -> int:
    """How many leading tokens every row of the batch has in common, leaving each row at least one of its own."""
    same = (ids == ids[:1]).all(dim=0).long()  # [t]
    return min(int(same.cumprod(0).sum()), int(lengths.min()) - 1)


def loss_of(model: NemotronH, ids: torch.Tensor, weights: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Weighted next-token loss of a right-padded batch. The rows' common prefix runs once and its states
    are broadcast to every row: a batch of tool conversations shares the whole system prompt with its tool
    declarations, most of each row, and the loss and gradients are those of running it in every row."""
    b, p = ids.shape[0], shared_prefix(ids, lengths)
    if p == 0:
        logits, _ = model(ids, model.empty_states(b), lengths=lengths, all_logits=True)  # [b, t, vocab]
    else:
        prefix_logits, prefix = model(ids[:1, :p], model.empty_states(1), all_logits=True)  # [1, p, vocab]
        states = {name.replace("present.", "past."): s.expand(b, *s.shape[1:]) for name, s in prefix.items()}
        rest_logits, _ = model(ids[:, p:], states, lengths=lengths - p, past_lengths=torch.full((b,), p),
                               all_logits=True)  # [b, t - p, vocab]
        logits = torch.cat([prefix_logits.expand(b, -1, -1), rest_logits], dim=1)  # [b, t, vocab]
    return weighted_loss(logits, ids, weights)


def weighted_loss(logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of logits [b, t, vocab] against ids [b, t], weighted by the target's weight."""
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    w = weights[:, 1:].reshape(-1)
    return (nll * w).sum() / w.sum().clamp(min=1.0)


def train_demo(out: Path, opts: TrainOptions, resume: bool = False, progress: bool = True) -> Path:
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: exists; choose another --out or remove it")
    partial = out.with_name(out.name + ".partial")
    state_path = partial / STATE_FILE
    if partial.exists() and not resume:
        raise FileExistsError(f"{partial}: an earlier run was interrupted; pass --resume to continue it")
    torch.set_num_threads(opts.threads)
    model = NemotronH(DEMO_CONFIG)
    freeze_embeddings(model)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=opts.lr, betas=(0.9, 0.95), weight_decay=0.1)
    if resume and state_path.exists():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        tokenizer = Tokenizer.from_str(state["tokenizer"])
        step, consumed, elapsed, tokens, history = (state[k] for k in ("step", "consumed", "elapsed", "tokens", "history"))
    else:
        partial.mkdir(parents=True, exist_ok=True)
        tokenizer = demo_tokenizer(opts.seed)
        init_weights(model, opts.seed, tokenizer)
        step, consumed, elapsed, tokens, history = 0, 0, 0.0, 0, []

    def save() -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "tokenizer": tokenizer.to_str(),
                    "step": step, "consumed": consumed, "elapsed": elapsed, "tokens": tokens, "history": history,
                    "options": asdict(opts)}, tmp)
        os.replace(tmp, state_path)

    def fraction() -> float:
        return step / opts.steps if opts.steps else elapsed / (opts.minutes * 60)

    builder = ExampleBuilder(tokenizer)
    total = opts.steps if opts.steps else int(opts.minutes * 60)
    bar = tqdm(total=total, initial=min(step if opts.steps else int(elapsed), total), disable=not progress,
               desc="training demo model", unit="step" if opts.steps else "s")
    started, last_save = time.monotonic() - elapsed, time.monotonic()
    running = None
    model.train()
    for consumed, batch in batches(builder, opts.seed, opts.batch_tokens, consumed):
        if fraction() >= 1.0:
            break
        ids, weights, lengths = collate(batch)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(opts, step, fraction())
        loss = loss_of(model, ids, weights, lengths)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step, tokens = step + 1, tokens + int(lengths.sum())
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0:
            history.append({"step": step, "tokens": tokens, "loss": round(running, 4)})
        now = time.monotonic()
        bar.update((1 if opts.steps else int(now - started) - int(elapsed)))
        elapsed = now - started
        bar.set_postfix(loss=f"{running:.3f}", tokens=tokens)
        if now - last_save >= opts.save_every_minutes * 60:
            save()
            last_save = now
    bar.close()
    save()
    # Tied, the head is the embedding table: written once, as transformers writes a tied checkpoint.
    weights = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()
               if not (DEMO_CONFIG.tie_word_embeddings and k == "lm_head.weight")}
    write_checkpoint(out, DEMO_CONFIG, weights, tokenizer)
    (out / "training.json").write_text(json.dumps(
        {"options": asdict(opts), "steps": step, "tokens": tokens, "minutes": round(elapsed / 60, 2),
         "parameters": sum(p.numel() for p in model.parameters()), "loss": history}, indent=1) + "\n")
    shutil.rmtree(partial)
    return out
