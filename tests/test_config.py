"""Typed configs: unknown keys and wrong types are errors that name them; overrides parse as YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from facekd.config import apply_overrides, from_dict, load_config, to_dict
from facekd.errors import FacekdError
from facekd.train.config import TrainConfig

REPO = Path(__file__).resolve().parent.parent


def test_defaults_fill_what_a_file_omits(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim: {lr: 0.02}\ntrain: {epochs: 3}\n")
    cfg = load_config(TrainConfig, f)
    assert cfg.optim.lr == 0.02 and cfg.train.epochs == 3
    assert cfg.optim.momentum == 0.9 and cfg.model.backbone == "student5"


def test_unknown_key_names_file_and_section(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim: {lrr: 0.02}\n")
    with pytest.raises(FacekdError, match=r"c\.yaml: optim: unknown key lrr \(known: .*lr"):
        load_config(TrainConfig, f)


def test_wrong_type_is_an_error(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: {epochs: ten}\n")
    with pytest.raises(FacekdError, match=r"train\.epochs: expected int, got 'ten'"):
        load_config(TrainConfig, f)
    f.write_text("data: {loader: gpu}\n")
    with pytest.raises(FacekdError, match="data.loader: 'gpu' is not one of"):
        load_config(TrainConfig, f)


def test_ints_are_accepted_for_floats_and_yaml_cannot_run_code(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim: {lr: 1}\n")
    assert load_config(TrainConfig, f).optim.lr == 1.0
    f.write_text("optim: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(FacekdError, match="not valid YAML"):
        load_config(TrainConfig, f)


def test_overrides_parse_values_as_yaml():
    raw = apply_overrides({"optim": {"lr": 0.1}}, ["optim.lr=0.05", "data.train=[a, b]", "train.compile=true"])
    cfg = from_dict(TrainConfig, raw)
    assert cfg.optim.lr == 0.05 and cfg.data.train == ["a", "b"] and cfg.train.compile is True
    with pytest.raises(FacekdError, match="expected key=value"):
        apply_overrides({}, ["optim.lr"])


def test_round_trip_through_to_dict():
    cfg = from_dict(TrainConfig, {"schedule": {"name": "step", "milestones": [0.5]}})
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    from facekd.models.heads import HEADS
    from facekd.models import BACKBONES
    from facekd.train.optim import OPTIMIZERS, SCHEDULES

    from facekd.config import read_config_tree
    from facekd.distill.config import DistillConfig
    from facekd.distill.losses import DISTILL_LOSSES

    from facekd.multiexit.config import MultiExitConfig
    from facekd.prune.config import PruneConfig

    raw = read_config_tree(path)
    if path.parent.name == "detect":  # facekd distill-detector's configs
        from facekd.detect.losses import DET_TERMS
        from facekd.detect.model import DETECTOR_NETS
        from facekd.detect.config import DetectorRunCfg

        det = load_config(DetectorRunCfg, path)
        assert det.model in DETECTOR_NETS and all(t.name in DET_TERMS for t in det.terms)
        return
    # The schema a config is read with, by the section only it has.
    schema = next((c for key, c in (("prune", PruneConfig), ("exits", MultiExitConfig), ("teacher", DistillConfig),
                                    ("distill", DistillConfig)) if key in raw), TrainConfig)
    cfg = load_config(schema, path)
    assert cfg.model.backbone in BACKBONES and cfg.model.head in HEADS
    if issubclass(schema, DistillConfig):
        assert cfg.distill.terms and all(t.name in DISTILL_LOSSES for t in cfg.distill.terms)
    assert cfg.optim.name in OPTIMIZERS and cfg.schedule.name in SCHEDULES


def test_extends_merges_sections_and_refuses_cycles(tmp_path):
    (tmp_path / "base.yaml").write_text("optim: {lr: 0.1, momentum: 0.8}\ntrain: {epochs: 40}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\noptim: {lr: 0.02}\n")
    cfg = load_config(TrainConfig, tmp_path / "child.yaml")
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.train.epochs) == (0.02, 0.8, 40)
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(FacekdError, match="extends itself"):
        load_config(TrainConfig, tmp_path / "a.yaml")


def test_an_exponent_without_a_dot_is_a_float_where_a_float_is_expected(tmp_path):
    """PyYAML reads 5e-4 as the text '5e-4' (YAML 1.1 wants 5.0e-4); `--set
    train.lr=5e-4` used to stop with "expected float". Where a float is expected such a
    text is the number; other text still is an error, and a text field keeps its text."""
    raw = apply_overrides({}, ["optim.lr=5e-4", "optim.weight_decay=1E-3", "optim.momentum=+.5e0"])
    assert raw["optim"]["lr"] == "5e-4"  # what PyYAML gives
    cfg = from_dict(TrainConfig, raw)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.momentum) == (0.0005, 0.001, 0.5)
    for bad in ("5e", "e-4", "5e-4x", "fast"):
        with pytest.raises(FacekdError, match=r"optim\.lr: expected float"):
            from_dict(TrainConfig, apply_overrides({}, [f"optim.lr={bad}"]))
    assert from_dict(TrainConfig, apply_overrides({}, ["model.backbone=1e3"])).model.backbone == "1e3"
