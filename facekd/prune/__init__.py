"""Structured pruning with distillation recovery (``facekd prune CONFIG --out RUN``).

Filters are ranked by a registered importance (:data:`facekd.prune.importance.IMPORTANCES`:
``taylor``, ``l1``, ``l1_next``, ``random``), removed through Torch-Pruning (which resolves the
channel dependencies of residual, concatenating and depthwise layers), and the pruned
model recovers by distillation from the unpruned one, in iterative steps
(:mod:`facekd.prune.run`). A pruned model is a normal facekd checkpoint: it carries the
pruning record that rebuilds it from its registered backbone
(:mod:`facekd.models.transforms`).

Torch-Pruning is the optional extra ``prune`` (``pip install facekd[prune]``); this
package's modules import it, this file does not.
"""

from __future__ import annotations

from facekd.errors import FacekdError


def require_torch_pruning() -> None:
    """An error naming the extra when Torch-Pruning is not installed."""
    try:
        import torch_pruning  # noqa: F401  (only checks that it is there)
    except ImportError:
        raise FacekdError("pruning needs Torch-Pruning: pip install 'facekd[prune]' (or torch-pruning)") from None
