"""Argument types shared by several commands."""

from __future__ import annotations

import argparse

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
