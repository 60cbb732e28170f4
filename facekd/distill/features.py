"""The outputs of named inner layers of a network, kept from its last forward pass, for
terms that match a student's blocks to its teacher's (``blocks`` in
:mod:`facekd.distill.losses`)."""

from __future__ import annotations

from torch import nn

from facekd.errors import FacekdError


def feature_layers(net: nn.Module, requested: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The layer names to tap in ``net``: ``requested`` (checked by :class:`FeatureTap`),
    or, when empty, every child of its ``blocks`` container (MobileFaceNet's bottlenecks,
    a ResNet's residual blocks).

    Raises:
        FacekdError: nothing was requested and ``net`` has no ``blocks``.
    """
    if requested:
        return tuple(requested)
    blocks = dict(net.named_modules()).get("blocks")
    if blocks is None or not list(blocks.children()):
        raise FacekdError(f"distill term blocks: {type(net).__name__} has no 'blocks' container; name the layers "
                          "to match ({name: blocks, layers: [...]})")
    return tuple(f"blocks.{name}" for name, _ in blocks.named_children())


class _Keeper:
    """The forward hook of one layer: puts its output in its tap. An object rather than a
    closure, so that a deep copy of the network (``time_step``, ``evaluate_lfw``) writes
    into the copy of the tap made in the same copy, never into the original's."""

    def __init__(self, tap: "FeatureTap", name: str) -> None:
        self.tap, self.name = tap, name

    def __call__(self, module, args, output) -> None:
        self.tap.values[self.name] = output


class FeatureTap:
    """Forward hooks on ``net``'s modules ``names`` that keep each one's output of the
    last forward pass; :meth:`take` hands them over (and forgets them)."""

    def __init__(self, net: nn.Module, names: tuple[str, ...]) -> None:
        modules = dict(net.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise FacekdError(f"distill term blocks: {type(net).__name__} has no layer(s) {', '.join(missing)} "
                              f"(its top-level modules: {', '.join(n for n, _ in net.named_children())})")
        self.names = tuple(names)
        self.values: dict = {}
        self._handles = [modules[n].register_forward_hook(_Keeper(self, n)) for n in self.names]

    def __deepcopy__(self, memo: dict) -> "FeatureTap":
        # A copy starts empty (kept outputs belong to the original's graph) and owns no
        # handles: the copied network's hooks find it through ``memo``.
        new = FeatureTap.__new__(FeatureTap)
        memo[id(self)] = new
        new.names, new.values, new._handles = self.names, {}, []
        return new

    def take(self) -> dict:
        """The kept outputs by layer name, in ``names``' order."""
        out = {n: self.values[n] for n in self.names if n in self.values}
        self.values = {}
        return out

    def remove(self) -> None:
        """Removes the hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []
