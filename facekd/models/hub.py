"""The model hub: one way in for every model a user names.

``resolve(spec, weights)`` turns what follows ``--model`` (or ``teacher.model``) into a
:class:`ResolvedModel`:

- an ``.onnx`` file: run by ONNX Runtime, preprocessing from its facekd metadata;
- a facekd checkpoint (see :mod:`facekd.train.checkpoint`): its backbone, and its
  classifier head and identities for a teacher;
- a registered backbone name, with ``weights`` (a file or a weights-manifest name;
  default: the manifest's entry for that backbone), or with random weights where the
  caller allows it (latency does not depend on weights);
- a registered model source (:data:`MODEL_SOURCES`): models that are not a facekd
  backbone with a weights file, such as a converted or external embedder. A source is
  ``factory(weights, allow_download) -> ResolvedModel``; new model kinds plug in here once.

Every command (eval, export, bench, embed/verify) and the distillation teacher go
through :func:`resolve`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from facekd.embed import Embedder, OnnxEmbedder, Preprocessing, TorchEmbedder
from facekd.errors import FacekdError
from facekd.models.base import BACKBONES, build_backbone, load_backbone_weights
from facekd.registry import Registry
from facekd.train.checkpoint import backbone_from_checkpoint, head_from_checkpoint, is_checkpoint, load_checkpoint
from facekd.weights import default_weights_for, manifest, resolve_weights


def file_hash(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class ResolvedModel:
    """A model a user named, ready to embed.

    Attributes:
        name: What to call it in logs and tables.
        pre: The input it expects and how its authors score it.
        backbone: The PyTorch network, in eval mode on the CPU; None for a model that
            only runs as an embedder (ONNX, an external library).
        path: The file it came from (weights, checkpoint or ONNX); None for random weights.
        checkpoint: The loaded facekd checkpoint, when ``path`` is one.
        embedder_factory: For models without a backbone: ``(device) -> Embedder``.
    """

    name: str
    pre: Preprocessing
    backbone: nn.Module | None = None
    path: Path | None = None
    checkpoint: dict | None = None
    embedder_factory: Callable[[str | None], Embedder] | None = None
    _key: str | None = None

    @property
    def key(self) -> str:
        """Identifies the weights (name + file hash) for caches of its outputs."""
        if self._key is None:
            self._key = f"{self.name}:{file_hash(self.path)}" if self.path is not None else f"{self.name}:random"
        return self._key

    def embedder(self, device: str | None = None, optimize: bool = True) -> Embedder:
        """An embedder of uint8 crops (PyTorch, ONNX Runtime, or the source's own)."""
        if self.backbone is not None:
            return TorchEmbedder(self.backbone, self.pre, name=self.name, device=device, optimize=optimize)
        if self.embedder_factory is None:
            raise FacekdError(f"{self.name}: has neither a backbone nor an embedder")
        return self.embedder_factory(device)

    def require_backbone(self, what: str) -> nn.Module:
        """The PyTorch backbone, or an error saying ``what`` needs one."""
        if self.backbone is None:
            raise FacekdError(f"{self.name}: {what} needs a PyTorch model (a registered backbone or a facekd checkpoint)")
        return self.backbone

    def head_for(self, identities: list[str]) -> nn.Module | None:
        """The checkpoint's classifier when it was trained on exactly ``identities``."""
        if self.checkpoint is None or self.backbone is None:
            return None
        return head_from_checkpoint(self.checkpoint, identities, self.backbone.cfg.embedding_dim)


MODEL_SOURCES: Registry[ResolvedModel] = Registry("model source")


def _weights_file(model: str, weights: str | Path | None, allow_download: bool) -> Path:
    """A local weights file for registered backbone ``model``."""
    if weights is None:
        weights = default_weights_for(model)
        if weights is None:
            raise FacekdError(f"no published weights for {model!r}; pass --weights FILE")
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if str(weights) in manifest():
        return resolve_weights(str(weights), allow_download=allow_download)
    raise FacekdError(f"{weights}: weights file not found (nor a name in weights/manifest.json)")


def _from_file(path: Path, weights: str | Path | None) -> ResolvedModel:
    if path.suffix.lower() == ".onnx":
        if weights:
            raise FacekdError(f"{path} is an ONNX model; --weights is for a registered backbone name")
        probe = OnnxEmbedder(path)  # fails early, naming the file, if it does not load
        return ResolvedModel(path.name, probe.pre, path=path, embedder_factory=lambda device: probe)
    if weights:
        raise FacekdError(f"{path} is a checkpoint; --weights is for a registered backbone name")
    ckpt = load_checkpoint(path)
    if not is_checkpoint(ckpt):
        raise FacekdError(
            f"{path}: not a facekd checkpoint (needs 'backbone' and 'model'); for published weights "
            "use --model NAME --weights FILE"
        )
    net = backbone_from_checkpoint(ckpt, path).eval()
    return ResolvedModel(path.name, Preprocessing.from_cfg(net.cfg), net, path, ckpt)


def resolve(
    spec: str | Path,
    weights: str | Path | None = None,
    *,
    allow_download: bool = True,
    random_weights: bool = False,
) -> ResolvedModel:
    """The model ``spec`` names (see the module docstring).

    Args:
        spec: An ``.onnx`` file, a facekd checkpoint, a registered backbone name or a
            registered model source.
        weights: For a registered name: a weights file or a weights-manifest name.
        allow_download: Whether manifest weights may be downloaded.
        random_weights: A registered backbone named without ``weights`` gets random
            weights instead of its published ones (size and latency benchmarks).
    """
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        return _from_file(path, weights)
    if spec in MODEL_SOURCES:
        return MODEL_SOURCES.get(spec)(weights=weights, allow_download=allow_download)
    if spec not in BACKBONES:
        if path.suffix or "/" in spec:
            raise FacekdError(f"{spec}: no such file")
        known = ", ".join(BACKBONES.names() + MODEL_SOURCES.names())
        raise FacekdError(f"unknown model {spec!r}; known: {known} (or a checkpoint / .onnx file)")
    net = build_backbone(spec)
    if weights is None and random_weights:
        return ResolvedModel(f"{spec} (random init)", Preprocessing.from_cfg(net.cfg), net.eval())
    wpath = _weights_file(spec, weights, allow_download)
    load_backbone_weights(net, wpath)
    return ResolvedModel(f"{spec} ({wpath.name})", Preprocessing.from_cfg(net.cfg), net.eval(), wpath)


def load_embedder(spec: str, weights: str | Path | None = None, device: str | None = None, allow_download: bool = True) -> Embedder:
    """An embedder of uint8 crops for what a user typed after ``--model``."""
    return resolve(spec, weights, allow_download=allow_download).embedder(device)


# Model sources that are not a facekd backbone register themselves on import; imported
# last because they build on the names above (dlib's ResNet: facekd.teachers.sources).
from facekd.teachers import sources as _sources  # noqa: E402,F401
