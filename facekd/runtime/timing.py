"""Latency, measured one way for every table, the benchmark and the demo.

A shared, noisy CPU allows only this: a warm-up, repeated rounds, the median with the
spread, and the candidates interleaved round by round so that a burst of load from
another process falls on all of them alike. :func:`measure_latency` is the figure facekd
reports (ONNX Runtime, batch 1, one thread unless asked otherwise); the benchmark's
other columns (all threads, batch 64, PyTorch eager) are the same measurement with other
arguments.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

import numpy as np

from facekd.runtime.onnx import ort_session


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median over rounds and the spread (min and max round).

    Attributes:
        seconds: Each round's seconds per call, in order (to form ratios between
            candidates round by round, :func:`median_ratio`).
    """

    median: float
    low: float
    high: float
    rounds: int
    seconds: tuple[float, ...] = field(default=(), repr=False, compare=False)

    def ms(self, per: int = 1) -> dict:
        """Milliseconds per item (``per`` items per call), JSON-ready."""
        f = 1000.0 / per
        return {"median": round(self.median * f, 4), "min": round(self.low * f, 4), "max": round(self.high * f, 4)}

    @property
    def median_ms(self) -> float:
        return 1000.0 * self.median


# What can be timed: an ONNX file or serialised model, an ONNX Runtime session (anything
# with ``run`` and ``get_inputs``), or a call that does the work itself.
Target = Union[Path, str, bytes, Callable[[], object], object]


def _as_call(target: Target, inputs: np.ndarray | None, batch: int, threads: int) -> Callable[[], object]:
    if isinstance(target, (Path, str, bytes)):
        target = ort_session(target, threads=threads)
    if hasattr(target, "run") and hasattr(target, "get_inputs"):
        sess, inp = target, target.get_inputs()[0]
        x = inputs if inputs is not None else np.zeros([batch, *inp.shape[1:]], np.float32)
        return lambda: sess.run(None, {inp.name: x})
    if callable(target):
        return target
    raise TypeError(f"cannot time {type(target).__name__}: give an ONNX file, a session or a callable")


def measure_latency(
    targets: Mapping[str, Target],
    *,
    rounds: int = 15,
    threads: int = 1,
    batch: int = 1,
    inputs: np.ndarray | None = None,
    min_round_s: float = 0.05,
    warmup: int = 3,
) -> dict[str, Timing]:
    """Times each target, interleaved round by round; the figure every table reports.

    ONNX files get a session with ``threads`` intra-op threads (:func:`ort_session`) and
    are fed ``inputs`` (default: zeros, ``batch`` images of the model's input size). A
    callable is timed as it is: it must itself run a batch of ``batch`` on ``threads``
    threads (:func:`torch_call` does for a PyTorch module).

    Each round repeats a call until ``min_round_s`` has passed (at least once) and
    records the mean; the rounds of different targets alternate.

    Returns:
        Per name: its :class:`Timing` (seconds per call; ``.median_ms`` for ms).
    """
    calls = {name: _as_call(t, inputs, batch, threads) for name, t in targets.items()}
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    reps = {}  # one call each to choose how many calls make a round
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
    return {
        k: Timing(median=float(np.median(v)), low=float(min(v)), high=float(max(v)), rounds=rounds, seconds=tuple(v))
        for k, v in per_round.items()
    }


def torch_call(model, x: np.ndarray | None = None, threads: int = 1) -> Callable[[], object]:
    """A call that runs PyTorch ``model`` on ``x`` (default: one zero face of the
    model's ``cfg.input_size``) under ``inference_mode`` with ``threads`` op threads."""
    import torch  # heavy: only PyTorch timings need it, ONNX ones do not

    if x is None:
        x = np.zeros((1, 3, *model.cfg.input_size), np.float32)
    t = torch.from_numpy(x)

    def call():
        torch.set_num_threads(threads)
        with torch.inference_mode():
            model(t)

    return call


def median_ratio(num: Timing | np.ndarray, den: Timing | np.ndarray) -> tuple[float, float, float]:
    """Median, min and max of the round-by-round ratio ``num / den``."""
    a = np.asarray(num.seconds if isinstance(num, Timing) else num)
    b = np.asarray(den.seconds if isinstance(den, Timing) else den)
    r = a / b
    return float(np.median(r)), float(r.min()), float(r.max())
