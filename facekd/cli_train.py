"""The ``facekd`` training commands: ``facekd train`` (and later ``facekd distill``)."""

from __future__ import annotations

import argparse
from typing import Callable

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []
