"""The exporter's reference model run the way the runtime runs a bundle, for parity checks: its states kept
like the runtime's StatePool (conv and SSM state per row, K/V in rows of `max_context` positions, each
call's new K/V written at the row's own past length), so that both sides take the same chunked, padded
prefills and decode steps and their logits can be compared call by call."""

from __future__ import annotations

import numpy as np
import torch

from nemotron_export.model import NemotronH
from nemotron_export.threads import one_torch_thread


class PooledReference:
    def __init__(self, model: NemotronH, rows: int, max_context: int):
        self.model = model
        self.states = {k: v.clone() for k, v in model.empty_states(rows, max_context).items()}

    def prefill(self, chunks: list[list[int]], past: list[int]) -> np.ndarray:
        """Logits [rows, t, vocab] of right-padded `chunks`, row i continuing from past[i] positions."""
        lengths = [len(c) for c in chunks]
        ids = torch.zeros(len(chunks), max(lengths), dtype=torch.long)
        for row, c in enumerate(chunks):
            ids[row, :len(c)] = torch.tensor(c)
        return self._run(ids, lengths, past, decode=False)

    def decode(self, tokens: list[int], past: list[int]) -> np.ndarray:
        return self._run(torch.tensor(tokens)[:, None], [1] * len(tokens), past, decode=True)

    def _run(self, ids: torch.Tensor, lengths: list[int], past: list[int], decode: bool) -> np.ndarray:
        cut = max(past)
        states = {k: (v[:, :, :cut] if k.endswith(("key", "value")) else v) for k, v in self.states.items()}
        with torch.no_grad(), one_torch_thread():
            logits, new = self.model(ids, states, lengths=torch.tensor(lengths), past_lengths=torch.tensor(past),
                                     decode=decode)
        for name, value in new.items():
            key = name.replace("present.", "past.")
            if key.endswith(("key", "value")):
                for row, (start, n) in enumerate(zip(past, lengths)):
                    self.states[key][row, :, start:start + n] = value[row, :, :n]
            else:
                self.states[key] = value
        return logits.numpy()
