"""Repetitions, medians and ratios: the one way every case records what it measured.

A case runs each measurement `warmups` times as a warm-up (discarded; two by default: transformers needs
two full calls before its speed settles, and every measurement gets the same), then `reps` times, and
keeps every run and their median. Measurements that are compared are interleaved, run by run (ours and
transformers, gRPC and in-process, one pass and two calls), so that a change in machine load during a case
hits both sides alike; their ratio is the median of the per-round ratios (a paired comparison: on this VM
the speed moves between rounds, and a ratio of medians would pair runs from different rounds). Other
ratios are ratios of medians. A target is written as ">= 3.5" or "<= 0.7".
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@dataclass
class Case:
    name: str
    warmups: int = 2
    measurements: dict[str, dict] = field(default_factory=dict)
    ratios: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    details: dict[str, object] = field(default_factory=dict)
    load: dict[str, list[float]] = field(default_factory=lambda: {"start": loadavg()})
    seconds: float = 0.0
    _t0: float = field(default_factory=time.perf_counter, repr=False)

    def record(self, key: str, unit: str, runs: list[float], **info: object) -> float:
        self.measurements[key] = {"unit": unit, "median": statistics.median(runs), "runs": list(runs), **info}
        return self.measurements[key]["median"]

    def measure(self, key: str, unit: str, fn: Callable[[], float], reps: int,
                warmup: Callable[[], object] | None = None, **info: object) -> float:
        """Warm up (`warmups` calls of `warmup`, else of `fn`), then record `reps` calls of `fn`."""
        for _ in range(self.warmups):
            (warmup or fn)()
        return self.record(key, unit, [fn() for _ in range(reps)], **info)

    def measure_interleaved(self, fns: dict[str, tuple[str, Callable[[], float]]], reps: int,
                            alternate: bool = False) -> None:
        """`warmups` rounds, then `reps` rounds calling each once per round; `alternate` reverses the order
        every other round, so that no measurement always runs in the wake of the same other one."""
        for _ in range(self.warmups):
            for _, fn in fns.values():
                fn()
        runs: dict[str, list[float]] = {k: [] for k in fns}
        for k in range(reps):
            order = list(fns.items())
            for key, (_, fn) in (order[::-1] if alternate and k % 2 else order):
                runs[key].append(fn())
        group = len({m["rounds"] for m in self.measurements.values() if "rounds" in m})  # a new id per call
        for key, (unit, _) in fns.items():
            self.record(key, unit, runs[key], rounds=group)

    def ratio(self, key: str, num: str, den: str, target: str | None = None) -> float | None:
        """num / den, checked against `target` (">= x" or "<= x") when given: the median of the per-round
        ratios when the two were measured in the same rounds (their smallest and largest kept as `min` and
        `max`), else median(num) / median(den) (`min` and `max` None)."""
        if num not in self.measurements or den not in self.measurements:
            return None
        a, b = self.measurements[num], self.measurements[den]
        paired = a.get("rounds") is not None and a.get("rounds") == b.get("rounds")
        per_round = [x / y for x, y in zip(a["runs"], b["runs"])] if paired else []
        value = statistics.median(per_round) if paired else a["median"] / b["median"]
        met = None
        if target is not None:
            op, bound = target.split()
            met = value >= float(bound) if op == ">=" else value <= float(bound)
        self.ratios[key] = {"value": value, "min": min(per_round, default=None), "max": max(per_round, default=None),
                            "num": num, "den": den, "paired": paired, "target": target, "met": met}
        return value

    def finish(self) -> dict:
        self.load["end"] = loadavg()
        self.seconds = round(time.perf_counter() - self._t0, 1)
        d = asdict(self)
        d.pop("_t0")
        return d
