import pytest
import torch

from facekd.errors import FacekdError
from facekd.models import BACKBONES, backbone_cfg, build_backbone, load_backbone_weights


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_shapes_and_gradients(name):
    cfg = backbone_cfg(name)
    model = build_backbone(name).train()
    x = torch.randn(2, 3, *cfg.input_size)
    out = model(x)
    assert out.shape == (2, cfg.embedding_dim) and torch.isfinite(out).all()
    out.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_mobilefacenet_parameter_count():
    # The published model: 999,552 trainable parameters (shared/weights/README.md).
    assert sum(p.numel() for p in build_backbone("mobilefacenet").parameters()) == 999_552


def test_reference_weights_load_through_the_key_map(mobilefacenet_weights):
    model = load_backbone_weights(build_backbone("mobilefacenet"), mobilefacenet_weights).eval()
    sd = torch.load(mobilefacenet_weights, weights_only=True, map_location="cpu")["net_state_dict"]
    torch.testing.assert_close(model.embed.bn.running_var, sd["linear1.bn.running_var"])
    torch.testing.assert_close(model.blocks[14].project.conv.weight, sd["blocks.14.conv.6.weight"])


def test_bad_weight_files_are_named(tmp_path):
    model = build_backbone("mobilefacenet")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(FacekdError, match="garbage.ckpt: cannot load weights"):
        load_backbone_weights(model, garbage)
    wrong = tmp_path / "wrong.ckpt"
    torch.save({"state_dict": {"conv.weight": torch.zeros(1)}}, wrong)
    with pytest.raises(FacekdError, match=r"wrong.ckpt: does not fit backbone mobilefacenet: \d+ missing"):
        load_backbone_weights(model, wrong)
    with pytest.raises(FacekdError, match="weights file not found"):
        load_backbone_weights(model, tmp_path / "none.ckpt")


def test_unpickling_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.ckpt"
    torch.save({"net_state_dict": Evil()}, p)
    with pytest.raises(FacekdError, match="evil.ckpt: cannot load weights"):
        load_backbone_weights(build_backbone("mobilefacenet"), p)
