"""Every distillation term against a value computed by hand, and μ on constructed cases."""

from __future__ import annotations

import math

import pytest
import torch

from facekd.distill import DISTILL_LOSSES, Outputs, teacher_weights
from facekd.distill.losses import CAFFE_MIN_CE, build_terms
from facekd.errors import FacekdError


def _ce(logits: list[float], y: int) -> float:
    return -math.log(math.exp(logits[y]) / sum(math.exp(v) for v in logits))


def _softmax(z: list[float], tau: float = 1.0) -> list[float]:
    e = [math.exp(v / tau) for v in z]
    return [v / sum(e) for v in e]


# Two samples, three classes.
ZS = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]]
ZT = [[3.0, 0.0, -2.0], [-1.0, 2.0, 0.5]]
Y = [0, 2]
FS = [[1.0, 2.0], [0.0, -3.0]]
FT = [[2.0, 2.0], [4.0, 0.0]]


def _outs(weight=None):
    s = Outputs(torch.tensor(FS), torch.tensor(ZS), torch.tensor(ZS))
    t = Outputs(torch.tensor(FT), torch.tensor(ZT), None, None if weight is None else torch.tensor(weight))
    return s, t, torch.tensor(Y)


def test_hard_is_the_students_cross_entropy():
    s, t, y = _outs()
    got = DISTILL_LOSSES.build("hard", weight=0.5)(s, t, y)["hard"]
    assert got.item() == pytest.approx(0.5 * (_ce(ZS[0], 0) + _ce(ZS[1], 2)) / 2, rel=1e-6)


def test_soft_is_tau_squared_cross_entropy_of_softened_distributions():
    s, t, y = _outs()
    tau = 2.0
    ref = 0.0
    for zs, zt in zip(ZS, ZT):
        pt, ps = _softmax(zt, tau), _softmax(zs, tau)
        ref += -sum(a * math.log(b) for a, b in zip(pt, ps)) * tau * tau
    got = DISTILL_LOSSES.build("soft", tau=tau)(s, t, y)["soft"]
    assert got.item() == pytest.approx(ref / 2, rel=1e-6)


def test_soft_is_scaled_per_sample_by_mu():
    s, t, y = _outs(weight=[1.0, 0.25])
    tau = 1.0
    per = [-sum(a * math.log(b) for a, b in zip(_softmax(zt), _softmax(zs))) for zs, zt in zip(ZS, ZT)]
    got = DISTILL_LOSSES.build("soft", tau=tau)(s, t, y)["soft"]
    assert got.item() == pytest.approx((1.0 * per[0] + 0.25 * per[1]) / 2, rel=1e-6)
    # The hard term never follows μ.
    assert DISTILL_LOSSES.build("hard")(s, t, y)["hard"].item() == pytest.approx((_ce(ZS[0], 0) + _ce(ZS[1], 2)) / 2, rel=1e-6)


def test_feature_is_squared_l2():
    s, t, y = _outs()
    # (1-2)^2 + 0 = 1 ; (0-4)^2 + (-3-0)^2 = 25
    assert DISTILL_LOSSES.build("feature")(s, t, y)["feature"].item() == pytest.approx(13.0)


def test_featurenorm_is_two_minus_two_cosine():
    s, t, y = _outs()
    cos0 = (1 * 2 + 2 * 2) / (math.sqrt(5) * math.sqrt(8))
    cos1 = 0.0  # (0,-3) . (4,0) = 0
    ref = ((2 - 2 * cos0) + (2 - 2 * cos1)) / 2
    assert DISTILL_LOSSES.build("featurenorm")(s, t, y)["featurenorm"].item() == pytest.approx(ref, rel=1e-6)


def test_hinton_splits_hard_and_soft_with_alpha():
    s, t, y = _outs()
    tau, alpha = 3.0, 0.3
    hard = (_ce(ZS[0], 0) + _ce(ZS[1], 2)) / 2
    soft = sum(-sum(a * math.log(b) for a, b in zip(_softmax(zt, tau), _softmax(zs, tau))) for zs, zt in zip(ZS, ZT)) / 2
    got = DISTILL_LOSSES.build("hinton", tau=tau, alpha=alpha)(s, t, y)
    assert got["hinton_hard"].item() == pytest.approx((1 - alpha) * hard, rel=1e-6)
    assert got["hinton_soft"].item() == pytest.approx(alpha * tau * tau * soft, rel=1e-6)


def test_logit_regression_is_half_mean_squared_logit_gap():
    s, t, y = _outs()
    per = [0.5 * sum((a - b) ** 2 for a, b in zip(zs, zt)) / 3 for zs, zt in zip(ZS, ZT)]
    assert DISTILL_LOSSES.build("logit_regression")(s, t, y)["logit_regression"].item() == pytest.approx(sum(per) / 2, rel=1e-6)


def test_noisy_teacher_without_noise_is_soft_and_with_noise_differs():
    s, t, y = _outs()
    quiet = DISTILL_LOSSES.build("noisy_teacher", tau=2.0, sigma=0.0)(s, t, y)["noisy_teacher"]
    assert quiet.item() == pytest.approx(DISTILL_LOSSES.build("soft", tau=2.0)(s, t, y)["soft"].item(), rel=1e-6)
    torch.manual_seed(0)
    noisy = DISTILL_LOSSES.build("noisy_teacher", tau=2.0, sigma=1.0, p=1.0)(s, t, y)["noisy_teacher"]
    assert abs(noisy.item() - quiet.item()) > 1e-3
    term = DISTILL_LOSSES.build("noisy_teacher", tau=2.0, sigma=1.0, p=1.0).eval()  # no noise at eval
    assert term(s, t, y)["noisy_teacher"].item() == pytest.approx(quiet.item(), rel=1e-6)


def test_manual_teacher_is_kl_to_the_designed_distribution():
    s, t, y = _outs()
    a, tau = 0.9, 2.0
    ref = 0.0
    for zs, yy in zip(ZS, Y):
        pd = [a if c == yy else (1 - a) / 2 for c in range(3)]
        pt = _softmax([math.log(v) for v in pd], tau)
        ps = _softmax(zs, tau)
        ref += sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps)) * tau * tau
    got = DISTILL_LOSSES.build("manual_teacher", a=a, tau=tau)(s, t, y)["manual_teacher"]
    assert got.item() == pytest.approx(ref / 2, rel=1e-5)


def test_label_smoothing():
    s, t, y = _outs()
    eps = 0.1
    ref = 0.0
    for zs, yy in zip(ZS, Y):
        logp = [math.log(p) for p in _softmax(zs)]
        q = [1 - eps if c == yy else eps / 2 for c in range(3)]
        ref += -sum(a * b for a, b in zip(q, logp))
    assert DISTILL_LOSSES.build("label_smoothing", epsilon=eps)(s, t, y)["label_smoothing"].item() == pytest.approx(ref / 2, rel=1e-6)


# --- teacher weighting μ (SPEC 3) ----------------------------------------------------


def _logits_with_ce(ce: float, classes: int = 2) -> list[float]:
    """Two-class logits [a, 0] whose cross-entropy on class 0 is ``ce``: a = -log(e^ce - 1)."""
    return [-math.log(math.exp(ce) - 1.0), 0.0][:classes]


@pytest.mark.parametrize(
    "h_t, h_s, expected",
    [
        (0.5, 2.0, 1.0),  # w = 0.5 / 1.5 = 1/3 <= 1: full guidance
        (1.5, 2.0, 1.0),  # w = 1.5 / 1.5 = 1 exactly: still <= 1
        (3.0, 2.0, 1 - (0.5 / 8.37665) * 2.0),  # w = 2 > 1: 1 - (k/MIN)·w
        (30.0, 2.0, 0.0),  # w = 20: 1 - 0.0597·20 < 0, clamped to 0
        (3.0, 0.4, 1.0),  # H_S + k = -0.1 <= 0: μ = 1
        (3.0, 0.5, 1.0),  # H_S + k = 0 exactly: μ = 1
    ],
)
def test_teacher_weights_constructed_cases(h_t, h_s, expected):
    zt = torch.tensor([_logits_with_ce(h_t)])
    zs = torch.tensor([_logits_with_ce(h_s)], dtype=torch.float64).float()
    y = torch.tensor([0])
    mu = teacher_weights(zt, zs, y, k=-0.5, min_ce=CAFFE_MIN_CE)
    assert mu.shape == (1,)
    assert mu.item() == pytest.approx(expected, abs=1e-4)


def test_teacher_weights_carry_no_gradient_and_work_per_sample():
    zt = torch.tensor([_logits_with_ce(0.5), _logits_with_ce(3.0)])
    zs = torch.tensor([_logits_with_ce(2.0), _logits_with_ce(2.0)], requires_grad=True)
    mu = teacher_weights(zt, zs, torch.tensor([0, 0]))
    assert not mu.requires_grad
    assert mu.tolist() == pytest.approx([1.0, 1 - (0.5 / 8.37665) * 2.0], abs=1e-4)


def test_terms_from_config_entries():
    terms = build_terms([{"name": "hard"}, {"name": "soft", "weight": 2.0, "tau": 3.0}])
    assert [type(t).__name__ for t in terms] == ["Hard", "Soft"]
    s, t, y = _outs()  # the entry's weight and tau reach the value: 2 x the tau-3 soft term by hand
    tau = 3.0
    ref = sum(-sum(a * math.log(b) for a, b in zip(_softmax(zt, tau), _softmax(zs, tau))) * tau * tau
              for zs, zt in zip(ZS, ZT)) / 2
    assert terms[1](s, t, y)["soft"].item() == pytest.approx(2.0 * ref, rel=1e-6)
    assert terms[0](s, t, y)["hard"].item() == pytest.approx((_ce(ZS[0], 0) + _ce(ZS[1], 2)) / 2, rel=1e-6)
    with pytest.raises(FacekdError, match="unknown distillation term 'sfot'"):
        build_terms([{"name": "sfot"}])
    with pytest.raises(FacekdError, match="unknown key temperature"):
        build_terms([{"name": "soft", "temperature": 3}])


def _outputs_with(needs: frozenset[str], drop: str | None = None):
    """Student and teacher outputs holding only what ``needs`` names (minus ``drop``)."""
    have = set(needs) - {drop}
    zs, zt = torch.tensor(ZS), torch.tensor(ZT)
    student = Outputs(torch.tensor(FS), zs if "student_logits" in have else None,
                      zs if "student_logits" in have else None)
    teacher = Outputs(torch.tensor(FT) if "teacher_embedding" in have else None,
                      zt if "teacher_logits" in have else None)
    target = torch.tensor(Y) if "labels" in have else None
    if "teacher_features" in have:  # one inner layer: a (2, 2, 1, 1) map per network
        student.features = {"blocks.0": torch.tensor(FS)[:, :2, None, None]}
        teacher.features = {"blocks.0": torch.tensor(FT)[:, :2, None, None]}
    return student, teacher, target


@pytest.mark.parametrize("name", DISTILL_LOSSES.names())
def test_each_term_reads_exactly_what_it_declares(name):
    """``needs`` is the contract the objective reads: the term runs on just those
    inputs, fails without any one of them, and logs under its registry name."""
    term = DISTILL_LOSSES.build(name)
    assert term.needs and term.needs <= {"labels", "student_logits", "teacher_logits", "teacher_embedding",
                                         "teacher_features"}
    out = term(*_outputs_with(term.needs))
    assert all(torch.isfinite(v) for v in out.values())
    assert all(k == name or k.startswith(f"{name}_") for k in out), out.keys()
    for need in term.needs:
        with pytest.raises((TypeError, AttributeError, RuntimeError, FacekdError)):
            term(*_outputs_with(term.needs, drop=need))


def test_fixed_lift_keeps_the_teachers_cosines_and_norms_and_learns_nothing():
    from facekd.distill.teacher_sources import LiftedTeacher, orthonormal_lift

    q = orthonormal_lift(128, 512)
    torch.testing.assert_close(q.T @ q, torch.eye(128), atol=1e-5, rtol=0)
    t = torch.randn(6, 128)
    lifted = LiftedTeacher(lambda x, index: Outputs(t, torch.ones(6, 3)), 128, 512)(None, None)
    assert lifted.embedding.shape == (6, 512) and torch.equal(lifted.logits, torch.ones(6, 3))
    torch.testing.assert_close(lifted.embedding.norm(dim=1), t.norm(dim=1), atol=1e-4, rtol=1e-5)
    cos = torch.nn.functional.cosine_similarity
    torch.testing.assert_close(cos(lifted.embedding[:3], lifted.embedding[3:]), cos(t[:3], t[3:]), atol=1e-5, rtol=0)
    # A student embedding equal to the lifted teacher's: FeatureNorm 0; another: 2 - 2cos by hand.
    (term,) = build_terms([{"name": "featurenorm", "weight": 1.0}])
    assert term(Outputs(lifted.embedding), lifted, None)["featurenorm"].item() < 1e-6
    other = torch.randn(6, 512)
    want = (2 - 2 * cos(other, lifted.embedding)).mean()
    torch.testing.assert_close(term(Outputs(other), lifted, None)["featurenorm"], want, atol=1e-5, rtol=0)
