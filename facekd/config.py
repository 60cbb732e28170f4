"""Typed configs: YAML (``yaml.safe_load``) into nested dataclasses.

Defaults live in the dataclasses; a config file states only what differs. An unknown key
is an error naming the file and the key's full path (``optim.lr``), and so is a value of
the wrong type. ``--set a.b=value`` overrides parse ``value`` as YAML (``0.1``, ``true``,
``[1, 2]``).

A field's allowed values are data on the field: ``field(default=40, metadata=at_least(1))``
(see :class:`Range`); they are checked when a config is read, and an error names the
file, the key and the range.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from facekd.errors import FacekdError
from facekd.io_utils import atomic_write_bytes

T = TypeVar("T")

RANGE = "range"  # the dataclass field metadata key holding a Range


@dataclass(frozen=True)
class Range:
    """The values a numeric config field may take, or the length a list must have.

    Attributes:
        low, high: Bounds (None: unbounded).
        low_open, high_open: Exclude the bound itself (``(0, 1]``).
        min_items: A list field: the fewest items it may hold.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    min_items: int | None = None

    def __str__(self) -> str:
        if self.min_items is not None:
            return f"a list of at least {self.min_items} item{'s' if self.min_items != 1 else ''}"
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return f"{'(' if self.low_open or self.low is None else '['}{lo}, {hi}{')' if self.high_open or self.high is None else ']'}"

    def allows(self, value: Any) -> bool:
        """Whether ``value`` is inside (None, and values of other kinds, always are)."""
        if self.min_items is not None:
            return not isinstance(value, (list, tuple, dict)) or len(value) >= self.min_items
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True
        if value != value:  # NaN is in no range
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))


def in_range(rng: Range) -> dict:
    """Field metadata: ``field(default=..., metadata=in_range(Range(0, 1)))``."""
    return {RANGE: rng}


def at_least(low: float) -> dict:
    """Field metadata for ``value >= low`` (epochs, batch sizes: ``at_least(1)``)."""
    return in_range(Range(low))


def positive() -> dict:
    """Field metadata for ``value > 0`` (learning rates, temperatures)."""
    return in_range(Range(0, low_open=True))


def fraction(low_open: bool = False, high_open: bool = False) -> dict:
    """Field metadata for a ratio in [0, 1] (or with open ends: ``fraction(high_open=True)``
    is [0, 1))."""
    return in_range(Range(0, 1, low_open=low_open, high_open=high_open))


def non_empty() -> dict:
    """Field metadata for a list that must hold at least one item."""
    return in_range(Range(min_items=1))


def _check_ranges(cls: type, kwargs: dict, where: str, sep: str) -> None:
    for f in dataclasses.fields(cls):
        rng = f.metadata.get(RANGE)
        if rng is None or f.name not in kwargs or kwargs[f.name] is None:
            continue
        if not rng.allows(kwargs[f.name]):
            raise FacekdError(f"{where}{sep}{f.name}: {kwargs[f.name]!r} is out of range (allowed: {rng})")


# Numbers PyYAML leaves as strings: an exponent without a decimal point (5e-4, 1E3).
_YAML11_MISSED_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Checks ``value`` against the annotation ``tp`` (dataclasses recursively)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except FacekdError as exc:
                errors.append(str(exc))
        raise FacekdError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise FacekdError(f"{where}: {value!r} is not one of {', '.join(map(repr, typing.get_args(tp)))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise FacekdError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise FacekdError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise FacekdError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _YAML11_MISSED_FLOAT.fullmatch(value.strip()):
        return float(value)  # "5e-4": PyYAML (YAML 1.1) reads exponents without a dot as text
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise FacekdError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Builds dataclass ``cls`` from ``data``; unknown keys and wrong types are errors.

    Args:
        where: How errors name this mapping: ``"file.yaml"`` for the top, then
            ``"file.yaml: optim"`` and so on for nested sections.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in data if k not in names)
    if unknown:
        raise FacekdError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            f"(known: {', '.join(sorted(names))})"
        )
    sep = ": " if ": " not in where else "."
    kwargs = {k: _coerce(v, hints[k], f"{where}{sep}{k}") for k, v in data.items()}
    _check_ranges(cls, kwargs, where, sep)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise FacekdError(f"{where}: {exc}") from None


def to_dict(cfg: Any) -> Any:
    """A dataclass config as plain YAML-able data (tuples become lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def apply_overrides(raw: dict, overrides: list[str], source: str = "--set") -> dict:
    """Applies ``a.b=value`` strings to a nested dict (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise FacekdError(f"{source} {item!r}: expected key=value, e.g. optim.lr=0.05")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise FacekdError(f"{source} {item!r}: empty key part")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise FacekdError(f"{source} {item!r}: value is not valid YAML ({exc})".split("\n")[0]) from None
        node = raw
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise FacekdError(f"{source} {item!r}: {p} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def read_yaml(path: Path | str) -> dict:
    """A YAML mapping from ``path`` (``safe_load``: no code, no custom tags)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FacekdError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise FacekdError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FacekdError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_config_tree(path: Path | str, _seen: tuple[Path, ...] = ()) -> dict:
    """A config file with its ``extends: other.yaml`` chain merged in (paths relative to
    the file; sections merge key by key, the extending file wins)."""
    path = Path(path).resolve()
    if path in _seen:
        raise FacekdError(f"{path}: extends itself (through {' -> '.join(p.name for p in _seen)})")
    raw = read_yaml(path)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise FacekdError(f"{path}: extends must be one file name, got {parent!r}")
    if not (path.parent / parent).is_file():
        raise FacekdError(f"{path}: extends {parent!r}, which is not a file ({path.parent / parent})")
    return _merge(read_config_tree(path.parent / parent, (*_seen, path)), raw)


def save_config(cfg: Any, path: Path | str) -> None:
    """Writes a resolved config (any config dataclass) as YAML, atomically: the
    ``config.yaml`` a run directory keeps, which :func:`load_config` reads back."""
    atomic_write_bytes(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())


def load_config(cls: type[T], path: Path | str, overrides: list[str] | None = None) -> T:
    """Reads a YAML config file (and what it ``extends``) into ``cls``, after applying
    ``--set`` overrides."""
    raw = apply_overrides(read_config_tree(path), overrides or [])
    return from_dict(cls, raw, str(path))
