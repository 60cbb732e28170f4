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
  ``factory(weights, allow_download) -> ResolvedModel``; new model kinds plug in here once;
- the manifest name of an ONNX model facekd ships (its trained students, in ``weights/``).

Every command (eval, export, bench, embed/verify) and the distillation teacher go
through :func:`resolve`.
"""

from __future__ import annotations

from pathlib import Path

from facekd.evaluation.embed import Embedder, OnnxEmbedder
from facekd.errors import FacekdError
from facekd.hub.resolved import MODEL_SOURCES, ResolvedModel
from facekd.hub import sources as _sources  # noqa: F401  (registers the external model sources)
from facekd.weights import default_weights_for, manifest, onnx_models, resolve_weights

# The backbone registry and the checkpoint format (both import torch) are imported
# inside the functions that build a PyTorch model: resolving an .onnx file for
# facekd verify / embed must not pay torch's import, seconds on a small CPU.

__all__ = ["MODEL_SOURCES", "ResolvedModel", "load_embedder", "resolve"]


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
    from facekd.train.checkpoint import backbone_from_checkpoint, load_checkpoint

    ckpt = load_checkpoint(path)
    net = backbone_from_checkpoint(ckpt, path).eval()  # refuses a file that is not a facekd checkpoint
    return ResolvedModel(path.name, net.cfg.pre, net, path, ckpt)


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
    if spec in onnx_models():  # a student facekd ships (weights/manifest.json)
        return _from_file(resolve_weights(spec), weights)
    from facekd.models.base import BACKBONES, build_backbone, load_backbone_weights  # see the note above

    if spec not in BACKBONES:
        if path.suffix.lower() == ".onnx":
            raise FacekdError(f"{spec}: ONNX model not found")
        if path.suffix or "/" in spec:
            raise FacekdError(f"{spec}: no such file")
        known = ", ".join(BACKBONES.names() + MODEL_SOURCES.names())
        raise FacekdError(f"unknown model {spec!r}; known: {known} (or a checkpoint / .onnx file)")
    net = build_backbone(spec)
    if weights is None and random_weights:
        return ResolvedModel(f"{spec} (random init)", net.cfg.pre, net.eval())
    wpath = _weights_file(spec, weights, allow_download)
    load_backbone_weights(net, wpath)
    return ResolvedModel(f"{spec} ({wpath.name})", net.cfg.pre, net.eval(), wpath)


def load_embedder(spec: str, weights: str | Path | None = None, device: str | None = None, allow_download: bool = True) -> Embedder:
    """An embedder of uint8 crops for what a user typed after ``--model``."""
    return resolve(spec, weights, allow_download=allow_download).embedder(device)

