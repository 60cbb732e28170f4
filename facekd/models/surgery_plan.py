"""Where a scoped surgery costs the function least: a greedy plan of its scope.

A kept PReLU in an INT8 graph runs in FP32 between a DequantizeLinear and a
QuantizeLinear (or, with the ``_int8_prelu`` recipes, as an integer multiply + Max at about
a third of that price), so its price grows with the activation values it touches, and
what making it a ReLU costs the function differs from layer to layer: in the first-stage ReLU
MobileFaceNet (docs/front.md) bottleneck 5's expansion PReLU alone leaves cosine 0.934 for
its 172k values, its depthwise PReLU 0.904 for 43k, six times the loss per value.
:func:`plan_scope` turns the activations of a trained network into ReLUs (or whatever a
scopable surgery does) one module at a time, each time taking the one that loses the
least embedding cosine per activation value it frees, until the freed values reach a
share of all the surgery could free; the plan's :attr:`SurgeryPlan.op` is the scoped op
for ``prune.surgery`` (``docs/guide/prune.md``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from facekd.errors import FacekdError
from facekd.models.profile import forward_once
from facekd.models.records import records
from facekd.models.surgery import SCOPE_SEP, apply_surgery, parse_op
from facekd.preprocessing import cosine_rows


@dataclass(frozen=True)
class PlanStep:
    """One module added to the scope.

    Attributes:
        path: The module's path (the scope entry; the activations it rewrites lie under it).
        values: Activation values per face the surgery rewrites under it.
        cosine: Mean cosine of the embeddings to the unchanged model's once this module
            and every earlier one are rewritten.
    """

    path: str
    values: int
    cosine: float


@dataclass(frozen=True)
class SurgeryPlan:
    """A greedy scope for a surgery.

    Attributes:
        surgery: The surgery's registry name.
        steps: The modules in the order taken.
        total_values: Activation values per face the surgery would rewrite in the whole
            model (the share is of these).
    """

    surgery: str
    steps: tuple[PlanStep, ...]
    total_values: int

    @property
    def op(self) -> str:
        """The scoped op for ``prune.surgery`` (``name@path,path,...``, paths sorted, block numbers as numbers)."""
        return f"{self.surgery}{SCOPE_SEP}{','.join(sorted((s.path for s in self.steps), key=_path_key))}"

    @property
    def values(self) -> int:
        return sum(s.values for s in self.steps)


def _path_key(path: str) -> tuple:
    # blocks.10 after blocks.9: numeric parts compare as numbers.
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.split("."))


def _candidates(model: nn.Module, surgery: str) -> dict[str, int]:
    """The modules whose direct children the surgery rewrites, with the activation
    values per face those children output."""
    s, scope = parse_op(surgery)
    if scope:
        raise FacekdError(f"surgery plan: give the surgery without a scope ({surgery!r}); the plan chooses it")
    if not s.scopable:
        raise FacekdError(f"surgery plan: {surgery} decides from the whole network and takes no scope")
    # The surgery's own record names what it replaced (and it refuses a model with nothing to rewrite).
    rewritten = list(records(apply_surgery(copy.deepcopy(model), [surgery]))[-1]["replaced"])
    modules = dict(model.named_modules())
    values: dict[str, int] = {}
    forward_once(model, [(modules[p], lambda m, i, o, p=p: values.__setitem__(p, int(o[0].numel()))) for p in rewritten])
    out: dict[str, int] = {}
    for p in rewritten:
        if values.get(p):  # a module the forward pass never reaches frees nothing
            parent = p.rpartition(".")[0]
            out[parent] = out.get(parent, 0) + values[p]
    if "" in out:
        raise FacekdError(f"surgery plan: {type(model).__name__} holds an activation at its top level, "
                          "which a scope cannot name")
    return out


def _embed(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(inputs).float().numpy()


def plan_scope(model: nn.Module, surgery: str, inputs: torch.Tensor, share: float, progress: bool = True) -> SurgeryPlan:
    """Greedily chooses where ``surgery`` goes in ``model``.

    Args:
        model: A trained backbone (not changed).
        surgery: A scopable surgery's name, e.g. ``prelu_to_relu``.
        inputs: Faces to compare embeddings on (a batch of the model's input size).
        share: Stop once the chosen modules' activation values reach this share (0-1]
            of all the surgery would rewrite.

    Raises:
        FacekdError: A share outside (0, 1], a surgery that takes no scope or has nothing
            to rewrite.
    """
    if not 0 < share <= 1:
        raise FacekdError(f"surgery plan: share must lie in (0, 1], not {share}")
    cands = _candidates(model, surgery)
    total = sum(cands.values())
    ref = _embed(model, inputs)

    def cosine(paths: list[str]) -> float:
        net = copy.deepcopy(model)
        apply_surgery(net, [f"{surgery}{SCOPE_SEP}{','.join(paths)}"])
        return float(cosine_rows(_embed(net, inputs), ref).mean())

    steps: list[PlanStep] = []
    chosen: list[str] = []
    current, freed = 1.0, 0
    target = share * total
    bar = tqdm(total=round(target), desc=f"plan {surgery}", unit="value", disable=not progress)
    while freed < target:
        left = [p for p in cands if p not in chosen]
        if not left:
            break
        tried = {p: cosine(chosen + [p]) for p in left}
        # Cosine lost per value freed; ties (nothing lost) go to the module that frees most.
        best = min(left, key=lambda p: ((current - tried[p]) / cands[p], -cands[p]))
        chosen.append(best)
        current = tried[best]
        steps.append(PlanStep(best, cands[best], current))
        freed += cands[best]
        bar.update(min(cands[best], round(target) - bar.n))
    bar.close()
    return SurgeryPlan(surgery, tuple(steps), total)
