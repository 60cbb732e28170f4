"""LFW View 2: parsing and validating the official ``pairs.txt``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from facekd.errors import FacekdError
from facekd.io_utils import read_text_file


@dataclass(frozen=True)
class LfwPairs:
    """The 6,000 (by default) verification pairs of LFW View 2.

    Attributes:
        left, right: Relative image paths (``Name/Name_0001.jpg``) per pair.
        issame: True for same-person pairs.
        fold: Fold index (0..folds-1) per pair.
        folds: Number of folds.
    """

    left: list[str]
    right: list[str]
    issame: list[bool]
    fold: list[int]
    folds: int

    def __len__(self) -> int:
        return len(self.issame)

    def images(self) -> list[str]:
        """Every distinct image the pairs use, sorted."""
        return sorted(set(self.left) | set(self.right))

    def subset(self, per_fold: int) -> "LfwPairs":
        """The first ``per_fold`` same-person and different-person pairs of each fold: a
        quick check during training, not a result to report as LFW accuracy."""
        if per_fold < 1:
            raise FacekdError(f"pairs per fold must be at least 1, got {per_fold}")
        keep, seen = [], {}
        for i, (f, same) in enumerate(zip(self.fold, self.issame)):
            if seen.get((f, same), 0) < per_fold:
                seen[(f, same)] = seen.get((f, same), 0) + 1
                keep.append(i)
        pick = lambda xs: [xs[i] for i in keep]  # noqa: E731
        return LfwPairs(pick(self.left), pick(self.right), pick(self.issame), pick(self.fold), self.folds)


def lfw_image(name: str, index: int, suffix: str = ".jpg") -> str:
    """Relative LFW path of image ``index`` (1-based) of person ``name``."""
    return f"{name}/{name}_{index:04d}{suffix}"


def parse_pairs(path: Path | str, suffix: str = ".jpg") -> LfwPairs:
    """Parses ``pairs.txt``: a ``folds n`` header, then per fold ``n`` same-person lines
    ``Name i j`` followed by ``n`` different-person lines ``Name1 i Name2 j``.

    Raises:
        FacekdError: naming the file and line on any deviation from that format.
    """
    path = Path(path)
    return parse_pairs_text(read_text_file(path, "pairs file"), str(path), suffix)


def parse_pairs_text(text: str, path: str = "pairs.txt", suffix: str = ".jpg") -> LfwPairs:
    """:func:`parse_pairs` on the file's text; ``path`` names it in errors."""
    lines = text.splitlines()
    rows = [(no, line.split()) for no, line in enumerate(lines, 1) if line.strip()]
    if not rows:
        raise FacekdError(f"{path}: empty pairs file")
    head_no, head = rows[0]
    if len(head) != 2 or not all(h.isascii() and h.isdigit() for h in head) or int(head[0]) < 2 or int(head[1]) < 1:
        raise FacekdError(f"{path}:{head_no}: expected a header 'folds pairs_per_half' such as '10 300', got {' '.join(head)!r}")
    folds, n = int(head[0]), int(head[1])
    body = rows[1:]
    expected = folds * 2 * n
    if len(body) != expected:
        raise FacekdError(
            f"{path}: header says {folds} folds of {n} same + {n} different pairs ({expected} lines), "
            f"found {len(body)} pair lines"
        )
    left, right, issame, fold = [], [], [], []
    for k, (no, parts) in enumerate(body):
        f, pos = divmod(k, 2 * n)
        same = pos < n
        try:
            if same:
                if len(parts) != 3:
                    raise ValueError(f"expected 'Name i j' (a same-person pair), got {len(parts)} fields")
                a = lfw_image(parts[0], int(parts[1]), suffix)
                b = lfw_image(parts[0], int(parts[2]), suffix)
            else:
                if len(parts) != 4:
                    raise ValueError(f"expected 'Name1 i Name2 j' (a different-person pair), got {len(parts)} fields")
                a = lfw_image(parts[0], int(parts[1]), suffix)
                b = lfw_image(parts[2], int(parts[3]), suffix)
        except ValueError as exc:
            msg = str(exc)
            if msg.startswith("invalid literal"):
                msg = f"image numbers must be integers ({' '.join(parts)!r})"
            raise FacekdError(f"{path}:{no}: fold {f + 1}: {msg}") from None
        left.append(a)
        right.append(b)
        issame.append(same)
        fold.append(f)
    return LfwPairs(left=left, right=right, issame=issame, fold=fold, folds=folds)


def check_images(pairs: LfwPairs, root: Path | str) -> None:
    """Raises one error listing every image the pairs need that ``root`` lacks."""
    root = Path(root)
    missing = [rel for rel in pairs.images() if not (root / rel).is_file()]
    if missing:
        shown = "\n  ".join(missing[:50])
        more = f"\n  ... and {len(missing) - 50} more" if len(missing) > 50 else ""
        raise FacekdError(f"{root}: {len(missing)} images named in pairs.txt are missing:\n  {shown}{more}")
