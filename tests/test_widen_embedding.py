"""eval/widen_embedding.py: the widened network computes its source's normalised
embedding, padded with zeros, and its new outputs can learn."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from facekd.models.base import build_backbone
from facekd.train.checkpoint import model_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "eval"))

import widen_embedding  # noqa: E402


def _source(path: Path) -> torch.nn.Module:
    """A random MobileFaceNet with batch-norm statistics away from their defaults."""
    torch.manual_seed(1)
    net = build_backbone("mobilefacenet")
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    save_checkpoint(path, model_checkpoint(net, "mobilefacenet", {}))
    return net.eval()


def test_the_widened_network_starts_as_its_source_and_its_new_outputs_learn(tmp_path: Path) -> None:
    from facekd.hub import resolve

    src = _source(tmp_path / "src.pt")
    assert widen_embedding.main([str(tmp_path / "src.pt"), "--width", "200", "--out", str(tmp_path / "wide.pt")]) == 0
    wide = resolve(tmp_path / "wide.pt").backbone.eval()
    x = torch.randn(3, 3, 112, 96)
    with torch.no_grad():
        a, b = F.normalize(src(x), dim=1), F.normalize(wide(x), dim=1)
    assert b.shape == (3, 200)
    torch.testing.assert_close(b[:, :128], a, atol=1e-5, rtol=0)
    assert float(b[:, 128:].abs().max()) == 0.0
    # a training step moves the new outputs: their batch-norm scale gets a gradient
    wide.train()
    target = F.normalize(torch.randn(3, 200), dim=1)
    (F.normalize(wide(x), dim=1) - target).pow(2).sum().backward()
    assert float(wide.embed.bn.weight.grad[128:].abs().sum()) > 0


def test_a_width_that_does_not_grow_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _source(tmp_path / "src.pt")
    assert widen_embedding.main([str(tmp_path / "src.pt"), "--width", "128", "--out", str(tmp_path / "w.pt")]) == 2
    assert "must exceed the source's embedding width (128)" in capsys.readouterr().err
    assert not (tmp_path / "w.pt").exists()


def test_a_probe_of_the_source_itself_reproduces_its_embedding_in_the_new_slice(tmp_path: Path) -> None:
    """MobileFaceNet's embedding is linear in what its embedding layer reads, so a ridge
    probe of the source itself (almost no ridge) must give the new outputs the trained
    ones on the crops it was fitted on: the fit, its scale and the batch norm that
    carries it checked together."""
    from test_distill_run import _synthetic_pack

    from facekd.hub import resolve
    from facekd.preprocessing import to_input
    from facekd.train.config import DataCfg
    from facekd.train.data import build_train_set

    import numpy as np

    _source(tmp_path / "src.pt")
    _synthetic_pack(tmp_path / "p.fkpack", n=24)
    assert widen_embedding.main([
        str(tmp_path / "src.pt"), "--width", "256", "--out", str(tmp_path / "wide.pt"),
        "--probe-teacher", str(tmp_path / "src.pt"), "--probe-data", str(tmp_path / "p.fkpack"), "--ridge", "1e-9"]) == 0
    ref = resolve(tmp_path / "wide.pt")
    data = build_train_set(DataCfg(train=[str(tmp_path / "p.fkpack")]), "112x96")
    x = torch.from_numpy(to_input(np.stack([data.image(i) for i in range(len(data))]), ref.pre))
    with torch.no_grad():
        out = ref.backbone.eval()(x)
    old, new = out[:, :128], out[:, 128:]
    assert float((new - old).norm(dim=1).max() / old.norm(dim=1).min()) < 1e-3
