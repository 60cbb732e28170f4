"""Face verification metrics: the LFW 10-fold protocol, ROC AUC, TAR@FAR and EER.

Pure functions: arrays in, a dataclass out, no printing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from facekd.preprocessing import cosine_rows


@dataclass(frozen=True)
class VerificationResult:
    """Verification scores; accuracies and rates are fractions in [0, 1].

    Attributes:
        accuracy: Mean held-out fold accuracy.
        std: Standard deviation of the fold accuracies (population, as insightface).
        fold_accuracy: Held-out accuracy of each fold.
        thresholds: Cosine threshold chosen on the other folds, per fold.
        auc: ROC AUC over all pairs (out-of-fold scores).
        eer: Equal error rate over all pairs.
        tar_at_far: True-accept rate at each false-accept rate (keys: the FAR).
        pairs: Number of pairs.
        scores: Held-out cosine similarity of every pair (for ROC plots).
        issame: The pairs' labels.
    """

    accuracy: float
    std: float
    fold_accuracy: list[float]
    thresholds: list[float]
    auc: float
    eer: float
    tar_at_far: dict[float, float]
    pairs: int
    scores: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros(0))
    issame: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros(0, bool))

    def to_dict(self) -> dict:
        """JSON-ready dict with accuracies in percent, as people quote LFW."""
        return {
            "accuracy": 100.0 * self.accuracy,
            "std": 100.0 * self.std,
            "folds": [100.0 * a for a in self.fold_accuracy],
            "thresholds": list(self.thresholds),
            "auc": self.auc,
            "eer": self.eer,
            "tar_at_far": {f"{far:g}": tar for far, tar in self.tar_at_far.items()},
            "pairs": self.pairs,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "VerificationResult":
        """The inverse of :meth:`to_dict` (without the per-pair scores, which it does not keep)."""
        return cls(
            accuracy=d["accuracy"] / 100.0, std=d["std"] / 100.0, fold_accuracy=[a / 100.0 for a in d["folds"]],
            thresholds=list(d["thresholds"]), auc=d["auc"], eer=d["eer"],
            tar_at_far={float(far): tar for far, tar in d["tar_at_far"].items()}, pairs=d["pairs"],
        )


def best_threshold(scores: np.ndarray, issame: np.ndarray) -> float:
    """The threshold that maximises accuracy of ``score >= threshold`` on these pairs.

    Candidates are the observed scores (from scikit-learn's ROC); the chosen one is moved
    halfway to the next lower score, so the decision boundary sits between pairs.
    """
    from sklearn.exceptions import UndefinedMetricWarning

    issame = np.asarray(issame, dtype=bool)
    with warnings.catch_warnings():  # a split with one class is legal: its best rule is trivial
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        fpr, tpr, thr = roc_curve(issame, scores, drop_intermediate=False)
    fpr, tpr = np.nan_to_num(fpr), np.nan_to_num(tpr)
    pos, neg = issame.sum(), (~issame).sum()
    acc = (tpr * pos + (1.0 - fpr) * neg) / (pos + neg)
    i = int(np.argmax(acc))
    if not np.isfinite(thr[i]):  # "reject everything" won
        return float(np.max(scores) + 1e-6)
    if i + 1 < len(thr):
        return float((thr[i] + thr[i + 1]) / 2.0)
    return float(thr[i] - 1e-6)


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Where the false-accept rate equals the false-reject rate, interpolated linearly."""
    fnr = 1.0 - tpr
    diff = fpr - fnr  # rises from -1 to +1 along the ROC
    j = int(np.searchsorted(diff, 0.0))
    if j == 0:
        return float(fpr[0])
    if j >= len(diff):
        return float(fpr[-1])
    t = -diff[j - 1] / (diff[j] - diff[j - 1])
    return float(fpr[j - 1] + t * (fpr[j] - fpr[j - 1]))


def tar_at_far(fpr: np.ndarray, tpr: np.ndarray, far: float) -> float:
    """The highest true-accept rate whose false-accept rate does not exceed ``far``."""
    ok = fpr <= far + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def _fold_ids(n: int, folds: int, fold_ids: np.ndarray | None) -> np.ndarray:
    """The fold of each of ``n`` pairs: ``fold_ids`` as given, else ``folds`` consecutive
    equal blocks; there must be two folds at least."""
    if fold_ids is None:
        fold_ids = np.arange(n) * folds // n
    fold_ids = np.asarray(fold_ids)
    if len(np.unique(fold_ids)) < 2:
        raise ValueError("need at least two folds")
    return fold_ids


def verify(
    emb1: np.ndarray,
    emb2: np.ndarray,
    issame: np.ndarray,
    folds: int = 10,
    fold_ids: np.ndarray | None = None,
    subtract_mean: bool = False,
    far_levels: tuple[float, ...] = (1e-3, 1e-2),
) -> VerificationResult:
    """Scores pairs by cosine similarity under the k-fold verification protocol.

    For each fold, the threshold is chosen on the other folds and accuracy measured on
    it. With ``subtract_mean``, the mean embedding of the other folds' images is
    subtracted before normalising (MobileFaceNet's LFW recipe). AUC, EER and TAR@FAR
    use every pair's held-out score.

    Args:
        emb1, emb2: (N, D) embeddings of each pair's two images (not necessarily
            normalised).
        issame: (N,) booleans.
        folds: Number of folds when ``fold_ids`` is not given: consecutive equal
            blocks, the order of LFW's pairs.txt.
        fold_ids: (N,) fold index per pair.
        subtract_mean: Subtract the training folds' mean embedding.
        far_levels: False-accept rates at which to report the true-accept rate.
    """
    emb1 = np.asarray(emb1, dtype=np.float64)
    emb2 = np.asarray(emb2, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    n = len(issame)
    if emb1.shape != emb2.shape or emb1.ndim != 2 or len(emb1) != n:
        raise ValueError(f"embeddings {emb1.shape} and {emb2.shape} do not match {n} pairs")
    fold_ids = _fold_ids(n, folds, fold_ids)

    held_out = np.empty(n)
    accs, thresholds = [], []
    for k in np.unique(fold_ids):
        test = fold_ids == k
        train = ~test
        mu = np.concatenate([emb1[train], emb2[train]]).mean(axis=0) if subtract_mean else 0.0
        sims = cosine_rows(emb1 - mu, emb2 - mu)
        thr = best_threshold(sims[train], issame[train])
        accs.append(float(np.mean((sims[test] >= thr) == issame[test])))
        thresholds.append(thr)
        held_out[test] = sims[test]

    fpr, tpr, _ = roc_curve(issame, held_out)
    return VerificationResult(
        accuracy=float(np.mean(accs)),
        std=float(np.std(accs)),
        fold_accuracy=accs,
        thresholds=thresholds,
        auc=float(roc_auc_score(issame, held_out)),
        eer=equal_error_rate(fpr, tpr),
        tar_at_far={far: tar_at_far(fpr, tpr, far) for far in far_levels},
        pairs=n,
        scores=held_out,
        issame=issame,
    )
