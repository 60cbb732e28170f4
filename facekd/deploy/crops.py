"""A sample of aligned face crops from a folder or a pack: for INT8 calibration, parity
checks and benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from facekd.align.template import get_template
from facekd.data.pack import SUFFIX, Pack
from facekd.image_io import UnreadableImage, is_image_path, read_rgb
from facekd.evaluation.embed import crop_loader
from facekd.errors import FacekdError


def _folder_images(root: Path) -> list[Path]:
    found = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(files) if not f.startswith(".") and is_image_path(Path(f))]
    return found


def sample_crops(source: Path | str, template: str, count: int) -> np.ndarray:
    """Up to ``count`` aligned crops, evenly spaced over ``source``, as ``template`` crops.

    Args:
        source: A folder of aligned crops (any depth, e.g. ``facekd align`` output) or a
            ``.fkpack``.
        template: The template the model wants; 112x96 and 112x112 crops convert.
        count: How many crops at most.

    Returns:
        (n, H, W, 3) uint8 RGB.
    """
    source = Path(source)
    want = get_template(template)
    if source.is_file() and source.suffix == SUFFIX:
        pack = Pack(source)
        n = len(pack)
        read, describe = pack.image, (lambda i: f"{source}:{pack.files[i]}")
    elif source.is_dir():
        paths = _folder_images(source)
        n = len(paths)

        def read(i: int) -> np.ndarray:
            try:
                return read_rgb(paths[i])
            except UnreadableImage as exc:
                raise FacekdError(f"{paths[i]}: {exc}") from None

        describe = lambda i: str(paths[i])  # noqa: E731
    else:
        raise FacekdError(f"{source}: not a folder of aligned crops or a {SUFFIX} pack")
    if n == 0:
        raise FacekdError(f"{source}: holds no images")
    load = crop_loader(want, read, describe)
    picks = np.unique(np.linspace(0, n - 1, num=min(count, n)).round().astype(int))
    return np.stack([load(int(i)) for i in picks])
