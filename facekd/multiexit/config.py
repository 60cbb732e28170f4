"""The schema of a multi-exit config (``facekd multiexit CONFIG``): a distillation config
(``distill.terms`` apply at every exit; a teacher is optional) plus the ``exits`` section."""

from __future__ import annotations

from dataclasses import dataclass, field

from facekd.config import at_least, non_empty, positive
from facekd.distill.config import DistillCfg, DistillConfig, TermCfg
from facekd.models.exits import ExitCfg


@dataclass(frozen=True)
class ExitsCfg:
    """The exits and the distillation between them.

    Attributes:
        points: Early exits, earliest first: ``{at: NODE, width: C, downsample: K}``
            (:class:`facekd.models.exits.ExitCfg`); the backbone's output is the last exit.
        kl_weight: Weight of the inter-exit term; 0 trains each exit on its own loss only.
        tau_start, tau_end: Temperature of the inter-exit term, raised linearly over the
            run's steps (the teachers' soft outputs are kept from growing confident).
    """

    points: list[ExitCfg] = field(default_factory=list, metadata=non_empty())
    kl_weight: float = field(default=1.0, metadata=at_least(0))
    tau_start: float = field(default=1.0, metadata=positive())
    tau_end: float = field(default=4.0, metadata=positive())


def _hard_only() -> DistillCfg:
    return DistillCfg(terms=[TermCfg(name="hard", weight=1.0)])


@dataclass(frozen=True)
class MultiExitConfig(DistillConfig):
    """A whole ``facekd multiexit`` run: ``model`` is the backbone the exits attach to."""

    distill: DistillCfg = field(default_factory=_hard_only)
    exits: ExitsCfg = field(default_factory=ExitsCfg)
