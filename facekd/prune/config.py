"""The schema of a pruning config (``facekd prune CONFIG``): a distillation config (the
recovery: the unpruned model teaches the pruned one) plus the ``prune`` section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from facekd.config import at_least, fraction, positive
from facekd.distill.config import DistillCfg, DistillConfig


@dataclass(frozen=True)
class SparsityCfg:
    """Sparsity induction before the first pruning step (Singh et al., WACV 2019): the
    source trains for ``epochs`` with the recovery objective (``distill``, against the
    unpruned source) plus ``weight · Σ_l Σ_k ‖W_l[k]‖₁``, the L1 norms of the filters of
    the chosen conv layers (:mod:`facekd.prune.sparsity`). Pair it with the ``l1_next``
    importance, which ranks filters by the same weights.

    Attributes:
        weight: λ of the penalty (write ``1.0e-4``: YAML reads ``1e-4`` as text).
        epochs: Training epochs of the phase (``optim`` and ``schedule`` as recovery).
        layers: Module paths whose conv layers are penalised (a path names a conv or a
            block: every conv inside it); empty: every conv but the embedding layer.
    """

    weight: float = field(default=1e-4, metadata=positive())
    epochs: int = field(default=1, metadata=at_least(1))
    layers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class QatCfg:
    """Quantisation-aware recovery: the recovering model's convs and linear layers round
    their inputs and weights as onnxruntime's static INT8 will
    (:mod:`facekd.models.fakequant`), so that its INT8 export keeps its accuracy. The LFW
    figures of the recovery are then those of the rounded model.

    Attributes:
        weight_bits: 7 (facekd's INT8 recipes: ``reduce_range``) or 8.
        momentum: Weight of each new batch in the activations' moving min / max.
    """

    weight_bits: Literal[7, 8] = 7
    momentum: float = field(default=0.01, metadata=fraction(low_open=True))


@dataclass(frozen=True)
class PruneCfg:
    """What to prune and how.

    Attributes:
        source: The trained model: a facekd checkpoint (its ``model`` section -- backbone,
            arguments, head -- replaces the config's), or a registered backbone name with
            ``weights``. It teaches the recovery unless ``teacher.model`` names another.
        weights: For a registered name: a weights file or weights-manifest name.
        importance: A name in ``facekd.prune.importance.IMPORTANCES``: taylor, l1, l1_next,
            random.
        ratio: Fraction of the filters removed in the end (per layer, or of all layers
            together with ``global_pruning``).
        steps: Iterative steps; each removes ``ratio / steps`` of the original filters,
            then recovers for ``train.epochs`` epochs.
        global_pruning: One ranking across layers instead of the same ratio per layer.
        layer_ratios: Per-module ratios (module path -> fraction), overriding ``ratio``.
        max_layer_ratio: With global pruning, the most any layer loses (per step).
        round_to: Keep channel counts multiples of this.
        importance_batches: Training batches (of ``train.batch_size``) the taylor
            criterion averages over; its loss is the source checkpoint's classifier
            head on the labels (a source without one gets a classifier fitted on its
            frozen embeddings, as a distillation teacher does).
        surgery: Surgeries (``facekd.models.surgery.SURGERIES``, e.g. ``prelu_to_relu``)
            applied to the source before the first step, then recovered with it; a
            surgery limited to some submodules is written ``name@path,path``
            (``prelu_to_relu@blocks.0,blocks.1``); with
            ``ratio: 0`` a run is surgery and recovery alone. ``ratio: 0`` without a
            surgery is recovery alone, from a teacher other than the source
            (``teacher.model``): it continues the recovery of an earlier run's model.
        sparsity: Sparsity induction before the first step (None: none); see
            :class:`SparsityCfg`.
        qat: Quantisation-aware recovery (None: plain); see :class:`QatCfg`.
    """

    source: str = ""
    weights: str | None = None
    importance: str = "taylor"
    ratio: float = field(default=0.5, metadata=fraction(high_open=True))
    steps: int = field(default=1, metadata=at_least(1))
    global_pruning: bool = False
    layer_ratios: dict = field(default_factory=dict)
    max_layer_ratio: float = field(default=0.9, metadata=fraction(low_open=True, high_open=True))
    round_to: int | None = field(default=None, metadata=at_least(1))
    importance_batches: int = field(default=8, metadata=at_least(1))
    surgery: list[str] = field(default_factory=list)
    sparsity: SparsityCfg | None = None
    qat: QatCfg | None = None


def _featurenorm_only() -> DistillCfg:
    return DistillCfg(terms=[{"name": "featurenorm", "weight": 1.0}], teacher_mode="cache")


@dataclass(frozen=True)
class PruneConfig(DistillConfig):
    """A whole ``facekd prune`` run. ``distill`` is the recovery (default: FeatureNorm on
    the embedding against the unpruned model, which needs no labels)."""

    distill: DistillCfg = field(default_factory=_featurenorm_only)
    prune: PruneCfg = field(default_factory=PruneCfg)
