"""Latency measured the way a shared, noisy CPU allows: warm-up, repeated rounds,
medians, spreads, and candidates interleaved so that they see the same load."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median over rounds and the spread (min and max round)."""

    median: float
    low: float
    high: float
    rounds: int

    def ms(self, per: int = 1) -> dict:
        """Milliseconds per item (``per`` items per call), JSON-ready."""
        f = 1000.0 / per
        return {"median": round(self.median * f, 4), "min": round(self.low * f, 4), "max": round(self.high * f, 4)}


def time_interleaved(
    calls: dict[str, Callable[[], object]],
    *,
    rounds: int = 15,
    min_round_s: float = 0.05,
    warmup: int = 3,
) -> tuple[dict[str, Timing], dict[str, np.ndarray]]:
    """Times each call in ``calls``, one round of each in turn, ``rounds`` times.

    Each round repeats a call until ``min_round_s`` has passed (at least once) and
    records the mean; the rounds of different calls alternate, so a burst of load
    from another process falls on all of them alike.

    Returns:
        Per name: its :class:`Timing`, and the per-round seconds (to form ratios
        between calls round by round).
    """
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    # One call each to choose how many calls make a round.
    reps = {}
    for name, fn in calls.items():
        t0 = time.perf_counter()
        fn()
        reps[name] = max(1, int(min_round_s / max(time.perf_counter() - t0, 1e-6)))
    per_round: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            for _ in range(reps[name]):
                fn()
            per_round[name].append((time.perf_counter() - t0) / reps[name])
    arrays = {k: np.asarray(v) for k, v in per_round.items()}
    timings = {
        k: Timing(median=float(np.median(v)), low=float(v.min()), high=float(v.max()), rounds=rounds)
        for k, v in arrays.items()
    }
    return timings, arrays


def median_ratio(num: np.ndarray, den: np.ndarray) -> tuple[float, float, float]:
    """Median, min and max of the round-by-round ratio ``num / den``."""
    r = np.asarray(num) / np.asarray(den)
    return float(np.median(r)), float(r.min()), float(r.max())
