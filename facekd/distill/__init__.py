"""Knowledge distillation: the terms of Wang et al. (ICIP 2018) and the methods around it,
teachers (live or cached), and the objective ``facekd distill`` trains."""

from facekd.distill.losses import DISTILL_LOSSES, Outputs, teacher_weights

__all__ = ["DISTILL_LOSSES", "Outputs", "teacher_weights"]
