"""Model soups (Wortsman et al., ICML 2022): the uniform average of the weights of several
models fine-tuned from one start, for instance recoveries of one pruned or surgically
changed network run with other seeds, augmentations or learning rates. The soup costs
what one ingredient costs to run and is often more accurate than each; a uniform soup
chooses nothing, so no test set is consulted (a greedy soup would need a validation set
facekd-dev does not hold).

Ingredients must be one network: the same backbone, arguments and transforms (a
pruning's history, a surgery) and every tensor of the same name and shape. Floating-point
tensors (weights, batch-norm statistics) are averaged; integer ones (batch norm's step
counter) are the first ingredient's. Models trained from different starts do not share a
basin and their average is a broken network; the distances :func:`make_soup` reports
show how far apart the ingredients are before any evaluation (two student5 networks from
different random starts: about 41% of the soup's weight norm each).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from facekd.download import sha256_of
from facekd.errors import FacekdError
from facekd.train.checkpoint import (
    backbone_from_checkpoint,
    backbone_state,
    is_checkpoint,
    load_checkpoint,
    model_checkpoint,
)


@dataclass(frozen=True)
class Soup:
    """A soup and how far apart its ingredients were.

    Attributes:
        checkpoint: A model-only facekd checkpoint of the averaged network (its
            ``metrics["soup"]`` names each ingredient file and its sha256).
        distances: Per ingredient, ‖w_i − w_soup‖ / ‖w_soup‖ over the floating-point
            tensors, in the order given.
    """

    checkpoint: dict
    distances: list[float]


def _network(ckpt: dict) -> tuple:
    return ckpt["backbone"], ckpt.get("backbone_args") or {}, ckpt.get("transforms") or []


def _ingredient(path: Path) -> dict:
    ckpt = load_checkpoint(path)
    if not is_checkpoint(ckpt):
        raise FacekdError(f"{path}: not a facekd checkpoint (a soup averages facekd checkpoints of one network)")
    return ckpt


def _check_same_tensors(first: dict[str, torch.Tensor], state: dict[str, torch.Tensor], path: Path, ref: Path) -> None:
    if set(state) != set(first):
        odd = sorted(set(state) ^ set(first))[0]
        raise FacekdError(f"{path}: tensor {odd!r} is in only one of it and {ref}; a soup needs one network")
    for k, v in first.items():
        if state[k].shape != v.shape:
            raise FacekdError(f"{path}: {k} has shape {tuple(state[k].shape)}, {tuple(v.shape)} in {ref}")


def make_soup(paths: Sequence[Path | str]) -> Soup:
    """The uniform soup of the checkpoints at ``paths`` (two or more; see the module doc)."""
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise FacekdError(f"a soup needs two or more checkpoints, got {len(paths)}")
    first = _ingredient(paths[0])
    states = [backbone_state(first)]
    for path in paths[1:]:
        ckpt = _ingredient(path)
        if _network(ckpt) != _network(first):
            raise FacekdError(f"{path}: another network than {paths[0]} (backbone, arguments or transforms such "
                              "as a pruning differ); a soup averages models fine-tuned from one start")
        state = backbone_state(ckpt)
        _check_same_tensors(states[0], state, path, paths[0])
        states.append(state)
    soup = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            soup[k] = torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype)
        else:
            soup[k] = v.clone()
    net = backbone_from_checkpoint(first, paths[0])
    net.load_state_dict(soup)
    floats = [k for k, v in soup.items() if v.is_floating_point()]
    norm = torch.sqrt(sum((soup[k].double() ** 2).sum() for k in floats))
    distances = [float(torch.sqrt(sum(((s[k].double() - soup[k].double()) ** 2).sum() for k in floats)) / norm)
                 for s in states]
    record = [{"file": str(p), "sha256": sha256_of(p)} for p in paths]
    ckpt = model_checkpoint(net, first["backbone"], dict(first.get("backbone_args") or {}), metrics={"soup": record})
    return Soup(ckpt, distances)
