import numpy as np
import pytest

from facekd.align.template import TEMPLATES, adapt_crop, get_template, similarity_transform, warp_to_template
from facekd.errors import FacekdError


def _apply(m, pts):
    return pts @ m[:, :2].T + m[:, 2]


def test_similarity_recovers_a_known_transform():
    src = get_template("112x96").points
    angle, scale, t = np.deg2rad(17.0), 2.5, np.array([40.0, -12.0])
    r = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = scale * src @ r.T + t
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], scale * r, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)


def test_similarity_is_least_squares_and_rejects_reflection():
    # A mirrored point set cannot be matched by a similarity: the fit must stay a rotation.
    src = get_template("112x96").points
    dst = src * np.array([-1.0, 1.0])
    m = similarity_transform(src, dst)
    assert np.linalg.det(m[:, :2]) > 0


def test_112x112_template_is_shifted_8px():
    a, b = get_template("112x96"), get_template("112x112")
    np.testing.assert_allclose(b.points - a.points, [[8.0, 0.0]] * 5)
    assert (a.height, a.width, b.height, b.width) == (112, 96, 112, 112)
    with pytest.raises(FacekdError, match="unknown template"):
        get_template("96x96")


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_known_landmarks_land_on_the_template(name):
    """Dots drawn at landmark positions in a rotated, scaled photo end up on the template."""
    template = get_template(name)
    angle, scale, t = np.deg2rad(-12.0), 2.2, np.array([61.0, 35.0])
    r = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = scale * template.points @ r.T + t
    img = np.zeros((400, 400, 3), np.uint8)
    for x, y in landmarks:
        xi, yi = int(round(x)), int(round(y))
        img[yi - 3 : yi + 4, xi - 3 : xi + 4] = 255
    crop = warp_to_template(img, landmarks, template)
    assert crop.shape == (template.height, template.width, 3)
    gray = crop[..., 0].astype(float)
    for x, y in template.points:
        xi, yi = int(round(x)), int(round(y))
        win = gray[yi - 5 : yi + 6, xi - 5 : xi + 6]
        ys, xs = np.mgrid[yi - 5 : yi + 6, xi - 5 : xi + 6]
        cx, cy = (win * xs).sum() / win.sum(), (win * ys).sum() / win.sum()
        assert abs(cx - x) < 0.8 and abs(cy - y) < 0.8, (name, x, y, cx, cy)


def test_adapt_crop_between_templates():
    wide = np.arange(112 * 112 * 3, dtype=np.int64).reshape(112, 112, 3)
    narrow = adapt_crop(wide, get_template("112x112"), get_template("112x96"))
    np.testing.assert_array_equal(narrow, wide[:, 8:104])
    back = adapt_crop(narrow, get_template("112x96"), get_template("112x112"))
    np.testing.assert_array_equal(back[:, 8:104], narrow)
    assert (back[:, :8] == 0).all() and (back[:, 104:] == 0).all()
