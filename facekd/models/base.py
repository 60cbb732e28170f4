"""The backbone registry and the preprocessing facts each variant carries."""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from facekd.errors import FacekdError
from facekd.preprocessing import Preprocessing
from facekd.registry import Registry

BACKBONES: Registry[nn.Module] = Registry("backbone")


@dataclass(frozen=True)
class BackboneCfg:
    """What a user must know to feed a backbone and to score it like its authors.

    Attributes:
        name: Registry name.
        input_size: (height, width) of the aligned crop.
        pre: Alignment template, pixel normalisation and the authors' LFW recipe
            (flip fusion, fold-mean subtraction): what an embedder of it needs.
        embedding_dim: Size of the embedding the backbone returns.
        key_map: (regex, replacement) pairs that turn a published checkpoint's keys into
            this implementation's.
    """

    name: str
    input_size: tuple[int, int] = (112, 96)
    pre: Preprocessing = Preprocessing()
    embedding_dim: int = 512
    key_map: tuple[tuple[str, str], ...] = field(default=())


def register_backbone(cfg: BackboneCfg) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Registers a factory under ``cfg.name``; the factory carries its facts as ``.cfg``.

    The contract every factory keeps: ``factory(**overrides) -> nn.Module``, where the
    overrides are constructor arguments of that family (``backbone_args`` in a config),
    and no argument is required.
    """

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        fn.cfg = cfg
        BACKBONES.register(cfg.name)(fn)
        return fn

    return deco


def backbone_cfg(name: str) -> BackboneCfg:
    """The registered facts of backbone ``name`` (an unknown name lists the known ones)."""
    return BACKBONES.get(name).cfg


def _accepted(fn: Callable[..., nn.Module]) -> str:
    """The keyword arguments a factory takes: its own, or its model class's when it
    passes ``**overrides`` on."""
    sig = inspect.signature(fn).parameters.values()
    own = [p.name for p in sig if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    if not any(p.kind is p.VAR_KEYWORD for p in sig):
        return ", ".join(own) or "none"
    if own:  # its own, then the wrapped constructor's (named in the error)
        return ", ".join(own) + ", and the constructor's keywords"
    inner = inspect.signature(type(fn()).__init__).parameters.values()
    return ", ".join(p.name for p in inner if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))


def build_backbone(name: str, **kwargs) -> nn.Module:
    """Builds the registered backbone ``name``; the model carries its ``cfg``.

    ``kwargs`` reach the variant's constructor (e.g. ``base``/``units`` of the ResNet
    family); when they change the embedding size, ``model.cfg`` says the new one. An
    argument the family does not take is an error naming the ones it does.
    """
    factory = BACKBONES.get(name)
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        if "argument" not in str(exc):
            raise
        raise FacekdError(f"backbone {name!r}: {exc} (backbone_args it takes: {_accepted(factory)})") from None
    cfg = factory.cfg
    if kwargs:
        was = model.training
        with torch.no_grad():
            dim = model.eval()(torch.zeros(2, 3, *cfg.input_size)).shape[1]
        model.train(was)
        cfg = dataclasses.replace(cfg, embedding_dim=int(dim))
    model.cfg = cfg
    return model


NORMS = ("bn", "none")  # the choices of the ResNet family's and the exits' ``norm``: batch norm, or none


def check_norm(norm: str, what: str, also: tuple[str, ...] = ()) -> str:
    """``norm`` if it is one of NORMS, else a FacekdError naming ``what`` and the choices
    (NORMS and ``also``, the values the caller resolves before asking)."""
    if norm not in NORMS:
        raise FacekdError(f"{what} must be one of {', '.join(map(repr, NORMS + also))}, not {norm!r}")
    return norm


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def has_batch_norm(net: nn.Module) -> bool:
    return any(isinstance(m, BATCH_NORMS) for m in net.modules())


def init_prelu_net(net: nn.Module) -> None:
    """He initialisation for PReLU (slope 0.25) on every conv, Xavier on every fully
    connected layer, zero biases: the ResNet family's init, shared by its early exits."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=0.25, nonlinearity="leaky_relu")
        elif isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _extract_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("net_state_dict", "state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise FacekdError(f"{path}: no state dict found (expected keys net_state_dict, state_dict or model)")


def remap_keys(state: dict[str, torch.Tensor], key_map: tuple[tuple[str, str], ...]) -> dict[str, torch.Tensor]:
    """Applies the first matching (regex, replacement) rule to each key."""
    out = {}
    for key, value in state.items():
        for pattern, repl in key_map:
            new, n = re.subn(pattern, repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out


def load_backbone_weights(model: nn.Module, path: Path | str) -> nn.Module:
    """Loads a checkpoint into ``model`` safely (``weights_only=True``), through its key map.

    Every key must match: a missing or unexpected key, or a shape mismatch, is an error
    that names the file and the keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FacekdError(f"{path}: weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, refused globals
        raise FacekdError(f"{path}: cannot load weights ({type(exc).__name__}: {exc})".split("\n")[0]) from None
    state = remap_keys(_extract_state_dict(obj, path), getattr(model, "cfg", BackboneCfg("?")).key_map)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or bad_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", bad_shape)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise FacekdError(f"{path}: does not fit backbone {getattr(model, 'cfg', None) and model.cfg.name}: " + "; ".join(parts))
    model.load_state_dict(state, strict=False)
    return model
