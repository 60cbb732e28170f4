"""The same/different threshold ``facekd verify`` uses, chosen on LFW and stored in the model.

``facekd verify`` compares two single embeddings by cosine: no mirror image, no mean
subtracted. The threshold is chosen for exactly that score: the one that maximises
accuracy over all 6,000 LFW View-2 pairs (``verification.best_threshold``). The
10-fold accuracy of the same plain cosine, with thresholds fitted on nine folds, is
stored beside it as the honest estimate of how often that threshold is right.

Raw LFW photos are aligned with ``DETECTOR`` (YuNet), the detector ``facekd verify``
tries first, so the threshold is chosen on crops cut the way verify cuts them.
``facekd export`` chooses one by default when it finds LFW (:func:`find_lfw`);
``facekd threshold MODEL.onnx`` adds one to a model exported without.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from facekd.errors import FacekdError

DETECTOR = "yunet"


@dataclass(frozen=True)
class ThresholdChoice:
    """A threshold and the evidence for it (accuracies in percent)."""

    threshold: float
    rule: str
    data: str
    pairs: int
    accuracy_all_pairs: float  # of the threshold itself, on the pairs it was chosen on
    accuracy_10fold: float
    std_10fold: float
    fold_thresholds: list[float]


def find_lfw(explicit: Path | str | None = None) -> Path | None:
    """The LFW to choose a threshold on: ``explicit`` (``--lfw``), else ``$FACEKD_DATA/lfw``
    when it holds pairs.txt, else None."""
    if explicit is not None:
        return Path(explicit)
    if env := os.environ.get("FACEKD_DATA"):
        lfw = Path(env).expanduser() / "lfw"
        if (lfw / "pairs.txt").is_file():
            return lfw
    return None


def add_threshold_command(model_path: Path | str) -> str:
    """The exact command that stores a threshold in ``model_path``."""
    lfw = find_lfw()
    return f"facekd threshold {model_path} --lfw {lfw if lfw else 'LFW_FOLDER_WITH_PAIRS_TXT'}"


def choose_threshold(
    model_path: Path | str, data: Path | str, progress=None, detector: str = DETECTOR
) -> ThresholdChoice:
    """Evaluates the ONNX model at ``model_path`` on LFW ``data`` and picks the threshold.

    Args:
        model_path: An exported ``.onnx``.
        data: LFW folder with pairs.txt (aligned or raw) or an LFW pack.
        progress: ``(done, total)`` callback while embedding.
        detector: Aligns raw LFW photos (into the cache, once).
    """
    import numpy as np

    from facekd.evaluation.embed import OnnxEmbedder
    from facekd.evaluation.pairs import evaluate_pairs
    from facekd.evaluation.metrics import best_threshold

    emb = OnnxEmbedder(model_path)
    emb.pre = replace(emb.pre, subtract_fold_mean=False)  # verify scores plain cosines
    ev = evaluate_pairs(emb, data, flip=False, embed_progress=progress, detector=detector)
    r = ev.result
    if r.pairs == 0:
        raise FacekdError(f"{data}: no pairs to choose a threshold on")
    thr = best_threshold(r.scores, r.issame)
    acc = float(np.mean((r.scores >= thr) == r.issame))
    return ThresholdChoice(
        threshold=round(float(thr), 6),
        rule="maximises accuracy of cosine >= threshold over all pairs",
        data=ev.protocol,
        pairs=int(r.pairs),
        accuracy_all_pairs=round(100 * acc, 3),
        accuracy_10fold=round(100 * r.accuracy, 3),
        std_10fold=round(100 * r.std, 3),
        fold_thresholds=[round(float(t), 6) for t in r.thresholds],
    )


def store_threshold(model_path: Path | str, choice: ThresholdChoice) -> None:
    """Writes ``choice`` into the model's metadata (key ``facekd.threshold``), atomically."""
    from facekd.onnx_metadata import THRESHOLD_META_KEY, update_metadata

    update_metadata(model_path, {THRESHOLD_META_KEY: json.dumps(asdict(choice))})
