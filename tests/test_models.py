from pathlib import Path

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


def test_resnet27_matches_wen_et_al():
    """Counted by hand from SPEC section 2: conv and fc weights + biases 27,535,808, PReLU
    slopes 7,264 (one per channel after each conv); about 2.1 GMAC at 112x96. That is
    ``norm="none"``; the default adds batch norm, which takes the place of the 7,264 conv
    biases and the 512 fc biases with 2 parameters per channel (14,528) and 1,024 for the
    embedding's batch norm."""
    from facekd.models.profile import count_macs, count_params

    plain = build_backbone("resnet27", norm="none")
    assert count_params(plain) == 27_535_808 + 7_264
    assert count_macs(plain, (112, 96)) == pytest.approx(2.11e9, rel=0.01)
    assert plain.fc5.in_features == 512 * 5 * 4  # 112x96 -> 5x4 after four no-pad convs and pools
    assert count_params(build_backbone("resnet27")) == 27_535_808 - 7_264 - 512 + 14_528 + 1_024 + 7_264


@pytest.mark.parametrize("norm", ["bn", "none"])
def test_face_resnet_residual_units_start_as_the_identity(norm):
    from facekd.models.resnet_face import ResidualUnit

    units = [m for m in build_backbone("resnet27_c10", norm=norm).eval().modules() if isinstance(m, ResidualUnit)]
    assert len(units) == 11
    for m in units:
        y = torch.randn(2, m.conv1.in_channels, 7, 6)
        assert torch.equal(m(y), y)


def test_face_resnet_refuses_an_unknown_norm():
    with pytest.raises(FacekdError, match="backbone_args.norm must be one of 'bn', 'none', not 'group'"):
        build_backbone("resnet27_c10", norm="group")


def test_face_resnet_gives_different_faces_different_embeddings():
    """With PyTorch's default init and no batch norm, unrelated random inputs got embeddings
    at cosine 0.99 (the fc bias dominated), and the teacher did not learn (58.7% on LFW
    after 40 GPU epochs). Batch norm on the embedding centres it across the batch."""
    torch.manual_seed(0)
    model = build_backbone("resnet27_c10").train()
    e = torch.nn.functional.normalize(model(torch.randn(16, 3, 112, 96)))
    off_diagonal = (e @ e.T)[~torch.eye(16, dtype=torch.bool)]
    assert off_diagonal.abs().mean() < 0.2


def test_student5_size():
    """Five 3x3 convs 3-32-64-128-256-512 (1,567,584 weights, 1,984 BN, 992 PReLU) and a
    4608 -> 512 embedding (2,359,296) with batch norm (1,024)."""
    from facekd.models.profile import count_params

    assert count_params(build_backbone("student5")) == 1_567_584 + 1_984 + 992 + 2_359_296 + 1_024


def test_thinner_students_are_the_sizes_their_names_promise():
    from facekd.models.profile import count_params

    teacher = count_params(build_backbone("resnet27"))
    s5 = count_params(build_backbone("student5"))
    assert 0.2 < count_params(build_backbone("resnet27_c14")) / teacher < 0.3  # about 1/4
    assert abs(count_params(build_backbone("resnet27_c10")) / s5 - 1) < 0.1  # about student5


def test_models_json_lists_every_backbone(capsys):
    import json

    from facekd.cli import main

    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(BACKBONES.names()) <= set(rows)  # plus the external model sources
    assert rows["mobilefacenet"]["params"] == 999_552 and rows["mobilefacenet"]["embedding_dim"] == 128
    assert rows["resnet27"]["input_size"] == [112, 96] and rows["inception_resnet_v1"]["input_size"] == [112, 112]
    assert all(rows[n]["macs"] > 0 for n in BACKBONES.names())
    detectors = {n for n, r in rows.items() if r.get("kind") == "face_detector"}
    assert {"mtcnn", "yunet", "yunet_mtcnn"} <= detectors and "mobilefacenet" not in detectors
    assert "MTCNN" in rows["yunet_mtcnn"]["doc"]  # its docstring, not an empty line
    from facekd.weights import manifest, onnx_models

    students = {n: r for n, r in rows.items() if r.get("kind") == "shipped_student"}
    assert set(students) == set(onnx_models()) and students
    for n, r in students.items():  # the command that made each, as the manifest has it
        assert r["reproduce"] == manifest()[n]["reproduce"] and "facekd " in r["reproduce"]
        assert (Path(__file__).resolve().parent.parent / r["file"]).is_file()


def test_models_table_names_each_shipped_student_on_one_short_line(capsys):
    """The table points at the manifest for the commands (hundreds of characters each)
    instead of printing them inline."""
    from facekd.cli import main
    from facekd.weights import onnx_models

    assert main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    for name in onnx_models():
        line = next(x for x in out if x.strip().startswith(name + " "))
        assert len(line) < 160 and f"weights/{name}" in line, line


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_factory_keeps_the_registry_contract(name):
    """Every factory carries its facts and rejects an argument it does not take with a
    message naming the backbone (what ``backbone_args`` in a config relies on)."""
    factory = BACKBONES.get(name)
    assert factory.cfg is backbone_cfg(name) and factory.cfg.name == name
    with pytest.raises(FacekdError, match=rf"backbone '{name}': .*'not_an_argument'.*backbone_args it takes"):
        build_backbone(name, not_an_argument=1)


@pytest.mark.parametrize("name, args, dim", [("mobilefacenet", {"embedding_dim": 64}, 64),
                                             ("mobilenet_v2", {"embedding_dim": 96, "width_mult": 0.5}, 96),
                                             ("resnet27_c10", {"embedding_dim": 128}, 128)])
def test_backbone_args_reach_every_family(name, args, dim):
    model = build_backbone(name, **args).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, *model.cfg.input_size))
    assert out.shape == (1, dim) and model.cfg.embedding_dim == dim
    if "width_mult" in args:  # half the width: fewer parameters than the default
        assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in build_backbone(name).parameters())
