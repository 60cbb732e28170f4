"""Uploaded photos: checked by content, size-limited, decoded to RGB, or refused with a 4xx.

Only JPEG, PNG, WebP and BMP are accepted, told by their first bytes (the file name and
the client's content type are not trusted). An image whose header declares more than
``max_pixels`` is refused before its pixels are decoded (a decompression bomb); a
truncated or corrupt one is refused naming the decoder's reason.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from facekd.image_io import UnreadableImage, decode_rgb
from facekd.serve.errors import ApiError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")


def sniff_format(data: bytes) -> str | None:
    """The whitelisted format ``data`` starts like, or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM":
        return "BMP"
    return None


def _looks_like(data: bytes) -> str:
    head = data[:512]
    if head[:4] in (b"GIF8",):
        return "a GIF image"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "a TIFF image"
    if head[:5] == b"%PDF-":
        return "a PDF document"
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "unknown binary data"


def decode_upload(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """Decodes one uploaded photo to an HxWx3 uint8 RGB array, upright.

    Args:
        data: The uploaded bytes.
        name: How to name the upload in an error (form field and file name).
        max_pixels: Largest width x height accepted.

    Raises:
        ApiError: 422 ``empty_image`` / ``image_too_large`` / ``unreadable_image``,
            415 ``unsupported_image_format``.
    """
    if not data:
        raise ApiError(422, "empty_image", f"{name}: empty upload (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise ApiError(
            415, "unsupported_image_format",
            f"{name}: not a JPEG, PNG, WebP or BMP image (its content looks like {_looks_like(data)})",
        )
    try:
        # Header only: the size is known before a single pixel is decoded.
        with Image.open(io.BytesIO(data), formats=[fmt]) as img:
            width, height = img.size
    except Image.DecompressionBombError as exc:
        raise ApiError(422, "image_too_large", f"{name}: image too large ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ApiError(422, "unreadable_image", f"{name}: corrupt {fmt} header ({exc})") from None
    if width * height > max_pixels:
        raise ApiError(
            422, "image_too_large",
            f"{name}: {width}x{height} pixels is {width * height / 1e6:.0f} Mpx, over this server's "
            f"limit of {max_pixels / 1e6:.0f} Mpx",
        )
    try:
        return decode_rgb(data)
    except UnreadableImage as exc:
        raise ApiError(422, "unreadable_image", f"{name}: {exc}") from None
