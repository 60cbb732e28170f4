"""The facekd checkpoint format: the one module that writes and reads it.

A checkpoint is a plain dict of tensors, numbers and strings, so the safe loader
(``weights_only=True``) reads it:

- ``format`` ("facekd-train-1"), ``backbone`` (registry name), ``backbone_args``;
- ``transforms``: what turns the registered backbone into this model (a pruning record,
  early exits; :mod:`facekd.models.transforms`), replayed before the weights load;
- ``model``: the training module's state dict, ``backbone.*`` keys (plus ``head.*`` and
  ``center.*``), so ``facekd eval lfw --model RUN/checkpoints/last.pt`` works;
- ``identities`` (the head's classes, in order), ``config``, ``metrics``, ``epoch``, ``step``;
- in ``last.pt`` only: ``optimizer``, ``schedule``, ``scaler`` and ``rng`` states.

Writing is atomic (a kill leaves the old file whole). Model-side readers
(:func:`backbone_from_checkpoint`, :func:`head_from_checkpoint`) serve the model hub.
"""

from __future__ import annotations

import copy
import io
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from facekd.config import from_dict, to_dict
from facekd.errors import FacekdError
from facekd.models.heads import build_head
from facekd.io_utils import atomic_write_bytes, remove_torn_temps
from facekd.models import build_backbone
from facekd.models.transforms import apply_transforms
from facekd.models.transforms import records as transform_records
from facekd.train.config import TrainConfig

FORMAT = "facekd-train-1"
CHECKPOINT = "checkpoints/last.pt"
BEST = "checkpoints/best.pt"
# What best.pt keeps: enough to evaluate, export or teach, not to resume.
_BEST_KEYS = ("format", "backbone", "backbone_args", "transforms", "model", "epoch", "step", "config", "identities", "metrics")


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states as weights-only-loadable values."""
    version, keys, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": {"version": version, "keys": torch.tensor(keys, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restores what :func:`rng_state` saved."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(k) for k in py["keys"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        ("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path | str, state: dict) -> None:
    """Serialises to memory, then writes atomically: a kill leaves the old file whole."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path | str) -> dict:
    """Reads a checkpoint safely (``weights_only=True``); errors name the file."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FacekdError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # truncated zip, refused global
        lines = str(exc).splitlines()
        why = next((ln.strip() for ln in lines if "Unsupported global" in ln), lines[0] if lines else "")
        raise FacekdError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {why})") from None


def is_checkpoint(obj: object) -> bool:
    """Whether a loaded object is a facekd checkpoint (not a bare published state dict)."""
    return isinstance(obj, dict) and "backbone" in obj and "model" in obj


def backbone_state(ckpt: dict) -> dict[str, torch.Tensor]:
    """The backbone's own keys: a training checkpoint prefixes them ``backbone.``."""
    state = ckpt["model"]
    if any(k.startswith("backbone.") for k in state):
        return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


def backbone_from_checkpoint(ckpt: dict, path: Path | str) -> nn.Module:
    """The backbone a checkpoint holds, with its weights (train mode, CPU)."""
    if not is_checkpoint(ckpt):
        raise FacekdError(
            f"{path}: not a facekd checkpoint (needs 'backbone' and 'model'); for published weights "
            "use --model NAME --weights FILE"
        )
    name, args = ckpt["backbone"], ckpt.get("backbone_args", {})
    if not isinstance(name, str) or not isinstance(args, dict) or not isinstance(ckpt["model"], dict):
        raise FacekdError(f"{path}: not a facekd checkpoint (backbone must be a name, backbone_args a mapping, "
                          "model a state dict)")
    try:
        model = apply_transforms(build_backbone(name, **args), ckpt.get("transforms"))
    except FacekdError as exc:  # an unknown backbone, a bad transform
        raise FacekdError(f"{path}: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as exc:  # arguments the backbone refuses
        raise FacekdError(f"{path}: cannot build backbone {name!r} from its backbone_args ({type(exc).__name__}: {exc})") from None
    try:
        model.load_state_dict(backbone_state(ckpt))
    except (RuntimeError, AttributeError, TypeError) as exc:  # AttributeError/TypeError: keys that are not names
        raise FacekdError(f"{path}: weights do not fit backbone {ckpt['backbone']!r} ({str(exc).splitlines()[0]})") from None
    return model


def head_from_checkpoint(ckpt: dict, identities: list[str], embedding_dim: int) -> nn.Module | None:
    """The checkpoint's classifier head, when it was trained on exactly ``identities``
    (same names, same order) and the config names the head; else None."""
    model_cfg = ckpt.get("config", {}).get("model", {})
    state = {k[len("head."):]: v for k, v in ckpt["model"].items() if k.startswith("head.")}
    if not state or ckpt.get("identities") != list(identities) or not model_cfg.get("head"):
        return None
    head = build_head(model_cfg["head"], embedding_dim, len(identities), **model_cfg.get("head_args", {}))
    head.load_state_dict(state)
    return head


# Run checkpoints: what fit() saves after every epoch and restores on --resume.


def run_state(setup, epoch: int, step: int) -> dict:
    """Everything ``--resume`` needs, as a weights-only-loadable dict.

    Args:
        setup: The loop's :class:`~facekd.train.run_setup.Setup` (cfg, plain module,
            optimizer, schedule, scaler, identities, metrics).
    """
    return {
        "format": FORMAT,
        "backbone": setup.cfg.model.backbone,
        "backbone_args": dict(setup.cfg.model.backbone_args),
        "transforms": transform_records(setup.plain.backbone),
        "model": setup.plain.state_dict(),  # backbone.* (+ head.*, center.*)
        "optimizer": setup.optimizer.state_dict(),
        "schedule": setup.schedule.state_dict(),
        "scaler": setup.scaler.state_dict(),
        "epoch": epoch,
        "step": step,
        "rng": rng_state(),
        "config": to_dict(setup.cfg),
        "identities": list(setup.identities),
        "metrics": setup.metrics,
        "torch": str(torch.__version__),
    }


def model_checkpoint(backbone: nn.Module, name: str, args: dict, **extra) -> dict:
    """A model-only checkpoint (what ``best.pt`` keeps) of a backbone built outside a run
    (a pruned model before recovery): ``extra`` adds ``config``, ``metrics``, ..."""
    state = {
        "format": FORMAT,
        "backbone": name,
        "backbone_args": dict(args),
        "transforms": transform_records(backbone),
        "model": {f"backbone.{k}": v for k, v in backbone.state_dict().items()},
        **extra,
    }
    return {k: v for k, v in state.items() if k in _BEST_KEYS}


def save_run(setup, run_dir: Path, epoch: int, step: int, best: bool) -> None:
    """``last.pt`` after every epoch; ``best.pt`` (model only) when LFW improved."""
    state = run_state(setup, epoch, step)
    save_checkpoint(run_dir / CHECKPOINT, state)
    if best:
        save_checkpoint(run_dir / BEST, {k: state[k] for k in _BEST_KEYS})


def restore_run(ckpt: dict, cfg: TrainConfig, plain, optimizer, schedule, scaler, say: Callable[[str], None]) -> tuple[int, int, dict]:
    """Loads a checkpoint's states; returns (epochs done, step, metrics)."""
    plain.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    # The step count comes from the checkpoint, the shape from this config: a resume
    # with more train.epochs stretches the decay instead of ending at 0.
    shape = copy.deepcopy(schedule.lr_lambdas)  # load_state_dict updates them in place
    schedule.load_state_dict(ckpt["schedule"])
    schedule.lr_lambdas = shape
    old_epochs = ckpt.get("config", {}).get("train", {}).get("epochs", cfg.train.epochs)
    if old_epochs != cfg.train.epochs:
        say(f"resuming with train.epochs {cfg.train.epochs} (was {old_epochs}): the schedule is stretched")
    scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return ckpt["epoch"], ckpt["step"], ckpt.get("metrics", {})


def prepare_run_dir(run_dir: Path, resume: bool) -> dict | None:
    """The checkpoint to resume from, or None for a fresh run; refuses to overwrite one.

    Resuming first removes the temporary files a kill left half-written beside the
    checkpoints (:func:`facekd.io_utils.remove_torn_temps`); the checkpoints themselves
    are always whole."""
    last = run_dir / CHECKPOINT
    if resume:
        for name in (CHECKPOINT, BEST):
            remove_torn_temps(run_dir / name)
        return load_checkpoint(last) if last.is_file() else None
    if last.is_file() or (run_dir / "metrics.jsonl").is_file():
        raise FacekdError(f"{run_dir}: already holds a run; pass --resume to continue it, or choose another --out")
    return None


def check_same_model(cfg: TrainConfig, ckpt: dict, path: Path) -> None:
    """Refuses to resume a run whose model, data, teacher or distillation changed."""
    old = ckpt.get("config", {})
    for section in ("model", "data", "teacher", "distill"):
        if not hasattr(cfg, section):
            continue
        now = getattr(cfg, section)
        try:  # a key added to facekd after the checkpoint was written reads as its default
            then = to_dict(from_dict(type(now), old.get(section) or {}, f"{path}: config.{section}"))
        except FacekdError:
            then = old.get(section)
        if then != to_dict(now):
            raise FacekdError(
                f"{path}: was trained with a different {section} section; resume with the same config "
                "(only train.epochs, eval.* and logging may change)"
            )
