"""ONNX export: every backbone matches PyTorch through ONNX Runtime; metadata, rewrites, INT8."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from facekd.deploy.export import check_parity, default_normalize, export_onnx, synthetic_inputs
from facekd.onnx_metadata import MODEL_META_KEY, ModelInfo, model_metadata, read_metadata
from facekd.evaluation.embed import OnnxEmbedder
from facekd.errors import FacekdError
from facekd.models import BACKBONES, build_backbone
from facekd.preprocessing import Preprocessing


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine terms, so eval-mode BN folding matters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
        if isinstance(m, nn.PReLU):  # negative and >1 slopes: the rewrite must keep them
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) * 2.5 - 1.0)
    return model.eval()


# Over ~0.25 GMAC, or seconds to build (torchvision): a batch of 64 through PyTorch and
# ONNX Runtime takes seconds each on a 2-core CI box, so these run with the slow tests
# (`make test-all`); the fast suite keeps one of each kind (plain CNN, residual,
# depthwise, fire modules).
HEAVY = {"resnet27", "resnet27_c14", "resnet37_c10", "densenet121", "inception_resnet_v1", "mobilenet_v2", "shufflenet_v2"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in BACKBONES.names()]
)
def test_every_backbone_matches_pytorch_at_batch_1_and_64(name, tmp_path):
    torch.manual_seed(0)
    model = _randomize_bn(build_backbone(name))
    size = tuple(model.cfg.input_size)
    path = tmp_path / f"{name}.onnx"
    pre = model.cfg.pre
    info = ModelInfo(name, size, model.cfg.embedding_dim, l2_normalized=False)
    export_onnx(model, path, input_size=size, metadata=model_metadata(pre, info))
    x = synthetic_inputs(8, size, seed=1)
    report = check_parity(model, path, x, batch_sizes=(1, 64), single_images=2, real_faces=False)
    assert set(report.min_cosine) == {1, 64}
    assert report.worst >= 0.9999
    # What OnnxEmbedder reads back is the model's own preprocessing.
    emb = OnnxEmbedder(path)
    assert emb.pre == pre
    out = emb(np.zeros((3, *size, 3), np.uint8))
    assert out.shape == (3, model.cfg.embedding_dim)


class _Tiny(nn.Module):
    """conv -> BN -> PReLU -> maxpool -> conv -> PReLU -> linear: every rewrite applies."""

    def __init__(self, slopes_a: torch.Tensor, slopes_b: torch.Tensor) -> None:
        super().__init__()
        self.c1, self.b1, self.p1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.PReLU(4)
        self.pool = nn.MaxPool2d(2)
        self.c2, self.p2 = nn.Conv2d(4, 4, 3, padding=1), nn.PReLU(4)
        self.fc = nn.Linear(4 * 4 * 4, 5)
        self.p1.weight.data.copy_(slopes_a)
        self.p2.weight.data.copy_(slopes_b)

    def forward(self, x):
        return self.fc(self.p2(self.c2(self.pool(self.p1(self.b1(self.c1(x)))))).flatten(1))


def _ops(path) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_rewrites_remove_prelu_and_keep_the_function(tmp_path):
    torch.manual_seed(0)
    model = _Tiny(torch.tensor([0.0, 0.1, 0.5, 1.0]), torch.tensor([-1.0, 0.3, 1.7, 2.5])).eval()
    plain, fast = tmp_path / "plain.onnx", tmp_path / "fast.onnx"
    assert export_onnx(model, plain, input_size=(8, 8), optimize=False) == {}
    counts = export_onnx(model, fast, input_size=(8, 8))
    assert counts == {"pool_before_prelu": 1, "decompose_prelu": 2}
    assert "PRelu" in _ops(plain) and "PRelu" not in _ops(fast)
    ops = _ops(fast)
    assert ops.index("MaxPool") < ops.index("Min")  # pooled first, then the PReLU math
    x = synthetic_inputs(16, (8, 8)) * 3
    assert check_parity(model, fast, x, batch_sizes=(1, 16)).worst >= 0.99999


@pytest.mark.parametrize("surgery,fused", [("prelu_to_relu", b"Relu"), ("prelu_to_leaky", b"LeakyRelu")])
def test_activations_the_surgeries_leave_fuse_into_the_convs(surgery, fused, tmp_path):
    """What the PReLU surgeries are for: after ONNX Runtime's graph optimisation every one
    of MobileFaceNet's activations is a Conv's fused activation, none a node of its own."""
    import onnx
    import onnxruntime as ort

    from facekd.models.surgery import apply_surgery

    net = _randomize_bn(build_backbone("mobilefacenet"))
    prelus = sum(isinstance(m, nn.PReLU) for m in net.modules())
    apply_surgery(net, [surgery])
    export_onnx(net, tmp_path / "m.onnx", input_size=(112, 96))
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(tmp_path / "m.onnx"), so, providers=["CPUExecutionProvider"])
    nodes = onnx.load(str(tmp_path / "opt.onnx")).graph.node
    assert not {"Relu", "LeakyRelu", "PRelu", "Min", "Mul"} & {n.op_type for n in nodes}
    acts = [onnx.helper.get_attribute_value(a) for n in nodes for a in n.attribute if a.name == "activation"]
    assert acts == [fused] * prelus


def test_pool_is_not_moved_before_a_prelu_with_a_negative_slope(tmp_path):
    model = _Tiny(torch.tensor([0.2, -0.1, 0.5, 1.0]), torch.tensor([0.1, 0.2, 0.3, 0.4])).eval()
    path = tmp_path / "m.onnx"
    counts = export_onnx(model, path, input_size=(8, 8))
    assert counts["pool_before_prelu"] == 0
    # Swapping would be wrong here, and parity proves the graph is still right.
    assert check_parity(model, path, synthetic_inputs(8, (8, 8)) * 3, batch_sizes=(1, 8)).worst >= 0.99999


def test_parity_check_fails_when_the_graph_differs(tmp_path):
    model = _Tiny(torch.full((4,), 0.25), torch.full((4,), 0.25)).eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, path, input_size=(8, 8))
    with torch.no_grad():
        model.c2.weight.mul_(-1.0)  # the ONNX file now holds other weights
    with pytest.raises(FacekdError, match="disagrees with PyTorch"):
        check_parity(model, path, synthetic_inputs(4, (8, 8)), batch_sizes=(1,))


def test_normalized_export_returns_unit_vectors_and_auto_follows_the_recipe(tmp_path):
    model = _Tiny(torch.full((4,), 0.25), torch.full((4,), 0.25)).eval()
    path = tmp_path / "n.onnx"
    export_onnx(model, path, input_size=(8, 8), normalize=True)
    import onnxruntime as ort

    out = ort.InferenceSession(str(path)).run(None, {"input": synthetic_inputs(5, (8, 8))})[0]
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert check_parity(model, path, synthetic_inputs(5, (8, 8)), normalize=True, batch_sizes=(1, 5)).worst > 0.9999
    # MobileFaceNet's LFW recipe subtracts a mean embedding: it must get raw embeddings.
    assert default_normalize(build_backbone("mobilefacenet").cfg.pre) is False
    assert default_normalize(build_backbone("student5").cfg.pre) is True


def test_metadata_records_model_facts_and_rewrites(tmp_path):
    model = build_backbone("student5").eval()
    pre = model.cfg.pre
    path = tmp_path / "s.onnx"
    export_onnx(model, path, input_size=(112, 96), metadata=model_metadata(pre, ModelInfo("student5", (112, 96), 512, True)))
    meta = read_metadata(path)
    assert Preprocessing(**json.loads(meta["facekd"])) == pre
    info = ModelInfo.from_json(meta[MODEL_META_KEY])
    assert info.input_size == (112, 96) and info.l2_normalized is True
    assert info.rewrites == {"pool_before_prelu": 5, "decompose_prelu": 5}


def test_export_cli_from_a_training_checkpoint(tmp_path):
    from facekd.cli import main

    torch.manual_seed(0)
    net = _randomize_bn(build_backbone("student5"))
    ckpt = tmp_path / "s5.ckpt"
    torch.save({"backbone": "student5", "model": {f"backbone.{k}": v for k, v in net.state_dict().items()}}, ckpt)
    out, rep = tmp_path / "s5.onnx", tmp_path / "report.json"
    assert main(["export", str(ckpt), "--onnx", str(out), "--json", str(rep), "--no-threshold"]) == 0
    report = json.loads(rep.read_text())
    assert report["l2_normalized"] is True
    assert min(report["parity"]["min_cosine"].values()) >= 0.9999
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out))
    for batch in (1, 64):
        y = sess.run(None, {"input": synthetic_inputs(batch, (112, 96))})[0]
        assert y.shape == (batch, 512)


def test_export_cli_refuses_static_int8_without_faces(tmp_path, capsys):
    from facekd.cli import main

    ckpt = tmp_path / "s5.ckpt"
    torch.save({"backbone": "student5", "model": build_backbone("student5").state_dict()}, ckpt)
    assert main(["export", str(ckpt), "--onnx", str(tmp_path / "x.onnx"), "--int8", "static"]) == 1
    assert "--calib" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_int8_probe_faces_are_held_out_from_calibration(tmp_path):
    """Every fifth of up to 320 crops probes the INT8 recipes; none of them calibrates."""
    import cv2

    from facekd.deploy.export import calibration_and_probe

    for i in range(30):  # crops told apart by their grey level
        cv2.imwrite(str(tmp_path / f"{i:02d}.png"), np.full((112, 96, 3), 8 * i, dtype=np.uint8))
    calib, probe, real = calibration_and_probe(tmp_path, Preprocessing(), (112, 96))
    level = lambda a: set(np.round(a[:, 0, 0, 0] * 128 + 127.5).astype(int).tolist())  # noqa: E731
    assert real and level(probe) == {8 * i for i in range(0, 30, 5)}
    assert level(calib) == {8 * i for i in range(30) if i % 5} and not level(calib) & level(probe)
