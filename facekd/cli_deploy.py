"""The ``facekd`` deployment commands: ``facekd export``, ``embed``, ``verify``, ``bench``."""

from __future__ import annotations

import argparse
from typing import Callable

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []
