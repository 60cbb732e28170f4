from pathlib import Path

import pytest

from facekd.data.lfw import check_images, parse_pairs
from facekd.errors import FacekdError


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "pairs.txt"
    p.write_text(text)
    return p


GOOD = "2\t1\nAl\t1\t2\nAl\t1\tBo\t3\nCy\t2\t4\nCy\t1\tDi\t1\n"


def test_small_valid_file(tmp_path):
    pairs = parse_pairs(_write(tmp_path, GOOD))
    assert pairs.folds == 2 and len(pairs) == 4
    assert pairs.left == ["Al/Al_0001.jpg", "Al/Al_0001.jpg", "Cy/Cy_0002.jpg", "Cy/Cy_0001.jpg"]
    assert pairs.right == ["Al/Al_0002.jpg", "Bo/Bo_0003.jpg", "Cy/Cy_0004.jpg", "Di/Di_0001.jpg"]
    assert pairs.issame == [True, False, True, False]
    assert pairs.fold == [0, 0, 1, 1]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty pairs file"),
        ("ten 300\n", "expected a header"),
        ("2 1\nAl 1 2\nAl 1 Bo 3\nCy 2 4\n", r"4 lines\), found 3"),
        ("2 1\nAl 1 Bo 2\nAl 1 Bo 3\nCy 2 4\nCy 1 Di 1\n", r"pairs.txt:2: fold 1: expected 'Name i j'"),
        ("2 1\nAl 1 2\nAl 1 Bo\nCy 2 4\nCy 1 Di 1\n", r"pairs.txt:3: fold 1: expected 'Name1 i Name2 j'"),
        ("2 1\nAl 1 2\nAl 1 Bo 3\nCy x 4\nCy 1 Di 1\n", r"pairs.txt:4: fold 2: image numbers must be integers"),
    ],
)
def test_malformed_files_name_the_line(tmp_path, text, message):
    with pytest.raises(FacekdError, match=message):
        parse_pairs(_write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(FacekdError, match="pairs file not found"):
        parse_pairs(tmp_path / "nope.txt")


def test_every_missing_image_listed_at_once(tmp_path):
    pairs = parse_pairs(_write(tmp_path, GOOD))
    (tmp_path / "Al").mkdir()
    (tmp_path / "Al" / "Al_0001.jpg").write_bytes(b"x")
    with pytest.raises(FacekdError) as exc:
        check_images(pairs, tmp_path)
    msg = str(exc.value)
    assert "6 images named in pairs.txt are missing" in msg
    for name in ["Al/Al_0002.jpg", "Bo/Bo_0003.jpg", "Cy/Cy_0001.jpg", "Cy/Cy_0002.jpg", "Cy/Cy_0004.jpg", "Di/Di_0001.jpg"]:
        assert name in msg


def test_official_lfw_pairs(lfw_dir):
    pairs = parse_pairs(lfw_dir / "pairs.txt")
    assert pairs.folds == 10 and len(pairs) == 6000
    assert sum(pairs.issame) == 3000
    assert [pairs.fold.count(k) for k in range(10)] == [600] * 10
    # Folds are disjoint in identities.
    people = [set() for _ in range(10)]
    for a, b, f in zip(pairs.left, pairs.right, pairs.fold):
        people[f] |= {a.split("/")[0], b.split("/")[0]}
    assert all(not (people[i] & people[j]) for i in range(10) for j in range(i + 1, 10))
    check_images(pairs, lfw_dir)
    assert len(pairs.images()) == 7701
