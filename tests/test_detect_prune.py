"""Multi-layer pruning of the student face detectors (Singh et al., WACV 2019): pruning an
untrained fkdet_s keeps its 12 maps and shrinks its parameters and MACs (counted on the
exported ONNX graph); a dead filter goes first; the sparsity penalty covers the backbone
and neck, never the heads; a pruned detector rebuilds from its record."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("torch_pruning", reason="pruning needs the prune extra (torch-pruning)")
pytest.importorskip("onnxruntime")

from facekd.align.grid import HEADS, STRIDES  # noqa: E402
from facekd.deploy.macs import count_macs  # noqa: E402
from facekd.detect.export import export_detector  # noqa: E402
from facekd.detect.model import DETECTOR_NETS  # noqa: E402
from facekd.detect.prune import detector_layers, prune_detector, rebuild_detector, sparsity_penalty  # noqa: E402
from facekd.errors import FacekdError  # noqa: E402


def _params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _macs(net: nn.Module, folder, size: int = 256) -> int:
    """count_macs of the exported detector at a fixed size x size input: the export has
    dynamic height and width, which count_macs's shape inference cannot size."""
    import onnx

    path = export_detector(net, "fkdet_s", folder / "det.onnx")
    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d in (dims[2], dims[3]):
        d.Clear()
        d.dim_value = size
    onnx.save(model, str(folder / "fixed.onnx"))
    return count_macs(folder / "fixed.onnx")


@pytest.fixture(scope="module")
def source_and_macs(tmp_path_factory):
    torch.manual_seed(0)
    net = DETECTOR_NETS.build("fkdet_s").eval()
    return net, _macs(net, tmp_path_factory.mktemp("det"))


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_pruning_keeps_every_map_and_shrinks_params_and_macs(ratio, source_and_macs, tmp_path):
    net, macs = source_and_macs
    before = {k: v.clone() for k, v in net.state_dict().items()}
    pruned = prune_detector(net, ratio)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the source is left as it was
    x = torch.rand(2, 3, 256, 256) * 255
    with torch.no_grad():
        want, got = net(x), pruned.eval()(x)
    assert [o.shape for o in got] == [o.shape for o in want]
    # cls, obj, bbox, kps at strides 8, 16, 32 of a 256 input.
    assert [tuple(o.shape[1:]) for o in got] == [(c, 256 // s, 256 // s) for c in HEADS.values() for s in STRIDES]
    assert all(torch.isfinite(o).all() for o in got)
    # Per layer, about `ratio` of the filters of every prunable layer go.
    assert pruned.stage16[1][0].out_channels == 32 - int(32 * ratio)
    assert pruned.neck_channels == pruned.fuse[0][1].out_channels < net.neck_channels
    assert _params(pruned) < (1 - 0.6 * ratio) * _params(net)
    assert _macs(pruned, tmp_path) < (1 - 0.6 * ratio) * macs


def test_a_dead_filter_is_removed_first():
    torch.manual_seed(0)
    net = DETECTOR_NETS.build("fkdet_s")
    unit = net.stage8[1]  # 1x1 conv 16->24, depthwise 3x3, BN, ReLU
    with torch.no_grad():  # filter 5 (and its depthwise kernel) outputs nothing but the BN shift
        unit[0].weight[5] = 0
        unit[1].weight[5] = 0
    depthwise = unit[1].weight.detach().clone()
    pruned = prune_detector(net, 0.04)  # 24 - int(24 * 0.96) = 1 filter per layer
    assert pruned.stage8[1][0].out_channels == 23
    # The depthwise kernels that stay (the 1x1's inputs shrank with stage4) are all but 5's.
    torch.testing.assert_close(pruned.stage8[1][1].weight.detach(), depthwise[[i for i in range(24) if i != 5]],
                               rtol=0, atol=0)


def test_penalty_covers_backbone_and_neck_not_the_heads():
    torch.manual_seed(0)
    net = DETECTOR_NETS.build("fkdet_s")
    layers = detector_layers(net)
    want = sum(float(m.weight.detach().abs().sum()) for name, m in net.named_modules()
               if isinstance(m, nn.Conv2d) and not name.startswith("heads."))
    assert float(sparsity_penalty(net, layers).detach()) == pytest.approx(want, rel=1e-6)
    stage = sum(float(m.weight.detach().abs().sum()) for m in net.stage16.modules() if isinstance(m, nn.Conv2d))
    assert float(sparsity_penalty(net, detector_layers(net, ["stage16"])).detach()) == pytest.approx(stage, rel=1e-6)
    # Usable in a training loop: λ·penalty's gradient is λ·sign(W) on the covered convs only.
    (0.1 * sparsity_penalty(net, layers)).backward()
    torch.testing.assert_close(net.stage16[1][0].weight.grad, 0.1 * net.stage16[1][0].weight.detach().sign())
    assert net.heads["cls"][0][0].weight.grad is None
    with pytest.raises(FacekdError, match="detector sparsity layers: stage64 not a module"):
        detector_layers(net, ["stage64"])


def test_pruned_detector_rebuilds_from_its_record():
    torch.manual_seed(0)
    pruned = prune_detector(DETECTOR_NETS.build("fkdet_s"), 0.5).eval()
    again = rebuild_detector("fkdet_s", pruned.transforms)
    again.load_state_dict(pruned.state_dict())
    x = torch.rand(1, 3, 128, 160) * 255
    with torch.no_grad():
        for a, b in zip(again.eval()(x), pruned(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert again.neck_channels == pruned.neck_channels


def test_importances_that_need_a_loss_and_bad_ratios_are_refused():
    net = DETECTOR_NETS.build("fkdet_s")
    with pytest.raises(FacekdError, match="importance taylor needs a loss.*l1, l1_next, random"):
        prune_detector(net, 0.5, importance="taylor")
    with pytest.raises(FacekdError, match=r"ratio must lie in \[0, 1\), got 1.0"):
        prune_detector(net, 1.0)


SHARED = Path(os.environ.get("FACEKD_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _run_cfg(*sets: str):
    from facekd.config import load_config
    from facekd.detect.config import DetectorRunCfg

    base = ["data.limit=6", "data.labeller=yunet", "data.unlabelled=[]", "train.frames_per_epoch=16",
            "train.batch_size=8", "train.threads=1", "train.precision=fp32", "frames.size=128", "train.epochs=1",
            "terms=[{name: hard}]", "teacher=none", "fm_nms=false"]
    return load_config(DetectorRunCfg, Path(__file__).resolve().parents[1] / "configs" / "detect" / "fkdet_s.yaml",
                       base + list(sets))


def _l1(net) -> float:
    return float(sparsity_penalty(net, detector_layers(net)).detach())


def test_the_three_stages_sparsity_then_prune_from_init_then_retrain_and_resume(tmp_path):
    """A run with sparsity ends with smaller filter norms than the same run without; a run
    with init + prune starts from that detector pruned exactly as prune_detector prunes
    it, retrains it, exports it, and a stop + --resume rebuilds the pruned widths and
    ends bit for bit where a straight run ends."""
    if not (SHARED / "celeba-wild").is_dir():
        pytest.skip("needs ../shared/data/celeba-wild (teacher-labelled photos)")
    from facekd.align.detector import build_detector
    from facekd.detect.train import train_detector
    from facekd.train.checkpoint import load_checkpoint

    quiet = lambda *_: None  # noqa: E731
    train_detector(_run_cfg(), tmp_path / "plain", log=quiet)
    train_detector(_run_cfg("sparsity={weight: 0.05}"), tmp_path / "sparse", log=quiet)
    plain = rebuild_detector("fkdet_s", None)
    plain.load_state_dict(load_checkpoint(tmp_path / "plain" / "checkpoints" / "last.pt")["model"])
    sparse = rebuild_detector("fkdet_s", None)
    sparse.load_state_dict(load_checkpoint(tmp_path / "sparse" / "checkpoints" / "last.pt")["model"])
    assert _l1(sparse) < 0.99 * _l1(plain)  # AdamW moves each weight by at most about lr a step: 2 steps here

    retrain = _run_cfg(f"init={tmp_path / 'sparse'}", "prune={ratio: 0.5}", "train.epochs=2")
    said: list[str] = []
    onnx_path = train_detector(retrain, tmp_path / "a", log=said.append)
    want = _params(prune_detector(sparse, 0.5))
    assert any(f"-> {want:,} parameters" in s for s in said), said
    state = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    assert [r["name"] for r in state["transforms"]] == ["prune"]
    assert _params(rebuild_detector("fkdet_s", state["transforms"])) == want
    assert isinstance(build_detector(str(onnx_path)).detect(np.zeros((200, 200, 3), np.uint8)), list)

    class Stop(Exception):
        pass

    def stop_after_first_epoch(line: str) -> None:
        if line.startswith('{"epoch": 1,'):
            raise Stop

    with pytest.raises(Stop):
        train_detector(retrain, tmp_path / "b", log=stop_after_first_epoch)
    b = train_detector(retrain, tmp_path / "b", resume=True, log=quiet)
    assert onnx_path.read_bytes() == b.read_bytes()


def test_prune_without_init_and_a_missing_init_are_refused(tmp_path):
    from facekd.detect.config import check_config

    with pytest.raises(FacekdError, match="pruning needs a trained detector"):
        check_config(_run_cfg("prune={ratio: 0.5}"))
    with pytest.raises(FacekdError, match="not found"):
        check_config(_run_cfg(f"init={tmp_path / 'nowhere'}"))
    with pytest.raises(FacekdError, match="needs a labelled loss"):
        check_config(_run_cfg(f"init={tmp_path}", "prune={ratio: 0.5, importance: taylor}"))
