"""ONNX Runtime sessions, created in this one place (threads, providers, options).

Every ONNX model facekd runs (an embedder, a parity check, a benchmark, an INT8
candidate, a multi-exit export) gets its session from :func:`ort_session`, so the
threading and logging choices are made once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

from facekd.errors import FacekdError

CPU = ("CPUExecutionProvider",)

_LEVELS = {
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def accelerated() -> tuple[str, ...]:
    """CUDA first when this ONNX Runtime build has it, then the CPU."""
    return ("CUDAExecutionProvider", *CPU) if "CUDAExecutionProvider" in ort.get_available_providers() else CPU


def ort_session(
    model: Path | str | bytes,
    *,
    threads: int | None = 1,
    providers: Sequence[str] = CPU,
    spinning: bool = False,
    optimization: str = "all",
) -> ort.InferenceSession:
    """An ONNX Runtime session for ``model``.

    Args:
        model: An ``.onnx`` file, or a serialised model (bytes).
        threads: Intra-op threads; None lets ONNX Runtime use every core. Inter-op
            parallelism is off (one thread): facekd's graphs are a single chain.
        providers: Execution providers in order of preference (default: the CPU;
            :func:`accelerated` for CUDA where present).
        spinning: Whether pool threads spin after a run. Off by default: a spinning pool
            steals the CPU from whatever runs next (another engine being timed, the
            training loop), and slowed it by up to 1.5x on the 2-core development CPU.
        optimization: Graph optimisation level: "none", "basic", "extended" or "all".

    Raises:
        FacekdError: The file is missing or ONNX Runtime cannot load the model; names it.
    """
    name = "in-memory ONNX model" if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise FacekdError(f"{name}: ONNX model not found")
    if optimization not in _LEVELS:
        raise FacekdError(f"unknown graph optimisation level {optimization!r}; known: {', '.join(_LEVELS)}")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = _LEVELS[optimization]
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts, providers=list(providers))
    except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph/... types
        raise FacekdError(f"{name}: cannot load ONNX model ({exc})".split("\n")[0]) from None
