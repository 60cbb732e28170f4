"""verify() against a case worked out by hand (see the comments for the arithmetic)."""

import json

import numpy as np
import pytest

from facekd.evaluation.metrics import VerificationResult, best_threshold, verify


def _pairs_with_cosines(sims):
    """emb1 = (1, 0), emb2 = (cos t, sin t): the pair's cosine similarity is exactly sims[i]."""
    sims = np.asarray(sims, dtype=float)
    e1 = np.tile([1.0, 0.0], (len(sims), 1))
    e2 = np.stack([sims, np.sqrt(1 - sims**2)], axis=1)
    return e1, e2


def test_two_folds_by_hand():
    # fold 0: sims 0.9 0.8 (same) 0.1 0.3 (different); fold 1: 0.7 0.2 (same) 0.4 0.0 (different).
    sims = [0.9, 0.8, 0.1, 0.3, 0.7, 0.2, 0.4, 0.0]
    same = [True, True, False, False, True, True, False, False]
    e1, e2 = _pairs_with_cosines(sims)
    r = verify(e1, e2, same, folds=2)
    # Fold 0 is tested with a threshold fitted on fold 1: accepting only 0.7 scores 3/4, the
    # best (tied with accepting 0.7/0.4/0.2); the highest such threshold is kept and moved
    # halfway to the next lower score: (0.7 + 0.4) / 2 = 0.55. Fold 0 at 0.55: 4/4.
    # Fold 1 with fold 0's threshold: fold 0 separates perfectly between 0.8 and 0.3 ->
    # 0.55. Fold 1 at 0.55: 0.7 yes, 0.2 no (wrong), 0.4 no, 0.0 no -> 3/4.
    np.testing.assert_allclose(r.thresholds, [0.55, 0.55])
    np.testing.assert_allclose(r.fold_accuracy, [1.0, 0.75])
    assert r.accuracy == pytest.approx(0.875)
    assert r.std == pytest.approx(0.125)
    # AUC: positives {.9,.8,.7,.2} vs negatives {.1,.3,.4,0}: 4+4+4+2 = 14 of 16 orderings.
    assert r.auc == pytest.approx(14 / 16)
    # With no false accept allowed, the threshold sits above 0.4: 3 of 4 positives accepted.
    assert r.tar_at_far[1e-3] == pytest.approx(0.75)
    # Accepting {.9,.8,.7,.4}: FAR = 1/4, FRR = 1/4 -> EER 0.25.
    assert r.eer == pytest.approx(0.25)
    assert r.pairs == 8
    d = r.to_dict()
    assert d["accuracy"] == pytest.approx(87.5) and d["folds"] == pytest.approx([100.0, 75.0])
    back = VerificationResult.from_dict(json.loads(json.dumps(d)))  # as a JSON file gives it back
    assert back.accuracy == pytest.approx(0.875) and back.fold_accuracy == pytest.approx([1.0, 0.75])
    assert back.tar_at_far == {1e-3: pytest.approx(0.75), 1e-2: pytest.approx(0.75)}
    assert (back.auc, back.eer, back.pairs, back.thresholds) == (r.auc, r.eer, 8, pytest.approx([0.55, 0.55]))


def test_best_threshold_separates_and_handles_all_negative():
    assert best_threshold(np.array([0.9, 0.8, 0.3]), np.array([True, True, False])) == pytest.approx(0.55)
    # Only negatives: rejecting everything is right, the threshold must exceed every score.
    thr = best_threshold(np.array([0.2, 0.5]), np.array([False, False]))
    assert thr > 0.5


def test_fold_mean_subtraction_removes_a_shared_offset():
    """Every fold holds each pair and its negation, so each training split has mean zero;
    an offset added to all embeddings is then removed exactly by subtract_mean."""
    rng = np.random.default_rng(0)
    n_half, folds = 20, 4
    e1, e2, same, fold = [], [], [], []
    for k in range(folds):
        a = rng.normal(size=(n_half, 8))
        s = rng.random(n_half) < 0.5
        b = np.where(s[:, None], a + 0.3 * rng.normal(size=(n_half, 8)), rng.normal(size=(n_half, 8)))
        e1 += [a, -a]
        e2 += [b, -b]
        same += [s, s]
        fold += [np.full(2 * n_half, k)]
    e1, e2 = np.concatenate(e1), np.concatenate(e2)
    same, fold = np.concatenate(same), np.concatenate(fold)
    offset = rng.normal(size=8) * 3.0
    base = verify(e1, e2, same, fold_ids=fold, subtract_mean=False)
    shifted = verify(e1 + offset, e2 + offset, same, fold_ids=fold, subtract_mean=True)
    naive = verify(e1 + offset, e2 + offset, same, fold_ids=fold, subtract_mean=False)
    np.testing.assert_allclose(shifted.fold_accuracy, base.fold_accuracy)
    np.testing.assert_allclose(shifted.scores, base.scores, atol=1e-12)
    assert not np.allclose(naive.scores, base.scores)


def test_shape_errors():
    with pytest.raises(ValueError, match="do not match"):
        verify(np.zeros((4, 2)), np.zeros((3, 2)), [True] * 4)
