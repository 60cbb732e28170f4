"""Turning a ``--model`` argument into an embedder: a registered name, a checkpoint, an .onnx."""

from __future__ import annotations

from pathlib import Path

from facekd.embed import Embedder, OnnxEmbedder, Preprocessing, TorchEmbedder
from facekd.errors import FacekdError


def load_checkpoint_backbone(path: Path):
    """A backbone from a facekd checkpoint: ``{"backbone": name, "model": state_dict, ...}``.

    Keys of the state dict may carry a ``backbone.`` prefix (a training checkpoint that
    also holds the classifier head); only the backbone's keys are used.
    """
    import torch

    from facekd.models import build_backbone

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FacekdError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {exc})".split("\n")[0]) from None
    if not isinstance(ckpt, dict) or "backbone" not in ckpt or "model" not in ckpt:
        raise FacekdError(
            f"{path}: not a facekd checkpoint (needs 'backbone' and 'model'); for published weights "
            "use --model NAME --weights FILE"
        )
    model = build_backbone(ckpt["backbone"], **ckpt.get("backbone_args", {}))
    state = ckpt["model"]
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise FacekdError(f"{path}: weights do not fit backbone {ckpt['backbone']!r} ({str(exc).splitlines()[0]})") from None
    return model


def load_embedder(
    model: str, weights: str | Path | None = None, device: str | None = None, allow_download: bool = True
) -> Embedder:
    """Builds an embedder from what a user types after ``--model``.

    Args:
        model: An ``.onnx`` file, a facekd checkpoint file, or a registered backbone name.
        weights: For a registered name: a weights file, or a name from the weights
            manifest. Without it, the manifest's default weights for that backbone.
        device: Torch device; default CUDA when present.
        allow_download: Whether manifest weights may be downloaded.
    """
    from facekd.models import BACKBONES, backbone_cfg, build_backbone, load_backbone_weights
    from facekd.weights import default_weights_for, manifest, resolve_weights

    path = Path(model)
    if path.suffix.lower() == ".onnx":
        return OnnxEmbedder(path)
    if path.is_file():
        net = load_checkpoint_backbone(path)
        return TorchEmbedder(net, Preprocessing.from_cfg(net.cfg), name=path.name, device=device)
    if model not in BACKBONES:
        if path.suffix or "/" in model:
            raise FacekdError(f"{model}: no such file")
        BACKBONES.get(model)  # raises, listing the known names
    net = build_backbone(model)
    if weights is None:
        weights = default_weights_for(model)
        if weights is None:
            raise FacekdError(f"no published weights for {model!r}; pass --weights FILE")
    wpath = Path(weights)
    if not wpath.is_file():
        if str(weights) in manifest():
            wpath = resolve_weights(str(weights), allow_download=allow_download)
        else:
            raise FacekdError(f"{weights}: weights file not found")
    load_backbone_weights(net, wpath)
    return TorchEmbedder(net, Preprocessing.from_cfg(backbone_cfg(model)), name=f"{model} ({wpath.name})", device=device)
