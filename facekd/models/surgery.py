"""Layer surgery: activation swaps that let ONNX Runtime quantise and fuse a network.

ONNX Runtime has no integer PReLU: in an INT8 MobileFaceNet every PReLU runs in FP32
between a DequantizeLinear and a QuantizeLinear, which costs more than INT8 saves
(docs/BENCHMARKS.md, INT8). A ReLU after a Conv fuses into the quantised Conv; a ReLU or a
LeakyReLU (one slope for the layer) fuses into an FP32 Conv as well. A surgery
rewrites the activations of a trained model; one that changes what the model computes
(``exact = False``) is then recovered by distillation from the unchanged model, and one
that claims to be exact is checked layer by layer (:func:`check_exact`), failing with
the name of the first layer whose output moved.

Surgeries are model transforms (:mod:`facekd.models.transforms`): a checkpoint of the
result records ``{"name": "surgery", "ops": [...]}`` and rebuilds it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from facekd.errors import FacekdError
from facekd.models.profile import forward_once
from facekd.models.records import with_record
from facekd.registry import Registry


@dataclass(frozen=True)
class Surgery:
    """A rewrite of a model's modules.

    Attributes:
        name: Registry name, recorded in the model's transforms.
        exact: Whether the rewritten model computes the same function (then checked).
        apply: Rewrites the model in place; returns how many modules it replaced.
        doc: What it does and why.
        scopable: Whether it can rewrite a submodule alone (``name@path``); one that
            runs the whole network to decide (``prelu_at_last_stride``) cannot.
    """

    name: str
    exact: bool
    apply: Callable[[nn.Module], int]
    doc: str = ""
    scopable: bool = True


SURGERIES: Registry[Surgery] = Registry("surgery")


def replace_modules(model: nn.Module, pick: Callable[[str, nn.Module], nn.Module | None]) -> int:
    """Replaces each module for which ``pick(path, module)`` returns a new one."""
    count = 0
    for parent_path, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            path = f"{parent_path}.{name}" if parent_path else name
            new = pick(path, child)
            if new is not None:
                setattr(parent, name, new)
                count += 1
    return count


def _prelu_to_relu(model: nn.Module) -> int:
    return replace_modules(model, lambda path, m: nn.ReLU(inplace=False) if isinstance(m, nn.PReLU) else None)


def _prelu_to_leaky(model: nn.Module) -> int:
    # One slope per layer, the mean of the PReLU's: the nearest single slope in the
    # squared-error sense over channels, so the function moves less than to a ReLU.
    return replace_modules(
        model, lambda path, m: nn.LeakyReLU(float(m.weight.detach().mean())) if isinstance(m, nn.PReLU) else None)


# Slopes this close to 0 (ReLU) or 1 (identity) fold without changing the function more
# than float rounding does.
FOLD_TOL = 1e-6


def _fold_prelu(model: nn.Module) -> int:
    def pick(path: str, m: nn.Module) -> nn.Module | None:
        if not isinstance(m, nn.PReLU):
            return None
        w = m.weight.detach()
        if bool((w.abs() <= FOLD_TOL).all()):
            return nn.ReLU()
        if bool(((w - 1).abs() <= FOLD_TOL).all()):
            return nn.Identity()
        raise FacekdError(
            f"surgery fold_prelu: the PReLU at {path} has slopes in [{w.min():.4g}, {w.max():.4g}], neither all 0 "
            f"(a ReLU) nor all 1 (an identity); use prelu_to_relu and recover by distillation"
        )

    return replace_modules(model, pick)


def _relus(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Each ReLU's input channels and output height x width, by path (one forward pass)."""
    seen: dict[str, tuple[int, int]] = {}

    def note(path: str):
        return lambda mod, inp, out: seen.__setitem__(path, (inp[0].shape[1], out.shape[-1] * out.shape[-2]))

    forward_once(model, [(m, note(path)) for path, m in model.named_modules() if isinstance(m, nn.ReLU)])
    return seen


def _prelu_at_last_stride(model: nn.Module) -> int:
    relus = _relus(model)
    if not relus:
        return 0
    smallest = min(size for _, size in relus.values())

    def pick(path: str, m: nn.Module) -> nn.Module | None:
        if not isinstance(m, nn.ReLU) or path not in relus or relus[path][1] != smallest:
            return None
        return nn.PReLU(relus[path][0], init=0.0)

    return replace_modules(model, pick)


for _s in (
    Surgery("prelu_to_relu", exact=False, apply=_prelu_to_relu,
            doc="every PReLU becomes a ReLU (fuses into a quantised Conv); changes the function: recover by distillation"),
    Surgery("prelu_to_leaky", exact=False, apply=_prelu_to_leaky,
            doc="every PReLU becomes a LeakyReLU with the mean of its slopes (ONNX Runtime fuses it into the Conv "
                "before it, as a ReLU); closer to the original function than prelu_to_relu, but on the development "
                "CPU the fused LeakyReLU ran 1.18x the ReLU network's time (docs/front.md): recover by distillation"),
    Surgery("fold_prelu", exact=True, apply=_fold_prelu,
            doc="PReLUs whose slopes are all 0 become ReLU, all 1 an identity; any other PReLU is refused by name"),
    Surgery("prelu_at_last_stride", exact=True, apply=_prelu_at_last_stride,
            doc="every ReLU whose output has the network's smallest maps becomes a PReLU with slopes 0 (the same "
                "function); recovery then learns slopes where an unfused activation costs least", scopable=False),
):
    SURGERIES.register(_s.name)(lambda s=_s: s)


def _leaf_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Output of every leaf module, by path, in call order."""
    out: dict[str, torch.Tensor] = {}
    hooks = []
    for path, m in model.named_modules():
        if not list(m.children()):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, o, path=path: out.setdefault(path, o.detach()) if torch.is_tensor(o) else None))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return out


def check_exact(before: nn.Module, after: nn.Module, x: torch.Tensor, atol: float = 1e-4) -> None:
    """Raises, naming the first layer (in call order) whose output differs by more than
    ``atol`` between ``before`` and ``after`` on ``x``; layers the surgery replaced are
    compared by their path."""
    a, b = _leaf_outputs(before, x), _leaf_outputs(after, x)
    for path, out in a.items():
        if path not in b or b[path].shape != out.shape:
            continue
        diff = float((b[path] - out).abs().max())
        if diff > atol:
            raise FacekdError(f"surgery broke parity at {path}: its output moved by {diff:.3g} (> {atol:g})")


# What a replayed record may put in a rewritten module's place, by kind: the module's
# class name, then for a PReLU ":" and its number of slopes ("PReLU:512"), for a LeakyReLU
# ":" and its slope ("LeakyReLU:0.25"). Each builder returns None for a malformed argument.
def _count(arg: str) -> int | None:
    return int(arg) if arg.isdigit() and int(arg) >= 1 else None


def _slope(arg: str) -> float | None:
    try:
        v = float(arg)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


_REPLACEMENTS: dict[str, Callable[[str], nn.Module | None]] = {
    "ReLU": lambda a: None if a else nn.ReLU(),
    "Identity": lambda a: None if a else nn.Identity(),
    "PReLU": lambda a: None if (n := _count(a)) is None else nn.PReLU(n),
    "LeakyReLU": lambda a: None if (v := _slope(a)) is None else nn.LeakyReLU(v),
}


def _kind(m: nn.Module) -> str:
    if isinstance(m, nn.PReLU):
        return f"PReLU:{m.num_parameters}"
    if isinstance(m, nn.LeakyReLU):
        return f"LeakyReLU:{m.negative_slope!r}"
    return type(m).__name__


def _build(kind: str) -> nn.Module | None:
    """The module a record's kind names (None for an unknown or malformed kind)."""
    name, _, arg = kind.partition(":")
    return _REPLACEMENTS[name](arg) if name in _REPLACEMENTS else None


def _activations(model: nn.Module) -> dict[str, str]:
    """Each activation a surgery may rewrite or a record may rebuild, by path: its kind
    (``ReLU``, ``PReLU:64``, ``LeakyReLU:0.25``, ``Identity``)."""
    return {path: _kind(m) for path, m in model.named_modules() if type(m).__name__ in _REPLACEMENTS}


# An op names a surgery, optionally limited to some submodules: "prelu_to_relu" rewrites
# the whole model, "prelu_to_relu@blocks.0,blocks.1" only what lies under those paths.
SCOPE_SEP = "@"


def parse_op(op: str) -> tuple[Surgery, tuple[str, ...]]:
    """The surgery an op names and its scope (module paths; empty: the whole model).

    Raises:
        FacekdError: An unknown surgery (listing the known ones), an empty scope, or a
            scope given to a surgery that cannot take one.
    """
    name, sep, scope = op.partition(SCOPE_SEP)
    paths = tuple(p.strip() for p in scope.split(",") if p.strip())
    if sep and not paths:
        raise FacekdError(f"surgery {op!r}: no module path after {SCOPE_SEP!r} (e.g. prelu_to_relu@blocks.0,blocks.1)")
    surgery = SURGERIES.build(name)
    if paths and not surgery.scopable:
        raise FacekdError(f"surgery {op!r}: {name} decides from the whole network and takes no {SCOPE_SEP}scope")
    return surgery, paths


def _apply_scoped(model: nn.Module, s: Surgery, scope: tuple[str, ...], op: str) -> int:
    if not scope:
        return s.apply(model)
    modules = dict(model.named_modules())
    count = 0
    for path in scope:
        if path not in modules:
            raise FacekdError(f"surgery {op!r}: {type(model).__name__} has no module {path!r}")
        count += s.apply(modules[path])
    return count


def apply_surgery(model: nn.Module, ops: list[str], check_input: torch.Tensor | None = None) -> nn.Module:
    """Applies the named surgeries in order, in place, and records them on ``model``: the
    record names every module replaced and by what, so a checkpoint rebuilds the same
    structure before its weights load (:func:`replay_surgery`), whatever the fresh
    model's own parameters would make a surgery decide. An op ``name@path,path`` rewrites
    only the modules under those paths (:func:`parse_op`).

    Exact surgeries are checked against a copy of the model on ``check_input`` (default:
    a deterministic random batch of the backbone's input size).

    Raises:
        FacekdError: An unknown surgery (listing the known ones), a surgery that replaced
            nothing, or an exact one that broke parity (naming the layer).
    """
    before_types = _activations(model)
    for op in ops:
        s, scope = parse_op(op)
        before = copy.deepcopy(model) if s.exact else None
        if _apply_scoped(model, s, scope, op) == 0:
            where = f" under {', '.join(scope)}" if scope else ""
            raise FacekdError(f"surgery {op}: nothing to rewrite in {type(model).__name__}{where}")
        if before is not None:
            if check_input is None:
                g = torch.Generator().manual_seed(0)
                check_input = torch.rand((4, 3, *model.cfg.input_size), generator=g) * 2 - 1
            check_exact(before, model, check_input)
    replaced = {p: t for p, t in _activations(model).items() if before_types.get(p) != t}
    return with_record(model, {"name": "surgery", "ops": list(ops), "replaced": replaced})


def replay_surgery(model: nn.Module, ops: list[str], replaced: dict[str, str]) -> nn.Module:
    """Puts the recorded modules in place on a freshly built ``model`` (no checks: the
    surgery was checked when it was made); returns it with the same record."""
    modules = dict(model.named_modules())
    for path, kind in replaced.items():
        new = _build(kind) if isinstance(kind, str) else None
        if new is None or not path or path not in modules:
            raise FacekdError(f"surgery record: cannot put a {kind} at {path!r} of {type(model).__name__}")
        parent_path, _, leaf = path.rpartition(".")
        setattr(modules[parent_path] if parent_path else model, leaf, new)
    return with_record(model, {"name": "surgery", "ops": list(ops), "replaced": dict(replaced)})
