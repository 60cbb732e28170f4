"""Progress bars for long work, driven by ``progress(done, total)`` callbacks."""

from __future__ import annotations

import sys
from typing import Callable

from tqdm import tqdm


def progress_bar(desc: str, unit: str = "img", interactive_only: bool = False, leave: bool = True) -> Callable[[int, int], None]:
    """A tqdm bar on stderr that draws itself on the first call and closes at the end.

    Args:
        desc: Label in front of the bar.
        unit: What is counted ("img", "step").
        interactive_only: Draw only on a terminal (logs of batch jobs stay clean).
        leave: Keep the finished bar on screen.
    """
    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            # Off a terminal (a log file, CI), one line every 30 s instead of one per item.
            quiet = not sys.stderr.isatty()
            bar = tqdm(total=total, initial=done, desc=desc, unit=unit, dynamic_ncols=True,
                       disable=None if interactive_only else False, leave=leave, mininterval=30.0 if quiet else 0.1)
        bar.update(done - bar.n)  # tqdm redraws at most every mininterval
        if done >= total:
            bar.close()

    return update
