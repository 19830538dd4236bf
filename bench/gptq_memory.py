"""`python -m bench.gptq_memory --checkpoint CKPT --layer I`: where calibrated int4's memory goes on one layer.

The exporter's int4 step for one layer, alone (export/calibrate.py): the layer built from the checkpoint, the
Hessian pass over calibration hidden states (random, float32, of the export's ROWS x ROW_TOKENS), then GPTQ
of each projection. Resident memory is sampled every 50 ms and its peak printed per phase, with each
projection's GPTQ time: on the full-size checkpoint, an MLP layer's down_proj (input 15,680 wide) is where
the export's peak is.
"""

from __future__ import annotations

import argparse
import threading
import time

import psutil
import torch

from nemotron_export import calibrate
from nemotron_export.checkpoint import open_checkpoint
from nemotron_export.quantize import gptq

SAMPLE_S = 0.05


class PhasePeaks:
    """The process's resident memory, sampled in a thread, its peak kept per named phase."""

    def __init__(self) -> None:
        self.process, self.phase, self.peaks = psutil.Process(), "start", {}
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            rss = self.process.memory_info().rss
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)
            time.sleep(SAMPLE_S)

    def enter(self, phase: str) -> None:
        self.phase = phase


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--layer", type=int, default=1, help="on nano-9b-v2, layer 1 is an MLP")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    peaks = PhasePeaks()
    ckpt = open_checkpoint(args.checkpoint)
    generator = torch.Generator().manual_seed(0)
    xs = list(torch.randn(calibrate.ROWS, calibrate.ROW_TOKENS, ckpt.cfg.hidden_size, generator=generator)
              .split(calibrate.BATCH_ROWS))
    peaks.enter("layer")
    block = ckpt.layer(args.layer)
    peaks.enter("hessians")
    with torch.no_grad():
        hessians, _ = calibrate.layer_hessians(ckpt.cfg, block, args.layer, xs)
    for name, linear in calibrate.layer_projections(block, args.layer).items():
        peaks.enter(f"gptq {name}")
        w = linear.weight.detach().numpy()
        t0 = time.perf_counter()
        gptq(w, hessians.pop(name), 4, 32)
        print(f"{name} {tuple(w.shape)}: {time.perf_counter() - t0:.1f} s", flush=True)
    peaks.enter("done")
    time.sleep(2 * SAMPLE_S)
    print(f"layer {args.layer} ({ckpt.cfg.pattern[args.layer]}), peak RSS by phase:")
    for phase, rss in peaks.peaks.items():
        print(f"  {phase}: {rss / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
