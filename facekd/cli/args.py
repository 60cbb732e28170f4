"""Argument types shared by several commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from facekd.align.detector import DETECTORS, check_detector
from facekd.errors import FacekdError


def detector_arg(value: str) -> str:
    """A ``--detector`` value: a registered detector, or a trained detector's ``.onnx`` file."""
    try:
        check_detector(value)
    except FacekdError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def detector_help(default: str, more: str = "") -> str:
    return (f"face detector: {', '.join(DETECTORS.names())}, or a detector .onnx from facekd distill-detector "
            f"(default {default}{'; ' + more if more else ''})")


def onnx_model_arg(value: str) -> Path:
    """A ``--model`` that must be an ONNX embedder (serve, gallery, identify): an ``.onnx``
    file, or the manifest name of one facekd ships in ``weights/``."""
    from facekd.models.base import BACKBONES
    from facekd.weights import onnx_models, shipped_file

    path = Path(value).expanduser()
    if path.is_file():
        return path
    shipped = onnx_models()
    if value in shipped:
        try:
            return shipped_file(value)
        except FacekdError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    if value in BACKBONES:
        raise argparse.ArgumentTypeError(
            f"{value!r} is a registered backbone; this command runs an exported ONNX model: "
            f"facekd export --model {value} --onnx {value}.onnx, then --model {value}.onnx")
    if path.suffix.lower() == ".onnx" or "/" in value:
        return path  # the command names the missing file itself
    raise argparse.ArgumentTypeError(
        f"{value}: neither an .onnx file nor a shipped ONNX model ({', '.join(shipped)})")
