"""The model hub: every kind of --model resolves through one function, with clear errors."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from facekd.config import to_dict
from facekd.preprocessing import Preprocessing
from facekd.errors import FacekdError
from facekd.models.heads import build_head
from facekd.models import build_backbone
from facekd.models.base import remap_keys
from facekd.download import sha256_of
from facekd.hub import MODEL_SOURCES, ResolvedModel, resolve
from facekd.train.checkpoint import FORMAT, save_checkpoint


def _checkpoint(path, identities, head_name="softmax"):
    """A facekd checkpoint as the trainer writes it (backbone.* and head.* keys)."""
    torch.manual_seed(0)
    net = build_backbone("student5")
    head = build_head(head_name, net.cfg.embedding_dim, len(identities))
    state = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    state.update({f"head.{k}": v for k, v in head.state_dict().items()})
    save_checkpoint(path, {
        "format": FORMAT, "backbone": "student5", "backbone_args": {}, "model": state,
        "identities": list(identities), "config": {"model": {"head": head_name, "head_args": {}}},
    })
    return net.eval(), head


def test_checkpoint_resolves_to_its_backbone_and_head(tmp_path):
    path = tmp_path / "run.pt"
    net, head = _checkpoint(path, ["a", "b", "c"])
    ref = resolve(path)
    x = torch.randn(2, 3, 112, 96)
    with torch.no_grad():
        assert torch.allclose(ref.backbone(x), net(x), atol=1e-5)
    assert ref.pre == net.cfg.pre
    assert ref.key.endswith(sha256_of(path))
    got = ref.head_for(["a", "b", "c"])
    assert got is not None
    for (k, a), b in zip(got.state_dict().items(), head.state_dict().values()):
        assert torch.equal(a, b), k
    assert ref.head_for(["a", "c", "b"]) is None  # another order is another classifier


def test_registered_name_loads_published_weights(mobilefacenet_weights):
    ref = resolve("mobilefacenet", mobilefacenet_weights)
    want = torch.load(mobilefacenet_weights, map_location="cpu", weights_only=True)["net_state_dict"]
    want = remap_keys(want, ref.backbone.cfg.key_map)
    got = ref.backbone.state_dict()
    assert len(want) > 100
    for k, v in want.items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(got[k], v), k
    assert ref.pre.template == "112x96" and ref.pre.flip_fusion == "concat"
    assert ref.path == mobilefacenet_weights


def test_random_weights_only_when_asked():
    ref = resolve("student5", random_weights=True)
    assert ref.path is None and ref.backbone is not None
    with pytest.raises(FacekdError, match="no published weights for 'student5'"):
        resolve("student5")


def test_onnx_resolves_to_an_embedder(tmp_path):
    from facekd.deploy.export import export_onnx
    from facekd.onnx_metadata import PREPROCESSING_META_KEY as ONNX_META_KEY

    net = build_backbone("student5").eval()
    path = tmp_path / "s5.onnx"
    export_onnx(net, path, input_size=net.cfg.input_size,
                metadata={ONNX_META_KEY: json.dumps(asdict(net.cfg.pre))})
    ref = resolve(path)
    assert ref.backbone is None
    crops = np.random.default_rng(0).integers(0, 256, (2, 112, 96, 3), dtype=np.uint8)
    out = ref.embedder()(crops)
    with torch.no_grad():
        want = net(torch.from_numpy((crops.astype(np.float32).transpose(0, 3, 1, 2) - 127.5) / 128)).numpy()
    cos = (out * want).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.9999
    with pytest.raises(FacekdError, match="needs a PyTorch model"):
        ref.require_backbone("export")


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FacekdError, match="unknown model 'nosuchnet'; known: .*mobilefacenet"):
        resolve("nosuchnet")
    with pytest.raises(FacekdError, match="missing.pt: no such file"):
        resolve(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip")
    with pytest.raises(FacekdError, match="bad.pt: cannot load checkpoint"):
        resolve(bad)
    ckpt = tmp_path / "c.pt"
    _checkpoint(ckpt, ["a"])
    with pytest.raises(FacekdError, match="is a checkpoint; --weights is for a registered backbone"):
        resolve(ckpt, "x.pt")
    with pytest.raises(FacekdError, match="nothere.pt: weights file not found"):
        resolve("mobilefacenet", "nothere.pt")


def test_a_registered_source_plugs_in_once():
    name = "test_constant_source"

    class Constant:
        name, pre, batch_size, concurrency = "const", Preprocessing(), 4, 1

        def session(self):
            import contextlib

            return contextlib.nullcontext()

        def __call__(self, batch):
            return np.ones((len(batch), 3), np.float32)

    if name not in MODEL_SOURCES:
        MODEL_SOURCES.register(name)(lambda weights, allow_download: ResolvedModel(
            "const", Preprocessing(), embedder_factory=lambda device: Constant()))
    ref = resolve(name)
    assert ref.embedder()(np.zeros((2, 112, 96, 3), np.uint8)).shape == (2, 3)
    assert ref.key == "const:random"


def test_checkpoint_config_roundtrip_is_plain_data(tmp_path):
    """What the trainer stores under config reads back with the safe loader."""
    from facekd.train.config import TrainConfig
    from facekd.train.checkpoint import load_checkpoint

    path = tmp_path / "cfg.pt"
    save_checkpoint(path, {"config": to_dict(TrainConfig())})
    assert load_checkpoint(path)["config"] == to_dict(TrainConfig())


def test_the_onnx_photo_path_imports_no_torch():
    """`facekd verify` of an .onnx model: the hub, the weights manifest (YuNet's file) and
    the detectors load without torch (importing it costs seconds per call)."""
    import subprocess
    import sys

    code = ("import sys, facekd.hub, facekd.weights, facekd.align.detector, facekd.deploy.photos, facekd.cli; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]
