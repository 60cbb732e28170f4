"""Early exits attached to a backbone by configuration ("anytime" embedders).

Phuong & Lampert (ICCV 2019) train a network with early exits, each its own small
predictor, so that at run time one can stop at the first exit the compute budget
allows. Here an exit reads the output of a named node of the backbone's traced graph
(``at: features.9``: a module path, as ``torchvision``'s ``get_graph_node_names``
lists them) and maps it to an embedding of the backbone's size; the backbone itself is
not edited. The last exit is the backbone's own output.

The wrapper cuts the backbone's graph at the node an exit reads
(``torchvision.models.feature_extraction.create_feature_extractor``), so running exit
``k`` computes only the layers before it, in PyTorch and in an exported ONNX graph
alike. Exits are numbered from 1 (the earliest) to :attr:`MultiExit.num_exits` (the
full model); ``model.active_exit`` chooses which one ``forward`` returns.
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from facekd.config import from_dict
from facekd.errors import FacekdError
from facekd.models.base import check_norm, has_batch_norm, init_prelu_net

# Symbolic tracing patches torch.nn.Module.__call__ process-wide while it runs: one trace
# at a time, and cut graphs are built before an embedder runs batches on several threads.
_TRACE_LOCK = threading.Lock()


@dataclass(frozen=True)
class ExitCfg:
    """One early exit.

    Attributes:
        at: The graph node whose output the exit reads (a module path such as
            ``features.9``; a module with inner nodes means its last one).
        width: Channels of the exit's convolutions (default: the tapped channels).
        downsample: Stride-2 3x3 convolutions before the embedding layer (default:
            as many as bring the feature map's height to 8 or less).
        norm: "bn" (batch norm after each conv and on the embedding), "none", or "auto":
            "bn" when the backbone has batch norm. Records written before exits had
            this field have none, and their backbones none either, so "auto" reads them.
    """

    at: str
    width: int | None = None
    downsample: int | None = None
    norm: str = "auto"


class ExitHead(nn.Module):
    """Feature map (N, C, H, W) -> embedding: ``downsample`` x (3x3 stride-2 conv, [batch
    norm], PReLU), then a fully connected layer on the flattened map [and batch norm on
    the embedding], as the ResNet family's stages and ``fc5``.

    Without batch norm, PyTorch's default init gave resnet37_c10's early exits (on its
    batch-norm trunk, training mode) nearly one embedding for every input (mean cosine
    0.77 between random inputs), and the second exit's softmax loss diverged at lr 0.1
    (2.3 to 1.7e21 in 10 steps); hence "bn" and He init, as the family.
    """

    def __init__(self, channels: int, size: tuple[int, int], width: int, downsample: int, embedding_dim: int,
                 norm: str = "none") -> None:
        super().__init__()
        check_norm(norm, "exit norm", also=("auto",))
        layers: list[nn.Module] = []
        h, w, cin = size[0], size[1], channels
        for _ in range(downsample):
            layers.append(nn.Conv2d(cin, width, 3, stride=2, padding=1, bias=norm == "none"))
            if norm == "bn":
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.PReLU(width))
            h, w, cin = math.ceil(h / 2), math.ceil(w / 2), width
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Linear(cin * h * w, embedding_dim)
        self.bn = nn.BatchNorm1d(embedding_dim) if norm == "bn" else nn.Identity()
        if norm == "bn":
            init_prelu_net(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(self.convs(x).flatten(1)))


class MultiExit(nn.Module):
    """A backbone with early exits; ``forward`` returns the active exit's embedding.

    Args:
        net: The backbone (registered, possibly pruned); it keeps its parameter names
            under ``net.``.
        exits: :class:`ExitCfg` mappings, earliest first.
    """

    def __init__(self, net: nn.Module, exits: list[ExitCfg | dict]) -> None:
        super().__init__()
        if not exits:
            raise FacekdError("a multi-exit model needs at least one early exit (exits: [{at: NODE}])")
        specs = [e if isinstance(e, ExitCfg) else from_dict(ExitCfg, dict(e), f"exits[{i}]") for i, e in enumerate(exits)]
        self.net = net
        self.cfg = net.cfg
        self.points = [s.at for s in specs]
        self._extractors: dict[tuple[str, ...], nn.Module] = {}
        self._last_node = get_graph_node_names(net)[1][-1]
        was = net.training
        with torch.no_grad():
            taps = self._extract(tuple(self.points), torch.zeros(1, 3, *net.cfg.input_size), train=False)
        net.train(was)
        resolved, heads = [], []
        for spec, point in zip(specs, self.points):
            _, c, h, w = taps[point].shape
            down = spec.downsample
            if down is None:
                down, hh = 0, h
                while hh > 8:
                    hh, down = math.ceil(hh / 2), down + 1
            width = spec.width or c
            norm = spec.norm
            if norm == "auto":
                norm = "bn" if has_batch_norm(net) else "none"
            heads.append(ExitHead(c, (h, w), width, down, net.cfg.embedding_dim, norm))
            resolved.append(asdict(ExitCfg(point, width, down, norm)))
        self.heads = nn.ModuleList(heads)
        self._active = self.num_exits
        self.transforms = [*getattr(net, "transforms", []), {"name": "exits", "exits": resolved}]

    def __getstate__(self) -> dict:
        # The cut graphs are caches that hold references into ``net``: a copy builds its own.
        return {**self.__dict__, "_extractors": {}}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.active_exit = self._active  # the copy's own cut graph, traced now

    @property
    def active_exit(self) -> int:
        """The exit ``forward`` answers with (1 = earliest, :attr:`num_exits` = the full model)."""
        return self._active

    @active_exit.setter
    def active_exit(self, k: int) -> None:
        # Trace now: symbolic tracing patches torch.nn.Module.__call__ process-wide, so it
        # must not happen while an embedder runs batches on several threads.
        if k != self.num_exits:
            with _TRACE_LOCK:
                self._trace((self.points[k - 1],))
        self._active = k

    @property
    def num_exits(self) -> int:
        """Early exits + the full model."""
        return len(self.points) + 1

    def _extract(self, nodes: tuple[str, ...], x: torch.Tensor, train: bool) -> dict[str, torch.Tensor]:
        """The backbone's graph cut after ``nodes``, run on ``x``: node -> output."""
        ext = self._extractors.get(nodes)
        if ext is None:
            with _TRACE_LOCK:
                ext = self._trace(nodes)
        ext.train(train)
        return ext(x)

    def _trace(self, nodes: tuple[str, ...]) -> nn.Module:
        """The cut graph for ``nodes``, built once (callers hold the trace lock)."""
        ext = self._extractors.get(nodes)
        if ext is None:
            try:
                ext = create_feature_extractor(self.net, return_nodes=list(nodes))
            except ValueError as exc:
                names = get_graph_node_names(self.net)[1]
                raise FacekdError(
                    f"exit at {nodes}: not a node of {self.cfg.name}'s graph ({str(exc).splitlines()[0][:120]}); "
                    f"nodes include {', '.join(names[1:4])}, ..., {', '.join(names[-3:])}"
                ) from None
            self._extractors[nodes] = ext
        return ext

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every exit's embedding from one pass, earliest first; the last is the backbone's."""
        out = self._extract((*self.points, self._last_node), x, self.training)
        return [head(out[p]) for head, p in zip(self.heads, self.points)] + [out[self._last_node]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.active_exit
        if k == self.num_exits:
            return self.net(x)
        point = self.points[k - 1]
        return self.heads[k - 1](self._extract((point,), x, self.training)[point])


class AllExits(nn.Module):
    """A multi-exit model whose forward returns every exit's embedding (a tuple,
    earliest first): what the all-exits ONNX export traces."""

    def __init__(self, model: MultiExit) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.forward_all(x))


def select_exit(model: nn.Module, k: int | None) -> nn.Module:
    """Makes ``model`` answer with exit ``k`` (1 = earliest); None leaves it as is."""
    if k is None:
        return model
    if not isinstance(model, MultiExit):
        raise FacekdError(f"--exit {k}: {getattr(model, 'cfg', None) and model.cfg.name} has no early exits")
    if not 1 <= k <= model.num_exits:
        raise FacekdError(f"--exit {k}: the model has exits 1..{model.num_exits} ({model.num_exits} is the full model)")
    model.active_exit = k
    return model
