"""Multi-layer pruning of a student face detector (Singh et al., WACV 2019; SPEC 4a).

The paper's three stages on a :class:`~facekd.detect.model.FaceDetectorNet`:

1. **Sparsity induction**: train with the detector's loss plus
   ``λ · sparsity_penalty(model, detector_layers(model))`` (the filters' L1 norms of the
   backbone and neck convs; :mod:`facekd.prune.sparsity` says why the conv weights).
2. **Filter selection**: the ``l1_next`` importance ranks each filter by its own mean
   absolute weight plus that of the next layer's weights reading its output.
3. **Removal**: :func:`prune_detector`, through Torch-Pruning, whose dependency graph
   removes the coupled channels together (a filter's depthwise conv and batch norm, the
   next layers' inputs, and the neck's lateral + upsampled additions). Every conv of
   the heads is ignored, so the 12 maps keep their 1, 1, 4, 10 channels per stride;
   their inputs shrink with the neck. Then the pruned detector retrains with its own
   loss: ``facekd distill-detector`` with ``init`` (the trained run) and ``prune``
   (:class:`facekd.detect.config.DetPruneCfg`); its checkpoints carry
   ``model.transforms``, rebuilt through :func:`rebuild_detector` on resume.

A pruned detector carries its Torch-Pruning history (``model.transforms``, as pruned
embedders do): :func:`rebuild_detector` replays it on the registered size, after which
a saved state dict loads.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch_pruning as tp
from torch import nn

from facekd.detect.model import DETECTOR_NETS, FaceDetectorNet
from facekd.errors import FacekdError
from facekd.models.pruned import plain_history
from facekd.models.records import with_record
from facekd.models.transforms import apply_transforms
from facekd.prune.importance import IMPORTANCES
from facekd.prune.sparsity import chosen_layers, sparsity_penalty

__all__ = ["detector_layers", "head_convs", "prune_detector", "rebuild_detector", "sparsity_penalty"]

TRACE_SIZE = 256  # the square input the dependency graph is traced with (any multiple of 32)


def head_convs(model: FaceDetectorNet) -> list[nn.Conv2d]:
    """Every conv of the heads (the 1x1 to the map's channels and the depthwise after it):
    never pruned, never penalised."""
    return [m for m in model.heads.modules() if isinstance(m, nn.Conv2d)]


def detector_layers(model: FaceDetectorNet, paths: Sequence[str] = ()) -> list[nn.Conv2d]:
    """The convs a sparsity penalty covers: those under ``paths`` (module paths such as
    ``stage16`` or ``fuse.0``; empty: the whole backbone and neck), heads excluded.
    Resolve once, then pass the list to :func:`sparsity_penalty` at every step."""
    return chosen_layers(model, paths, exclude=head_convs(model), where="detector sparsity layers")


def _sync_widths(model: FaceDetectorNet) -> FaceDetectorNet:
    # The hint's adaptation layer reads the stride-8 neck output (fuse[0]'s channels).
    model.neck_channels = model.fuse[0][1].out_channels
    return model


def prune_detector(
    model: FaceDetectorNet,
    ratio: float,
    *,
    importance: str = "l1_next",
    global_pruning: bool = False,
    round_to: int | None = None,
) -> FaceDetectorNet:
    """A copy of ``model`` with ``ratio`` of its prunable filters removed (``model`` is
    left as it is, so that it can teach the pruned one).

    Args:
        ratio: Fraction of each layer's filters removed (of all layers together with
            ``global_pruning``), in [0, 1).
        importance: A name in :data:`facekd.prune.importance.IMPORTANCES` that needs no
            loss (``l1_next``, ``l1``, ``random``).
        round_to: Keep channel counts multiples of this.

    Raises:
        FacekdError: ratio out of range, or an importance that needs labelled batches.
    """
    if not 0 <= ratio < 1:
        raise FacekdError(f"detector pruning ratio must lie in [0, 1), got {ratio}")
    crit = IMPORTANCES.build(importance)
    if crit.needs_loss:
        raise FacekdError(f"importance {importance} needs a loss on labelled batches; the detector pruning takes "
                          + ", ".join(n for n in IMPORTANCES.names() if not IMPORTANCES.build(n).needs_loss))
    net = copy.deepcopy(model).eval()
    pruner = tp.pruner.MetaPruner(
        net,
        torch.zeros(1, 3, TRACE_SIZE, TRACE_SIZE),
        importance=crit.scorer(net),
        global_pruning=global_pruning,
        pruning_ratio=ratio,
        ignored_layers=head_convs(net),
        round_to=round_to,
    )
    pruner.step()
    net.train(model.training)
    record = {"name": "prune", "history": plain_history(pruner.pruning_history()), "input_size": [TRACE_SIZE, TRACE_SIZE]}
    return _sync_widths(with_record(net, record))


def rebuild_detector(arch: str, transforms: list[dict] | None) -> FaceDetectorNet:
    """The registered detector ``arch`` with a pruned detector's ``transforms`` replayed:
    the pruned widths, ready for ``load_state_dict``."""
    return _sync_widths(apply_transforms(DETECTOR_NETS.build(arch), transforms))
