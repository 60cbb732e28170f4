"""ONNX metadata: the one module that writes and reads facekd's ``metadata_props``.

An exported model carries:

- ``facekd``: the :class:`~facekd.preprocessing.Preprocessing` fields as JSON (what
  :class:`~facekd.evaluation.embed.OnnxEmbedder` reads),
- ``facekd.model``: :class:`ModelInfo` (backbone name, input size, embedding size,
  whether the output is L2-normalised, graph rewrites, INT8 recipe),
- ``facekd.threshold``: the verification threshold chosen on LFW
  (:mod:`facekd.deploy.threshold`),
- ``facekd.ident_threshold``: the open-set identification thresholds (one per scoring
  rule) chosen on LFW for a target FPIR (:mod:`facekd.identify.threshold`).

Export, quantization, the thresholds and the embedders of ``deploy``, ``evaluation``
and ``identify`` all import from here; it imports none of them (only ``align``'s
templates and ``preprocessing``), so none forms a cycle through it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from facekd.align.template import get_template
from facekd.config import from_dict
from facekd.errors import FacekdError
from facekd.io_utils import atomic_write_bytes
from facekd.preprocessing import Preprocessing

PREPROCESSING_META_KEY = "facekd"
MODEL_META_KEY = "facekd.model"
THRESHOLD_META_KEY = "facekd.threshold"
IDENT_THRESHOLD_META_KEY = "facekd.ident_threshold"


@dataclass(frozen=True)
class ModelInfo:
    """What facekd records about an exported model (metadata key ``facekd.model``)."""

    backbone: str
    input_size: tuple[int, int]
    embedding_dim: int
    l2_normalized: bool
    rewrites: dict[str, int] = field(default_factory=dict)
    int8: str | None = None  # INT8 recipe name, None for FP32

    @classmethod
    def from_json(cls, text: str) -> "ModelInfo":
        d = json.loads(text)
        d["input_size"] = tuple(d["input_size"])
        return cls(**d)


def preprocessing_from_metadata(meta: dict[str, str], path: Path | str) -> Preprocessing:
    """The :class:`Preprocessing` an ONNX file's metadata ``meta`` states (the defaults
    when it has no ``facekd`` entry); a malformed entry is a FacekdError naming ``path``."""
    if PREPROCESSING_META_KEY not in meta:
        return Preprocessing()
    where = f"{path}: metadata {PREPROCESSING_META_KEY!r}"
    try:
        data = json.loads(meta[PREPROCESSING_META_KEY])
    except ValueError as exc:
        raise FacekdError(f"{where} is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise FacekdError(f"{where}: expected a JSON object, got {type(data).__name__}")
    pre = from_dict(Preprocessing, data, where)
    try:
        get_template(pre.template)  # an unknown template fails here, not at the first embedding
    except FacekdError as exc:
        raise FacekdError(f"{where}: {exc}") from None
    return pre


def set_metadata(proto, entries: dict[str, str]) -> None:
    """Sets (or replaces) ``metadata_props`` entries of an ONNX ModelProto."""
    keep = [p for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    for p in keep:
        proto.metadata_props.add(key=p.key, value=p.value)
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)


def read_metadata(path: Path | str) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, without loading its weights into a session."""
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def update_metadata(path: Path | str, entries: dict[str, str]) -> None:
    """Rewrites ``path`` atomically with ``entries`` added to its metadata."""
    proto = onnx.load(str(path))
    set_metadata(proto, entries)
    atomic_write_bytes(path, proto.SerializeToString())


def model_metadata(pre, info: ModelInfo) -> dict[str, str]:
    """The facekd metadata entries for a model with this preprocessing (a
    :class:`~facekd.preprocessing.Preprocessing`) and info."""
    return {PREPROCESSING_META_KEY: json.dumps(asdict(pre)), MODEL_META_KEY: json.dumps(asdict(info))}
