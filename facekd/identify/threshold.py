"""The open-set threshold: the cosine below which ``identify`` answers "unknown".

Chosen on LFW (``facekd.identify.evaluation``): over the seeded 1:N trials, the
score that lets through a target fraction of non-mated probes (the false-positive
identification rate, FPIR), one threshold per scoring rule ("best" face, "mean"
template). Stored in the ONNX model under ``facekd.ident_threshold`` beside the verify
threshold; a gallery copies it when it is created (``GalleryModel.thresholds``).
``facekd eval lfw-ident --model MODEL.onnx --store-threshold`` chooses and stores one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from facekd.onnx_metadata import IDENT_THRESHOLD_META_KEY, read_metadata, update_metadata
from facekd.errors import FacekdError

TARGET_FPIR = 0.01


@dataclass(frozen=True)
class IdentThresholdChoice:
    """Open-set thresholds per scoring rule and the evidence for them.

    Attributes:
        thresholds: ``{"best": cos, "mean": cos}``: the median over trials of the score
            with the target FPIR.
        target_fpir: The FPIR they were chosen for (0.01 = 1%).
        tpir: ``{"best": %, "mean": %}`` true-positive identification rate at that
            FPIR, mean over trials.
        data: What they were chosen on.
        trials, enrolled: Trials run and photos enrolled per gallery person.
        detector: How raw LFW photos were aligned.
    """

    thresholds: dict[str, float]
    target_fpir: float
    tpir: dict[str, float] = field(default_factory=dict)
    data: str = ""
    trials: int = 0
    enrolled: int = 1
    detector: str = ""

    @classmethod
    def from_json(cls, text: str) -> IdentThresholdChoice:
        return cls(**json.loads(text))


def stored_ident_thresholds(meta: dict[str, str]) -> dict[str, float]:
    """``{"best": cos, "mean": cos}`` from a model's metadata (empty when none stored)."""
    if IDENT_THRESHOLD_META_KEY not in meta:
        return {}
    try:
        return {k: float(v) for k, v in IdentThresholdChoice.from_json(meta[IDENT_THRESHOLD_META_KEY]).thresholds.items()}
    except (TypeError, ValueError) as exc:
        raise FacekdError(f"malformed {IDENT_THRESHOLD_META_KEY} metadata ({exc})") from None


def read_ident_threshold(model_path: Path | str) -> IdentThresholdChoice | None:
    """The choice stored in an ONNX model, or None."""
    meta = read_metadata(model_path)
    return IdentThresholdChoice.from_json(meta[IDENT_THRESHOLD_META_KEY]) if IDENT_THRESHOLD_META_KEY in meta else None


def store_ident_threshold(model_path: Path | str, choice: IdentThresholdChoice) -> None:
    """Writes ``choice`` into the model's metadata (``facekd.ident_threshold``), atomically."""
    update_metadata(model_path, {IDENT_THRESHOLD_META_KEY: json.dumps(asdict(choice))})
