"""What the model hub returns (:class:`ResolvedModel`) and the registry of model sources
that are not a facekd backbone with a weights file (:data:`MODEL_SOURCES`).

Apart from :mod:`facekd.hub` so that a source module can register itself here
while the hub imports it: neither imports the other's importer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from facekd.evaluation.embed import Embedder, TorchEmbedder
from facekd.download import sha256_of
from facekd.errors import FacekdError
from facekd.preprocessing import Preprocessing
from facekd.registry import Registry

if TYPE_CHECKING:  # torch is imported only where a PyTorch model is used (see facekd.hub)
    from torch import nn


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
            self._key = f"{self.name}:{sha256_of(self.path)}" if self.path is not None else f"{self.name}:random"
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
        from facekd.train.checkpoint import head_from_checkpoint  # torch: see facekd.hub

        return head_from_checkpoint(self.checkpoint, identities, self.backbone.cfg.embedding_dim)


MODEL_SOURCES: Registry[ResolvedModel] = Registry("model source")
