"""insightface verification binaries (``lfw.bin``, ``cfp_fp.bin``, ...) read safely.

Such a file is a pickle of ``(list of encoded images, list of issame flags)``. A pickle
can run arbitrary code when loaded, so these files go through an unpickler that builds
only bytes, strings, numbers, booleans, lists and tuples, and refuses any class.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

from facekd.errors import FacekdError

# Python 3 pickles bytes at protocol < 3 as _codecs.encode(str, "latin1"): harmless,
# and the only global such a file needs.
_ALLOWED_GLOBALS = {("_codecs", "encode")}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only bytes, lists and bools are allowed")


def restricted_loads(data: bytes):
    """Unpickles ``data`` allowing plain containers and scalars only."""
    return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


@dataclass(frozen=True)
class VerificationBin:
    """Pairs stored as consecutive images: pair i is ``images[2i]``, ``images[2i+1]``."""

    images: list[bytes]
    issame: list[bool]

    def __len__(self) -> int:
        return len(self.issame)


def read_bin(path: Path | str) -> VerificationBin:
    """Reads an insightface verification ``.bin`` file.

    Raises:
        FacekdError: naming the file and what is wrong with it.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FacekdError(f"{path}: file not found") from None
    except OSError as exc:
        raise FacekdError(f"{path}: cannot read ({exc})") from None
    try:
        obj = restricted_loads(data)
    except pickle.UnpicklingError as exc:
        raise FacekdError(f"{path}: not a valid insightface .bin ({exc})") from None
    except Exception as exc:  # truncated or garbage data raises all sorts
        raise FacekdError(f"{path}: not a valid insightface .bin ({type(exc).__name__}: {exc})") from None
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise FacekdError(f"{path}: expected a pickled (images, issame) pair, got {type(obj).__name__}")
    images, issame = obj
    if not isinstance(images, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise FacekdError(f"{path}: images and issame must be lists")
    if not all(isinstance(b, (bytes, bytearray)) for b in images):
        raise FacekdError(f"{path}: every image must be encoded bytes")
    if not all(isinstance(s, (bool, int)) for s in issame):
        raise FacekdError(f"{path}: issame flags must be booleans")
    if len(images) != 2 * len(issame):
        raise FacekdError(f"{path}: {len(images)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    if not issame:
        raise FacekdError(f"{path}: holds no pairs")
    return VerificationBin(images=[bytes(b) for b in images], issame=[bool(s) for s in issame])
