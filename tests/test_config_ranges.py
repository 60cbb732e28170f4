"""Config values are checked against ranges kept as data on the config fields
(issue 30): a value out of range is refused naming the file, the key and the range."""

from __future__ import annotations

import dataclasses
import re

import pytest

from facekd.config import RANGE, Range, load_config
from facekd.errors import FacekdError
from facekd.distill.config import DistillConfig
from facekd.multiexit.config import MultiExitConfig
from facekd.prune.config import PruneConfig
from facekd.train.config import TrainConfig


def _write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_negative_epochs_are_refused_naming_file_key_and_range(tmp_path):
    path = _write(tmp_path, "train:\n  epochs: -3\n")
    with pytest.raises(FacekdError) as err:
        load_config(TrainConfig, path)
    msg = str(err.value)
    assert str(path) in msg and "train.epochs" in msg and "-3" in msg and "[1, inf)" in msg


@pytest.mark.parametrize("text, key, allowed", [
    ("train: {batch_size: 0}", "train.batch_size", "[1, inf)"),
    ("optim: {lr: 0}", "optim.lr", "(0, inf)"),
    ("optim: {lr: -0.1}", "optim.lr", "(0, inf)"),
    ("optim: {lr: .nan}", "optim.lr", "(0, inf)"),
    ("optim: {momentum: 1.0}", "optim.momentum", "[0, 1)"),
    ("schedule: {min_lr_ratio: 1.5}", "schedule.min_lr_ratio", "[0, 1]"),
    ("data: {train: []}", "data.train", "at least 1 item"),
    ("eval: {every: -1}", "eval.every", "[0, inf)"),
])
def test_out_of_range_values(tmp_path, text, key, allowed):
    path = _write(tmp_path, text + "\n")
    with pytest.raises(FacekdError, match=key.replace(".", r"\.")) as err:
        load_config(TrainConfig, path)
    assert allowed in str(err.value) and str(path) in str(err.value)


def test_set_overrides_are_checked_too(tmp_path):
    path = _write(tmp_path, "train: {epochs: 2}\n")
    with pytest.raises(FacekdError, match=r"train\.epochs: 0 is out of range"):
        load_config(TrainConfig, path, ["train.epochs=0"])


@pytest.mark.parametrize("text, key", [("prune: {ratio: 1.0}", "prune.ratio"), ("prune: {steps: 0}", "prune.steps")])
def test_prune_ranges(tmp_path, text, key):
    with pytest.raises(FacekdError, match=key.replace(".", r"\.")):
        load_config(PruneConfig, _write(tmp_path, text + "\n"))


def test_values_inside_the_range_and_the_edges_are_accepted(tmp_path):
    path = _write(tmp_path, "train: {epochs: 1, batch_size: 1}\noptim: {lr: 1.0e-9, momentum: 0}\n"
                            "schedule: {min_lr_ratio: 1.0, warmup_epochs: 0}\neval: {every: 0}\n")
    cfg = load_config(TrainConfig, path)
    assert (cfg.train.epochs, cfg.optim.momentum, cfg.schedule.min_lr_ratio) == (1, 0.0, 1.0)


def test_every_default_is_inside_its_own_range():
    cfg = TrainConfig()
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        for f in dataclasses.fields(value):
            rng: Range | None = f.metadata.get(RANGE)
            if rng is not None:
                assert rng.allows(getattr(value, f.name)), f"{section.name}.{f.name}"


def test_range_text_and_edges():
    assert str(Range(0, 1, high_open=True)) == "[0, 1)" and str(Range(0, low_open=True)) == "(0, inf)"
    assert Range(0, 1, high_open=True).allows(0) and not Range(0, 1, high_open=True).allows(1)
    assert not Range(1).allows(0) and Range(1).allows(None) is True


@pytest.mark.parametrize("cls, text, key", [
    (TrainConfig, "data: {augment: {flip: 1.5}}", "data.augment.flip"),
    (MultiExitConfig, "exits: {tau_start: 0}", "exits.tau_start"),
    (MultiExitConfig, "exits: {points: []}", "exits.points"),
    (DistillConfig, "teacher: {classifier_epochs: -1}", "teacher.classifier_epochs"),
])
def test_ranges_of_the_other_configs(tmp_path, cls, text, key):
    with pytest.raises(FacekdError, match=key.replace(".", r"\.") + ": .* is out of range"):
        load_config(cls, _write(tmp_path, text + "\n"))


@pytest.mark.parametrize("term, key, allowed", [
    ("{name: soft, tau: -1}", "tau", "(0, inf)"),
    ("{name: soft, weight: -2}", "weight", "[0, inf)"),
    ("{name: hinton, alpha: 1.5}", "alpha", "[0, 1]"),
    ("{name: noisy_teacher, p: 2}", "p", "[0, 1]"),
    ("{name: label_smoothing, epsilon: 1.0}", "epsilon", "[0, 1)"),
])
def test_a_distillation_term_out_of_range_is_named(tmp_path, term, key, allowed):
    path = _write(tmp_path, f"distill:\n  terms: [{term}]\n", "c.yaml")
    with pytest.raises(FacekdError, match=rf"c\.yaml: distill\.terms\[0\]\.{key}: .* out of range \(allowed: {re.escape(allowed)}\)"):
        load_config(DistillConfig, path)
