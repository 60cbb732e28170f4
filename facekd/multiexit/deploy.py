"""Multi-exit models on ONNX Runtime: every exit as an output, per-exit latency, and the
deepest exit a latency budget allows ("anytime" prediction's budget mode).

- :func:`export_all_exits`: one ONNX graph whose outputs are ``embedding`` (the full
  model: what facekd's ONNX embedder reads) and ``exit1`` ... ``exit{N-1}``; each
  L2-normalised unless the model's recipe needs the raw embedding, checked against
  PyTorch output by output.
- :func:`exit_latencies`: each exit exported alone (the graph cut after it, so it
  computes nothing later) and timed at batch 1 on one thread, all exits interleaved.
- :func:`budget_exit`: the deepest exit whose latency fits.
"""

from __future__ import annotations

import io
import json
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from facekd.deploy.export import PARITY_MIN_COSINE, default_normalize, export_onnx, synthetic_inputs
from facekd.onnx_metadata import ModelInfo, model_metadata, set_metadata
from facekd.errors import FacekdError
from facekd.io_utils import atomic_write_bytes
from facekd.models.exits import AllExits, MultiExit, select_exit
from facekd.models.profile import count_macs, count_params, forward_once
from facekd.preprocessing import cosine_rows
from facekd.runtime.onnx import ort_session
from facekd.runtime.timing import measure_latency


def output_names(model: MultiExit) -> list[str]:
    """ONNX output names, in output order: the full model first, then the early exits."""
    return ["embedding"] + [f"exit{k}" for k in range(1, model.num_exits)]


class _Ordered(nn.Module):
    """All exits, the full model's first, optionally L2-normalised."""

    def __init__(self, model: MultiExit, normalize: bool) -> None:
        super().__init__()
        self.inner, self.normalize = AllExits(model), normalize

    def forward(self, x):
        outs = self.inner(x)
        outs = (outs[-1], *outs[:-1])
        return tuple(nn.functional.normalize(o, dim=1) for o in outs) if self.normalize else outs


def export_all_exits(model: MultiExit, path: Path | str, *, normalize: bool | None = None, opset: int = 17) -> dict:
    """Writes the all-exits ONNX graph and checks each output against PyTorch.

    Returns:
        ``{"outputs": names, "min_cosine": {name: worst cosine}}``.
    """
    import onnx

    if not isinstance(model, MultiExit):
        raise FacekdError(f"{model.cfg.name}: has no early exits to export")
    model = model.cpu().eval()
    pre = model.cfg.pre
    normalize = default_normalize(pre) if normalize is None else normalize
    names = output_names(model)
    net = _Ordered(model, normalize).eval()
    dummy = torch.zeros(2, 3, *model.cfg.input_size)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(net, (dummy,), buf, input_names=["input"], output_names=names,
                          dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                          opset_version=opset, do_constant_folding=True, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    info = ModelInfo(f"{model.cfg.name}+{model.num_exits - 1}exits", tuple(model.cfg.input_size), model.cfg.embedding_dim, normalize)
    meta = model_metadata(pre, info)
    meta["facekd.exits"] = json.dumps({"outputs": names, "points": model.points})
    set_metadata(proto, meta)
    data = proto.SerializeToString()
    x = synthetic_inputs(8, tuple(model.cfg.input_size))
    sess = ort_session(data, threads=None)
    got = sess.run(None, {"input": x})
    with torch.no_grad():
        ref = [o.numpy() for o in net(torch.from_numpy(x))]
    cos = {n: float(cosine_rows(g, r).min()) for n, g, r in zip(names, got, ref)}
    bad = {n: c for n, c in cos.items() if c < PARITY_MIN_COSINE}
    if bad:
        raise FacekdError(f"{path}: ONNX Runtime disagrees with PyTorch at {bad} (need >= {PARITY_MIN_COSINE})")
    atomic_write_bytes(path, data)
    return {"outputs": names, "min_cosine": cos}


@dataclass(frozen=True)
class ExitCost:
    """One exit's size and speed: parameters it runs, MACs, ONNX Runtime ms per face
    (batch 1, one thread; median and spread over interleaved rounds)."""

    exit: int
    params: int
    macs: int
    ort_ms_1t: float
    ort_ms_min: float
    ort_ms_max: float


def _exit_params(model: MultiExit, k: int) -> int:
    """Parameters exit ``k`` runs: the backbone up to its node, and its head."""
    if k == model.num_exits:
        return count_params(model.net)
    seen: set[int] = set()
    forward_once(model, [(m, lambda mod, i, o: seen.add(id(mod))) for m in model.modules() if not list(m.children())])
    return sum(p.numel() for m in model.modules() if id(m) in seen for p in m.parameters(recurse=False))


def exit_latencies(model: MultiExit, rounds: int = 15) -> list[ExitCost]:
    """Every exit exported alone and timed with ONNX Runtime (1 thread, batch 1)."""
    model = model.cpu().eval()
    was = model.active_exit
    x = synthetic_inputs(1, tuple(model.cfg.input_size))
    files, sizes = {}, {}
    with tempfile.TemporaryDirectory(prefix="facekd-exits-") as tmp:
        try:
            for k in range(1, model.num_exits + 1):
                select_exit(model, k)
                path = Path(tmp) / f"exit{k}.onnx"
                export_onnx(model, path, input_size=tuple(model.cfg.input_size), normalize=True)
                files[str(k)] = path
                sizes[k] = (_exit_params(model, k), count_macs(model, tuple(model.cfg.input_size)))
            timings = measure_latency(files, rounds=rounds, inputs=x)
        finally:
            model.active_exit = was
    return [ExitCost(k, *sizes[k], *(round(1000 * v, 4) for v in (t.median, t.low, t.high)))
            for k, t in ((int(n), t) for n, t in timings.items())]


def budget_exit(costs: list[ExitCost], budget_ms: float) -> ExitCost:
    """The deepest exit whose median latency is within ``budget_ms``."""
    fits = [c for c in costs if c.ort_ms_1t <= budget_ms]
    if not fits:
        fastest = min(costs, key=lambda c: c.ort_ms_1t)
        raise FacekdError(f"no exit fits {budget_ms:g} ms per face; the fastest, exit {fastest.exit}, takes {fastest.ort_ms_1t:.2f} ms")
    return max(fits, key=lambda c: c.exit)


def costs_to_json(costs: list[ExitCost]) -> list[dict]:
    return [asdict(c) for c in costs]


def costs_from_json(rows: list[dict]) -> list[ExitCost]:
    return [ExitCost(**r) for r in rows]
