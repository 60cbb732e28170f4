"""The results record (one dataclass, old files readable), how a run was trained carried
from the trainer into the record and the report, and table rows composed from a protocol
base and names (the same configs as the one-key files they replaced)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facekd.config import from_dict, load_config, read_config_tree
from facekd.distill.config import DistillConfig
from facekd.errors import FacekdError
from facekd.experiments import Protocol, Runner, protocols, write_report
from facekd.experiments.report import how_trained
from facekd.experiments.results import Result, append_result, read_results
from facekd.experiments.tables import READY_TEACHERS, TABLES, teacher_section
from facekd.models.heads import build_head
from facekd.multiexit.config import MultiExitConfig
from facekd.prune.config import PruneConfig
from facekd.train.config import TrainConfig
from facekd.train.loop import build_objective, fit

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"

# A record as the runner wrote it before the record said how it was trained
# (docs/results/facekd-dev-cpu.jsonl, Table A's first row).
OLD = {"protocol": "facekd-dev-cpu", "table": "A", "row": "Hard", "seed": 0, "student": "student5", "lfw_acc": 75.3,
       "lfw_std": 1.7, "lfw_pairs": 6000, "flip": True, "epochs": 2, "params": 3933376, "mb": 15.0, "cpu_ms": 36.7,
       "seconds": 1254.0, "run": "runs/paper/A-Hard-seed0", "machine": "vm",
       "cpu": "AMD EPYC, 2 cores, torch CPU capability AVX2, no native bf16", "device": "cpu",
       "torch": "2.14.1+cu130", "finished": "2026-11-26 01:11:34"}


def test_a_record_round_trips_through_the_results_file(tmp_path):
    rec = Result(protocol="p", row="Hard", lfw_acc=85.25, lfw_std=0.5, table="A", seed=1, student="student5",
                 lfw_pairs=6000, flip=True, epochs=2, params=10, mb=0.5, cpu_ms=3.0, seconds=61.5, run="r",
                 overrides=["optim.lr=0.05"], terms=[{"name": "hard", "weight": 1.0}], note="n", precision="bf16",
                 channels_last=True, compile=False, loader="memory", device="cpu", gpu=None, cpu="Xeon", machine="m",
                 torch="2.x", finished="2026-12-05 21:00:00")
    path = tmp_path / "r.jsonl"
    append_result(path, rec)
    append_result(path, dataclasses.replace(rec, seed=2))
    with path.open("a") as f:
        f.write('{"protocol": "p", "row": "torn by a ki')
    assert read_results(path) == [rec, dataclasses.replace(rec, seed=2)]


def test_regression_a_record_appended_after_a_torn_line_is_read(tmp_path):
    """A kill that tore the last line used to take the next record with it: appended to
    the torn line, both were one undecodable line (found reading the runner for issue 30's kill sweep)."""
    rec = Result(protocol="p", row="Hard", lfw_acc=85.25, lfw_std=0.5, table="A", seed=0)
    path = tmp_path / "r.jsonl"
    append_result(path, rec)
    with path.open("a") as f:
        f.write('{"protocol": "p", "row": "torn by a ki')
    append_result(path, dataclasses.replace(rec, seed=1))
    append_result(path, dataclasses.replace(rec, seed=2))
    assert read_results(path) == [rec, dataclasses.replace(rec, seed=1), dataclasses.replace(rec, seed=2)]
    assert path.read_text().count("\n") == 4  # one line each, the torn one ended


def test_an_unknown_key_or_a_wrong_type_is_an_error_naming_the_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(OLD) + "\n" + json.dumps({**OLD, "precisoin": "bf16"}) + "\n")
    with pytest.raises(FacekdError, match=r"r\.jsonl:2: unknown key precisoin"):
        read_results(path)
    path.write_text(json.dumps({**OLD, "lfw_acc": "high"}) + "\n")
    with pytest.raises(FacekdError, match=r"r\.jsonl:1.*lfw_acc: expected float"):
        read_results(path)


def test_an_old_record_reads_with_the_new_fields_as_none_and_the_report_says_not_recorded(tmp_path):
    new = {**OLD, "row": "Soft", "precision": "fp32", "channels_last": False, "compile": False, "loader": "memory",
           "cpu": "Intel Xeon, 2 cores, torch CPU capability AVX512, native bf16 (avx512_bf16, amx_bf16)"}
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(OLD) + "\n" + json.dumps(new) + "\n")
    old, _ = read_results(path)
    assert (old.precision, old.channels_last, old.compile, old.loader, old.gpu) == (None,) * 5
    assert old.lfw_acc == 75.3 and old.cpu == OLD["cpu"]
    text = write_report(path, tmp_path / "R.md", "facekd-dev-cpu", plot=False)
    legend = text.split("## How the runs were trained")[1].split("## ")[0]
    assert ("- **a**: settings not recorded; AMD EPYC, 2 cores, torch CPU capability AVX2, no native bf16; "
            "torch 2.14.1+cu130") in legend
    assert "- **b**: fp32, contiguous, eager, memory loader; Intel Xeon" in legend
    assert "| Hard | student5 | 75.30 ± 1.70¹ | 1 |" in text and text.split("| Hard | student5 |")[1].split("\n")[0].endswith("| a |")
    assert text.split("| Soft | student5 |")[1].split("\n")[0].endswith("| b |")


def test_what_a_records_note_says_is_used_and_marked_as_such():
    rec = Result(**{**OLD, "device": "cuda", "note": "Device call 4 (2026-11-26, H100, bf16, eager, LFW at epoch 40)"})
    assert how_trained(rec).startswith("bf16 autocast (per its note), eager (per its note); NVIDIA H100 (per its note);")
    rec = Result(**{**OLD, "device": "cuda", "note": "train.compile=false (short device runs)"})
    assert how_trained(rec).startswith("precision not recorded, eager (per its note); a CUDA GPU, model not recorded;")


def _fake_crops(root: Path, identities: int = 4, per: int = 6) -> Path:
    """112x96 noise images in identity folders: an aligned folder (by its crop size)."""
    rng = np.random.default_rng(0)
    for i in range(identities):
        (root / f"id{i}").mkdir(parents=True)
        for j in range(per):
            Image.fromarray(rng.integers(0, 255, (112, 96, 3), dtype=np.uint8)).save(root / f"id{i}" / f"{j}.jpg")
    return root


@pytest.mark.parametrize("pin", ["fp32", "bf16"])
def test_a_protocol_pin_decides_the_precision_the_trainer_runs_with(tmp_path, pin):
    crops = _fake_crops(tmp_path / "crops")
    base = tmp_path / "base.yaml"
    base.write_text(
        "model: {head: softmax}\n"
        f"data: {{train: ['{crops}'], workers: 1, loader: memory}}\n"
        f"train: {{epochs: 1, batch_size: 8, device: cpu, threads: 1, precision: {pin}, channels_last: auto, compile: auto}}\n"
        "eval: {every: 0}\n")
    proto = Protocol("pinned", str(base), str(base), shrink={"student5": {"widths": [8, 8, 8, 8, 8], "embedding_dim": 16}})
    runner = Runner(tmp_path, proto, tmp_path / "runs", tmp_path / "r.jsonl")
    row = next(r for r in TABLES["B"] if r.name == "student5 alone")
    raw = runner.row_config(row, seed=0)
    seen: list = []

    def objective(cfg, data, device, say):  # the trainer's own objective, watched from inside
        obj = build_objective(cfg, len(data.identities))
        obj.backbone.register_forward_pre_hook(
            lambda m, a: seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None))
        return obj

    metrics = fit(from_dict(TrainConfig, raw), tmp_path / "run", say=lambda m: None, make_objective=objective)
    assert seen and set(seen) == {torch.bfloat16 if pin == "bf16" else None}  # what the forward ran under
    assert metrics["trained_with"]["precision"] == pin and metrics["trained_with"]["loader"] == "memory"
    assert metrics["trained_with"]["torch"] == str(torch.__version__)
    rec = runner._record("B", row.name, row.student, 0, raw, {**metrics, "lfw_acc": 50.0, "lfw_std": 1.0},
                         tmp_path / "run", 0.0)
    assert (rec.precision, rec.loader, rec.channels_last, rec.compile) == (pin, "memory", False, False)
    assert rec.device == "cpu" and rec.gpu is None and "torch CPU capability" in rec.cpu


def _tiny_runner(tmp_path: Path) -> Runner:
    crops = _fake_crops(tmp_path / "crops")
    base = tmp_path / "base.yaml"
    base.write_text(
        "model: {head: softmax}\n"
        f"data: {{train: ['{crops}'], workers: 1, loader: memory}}\n"
        "train: {epochs: 1, batch_size: 8, device: cpu, threads: 1, precision: fp32, channels_last: false, "
        "compile: false}\n"
        "eval: {every: 0}\n")
    proto = Protocol("tiny", str(base), str(base), shrink={"student5": {"widths": [8, 8, 8, 8, 8], "embedding_dim": 16}})
    return Runner(tmp_path, proto, tmp_path / "runs", tmp_path / "r.jsonl", say=lambda m: None)


def test_regression_the_runner_resumes_a_run_killed_before_its_first_checkpoint(tmp_path):
    """A kill before a row's first checkpoint leaves its log only; the next command refused
    the run folder ("already holds a run") instead of training it (prune's fault, found
    by issue 30's kill sweep, looked for in the runner)."""
    runner = _tiny_runner(tmp_path)
    row = next(r for r in TABLES["B"] if r.name == "student5 alone")
    run = tmp_path / "runs" / "killed"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("")
    metrics = runner._fit(runner.row_config(row, seed=0), run, distill=False)
    assert metrics["epoch"] == 1 and (run / "checkpoints" / "last.pt").is_file()


def test_regression_a_prerequisite_killed_before_its_record_gets_it_from_the_next_command(tmp_path):
    """A kill after a prerequisite teacher's last checkpoint and before its results line:
    the next command found the run done and never wrote the line (found reading the
    runner for issue 30's kill sweep). It now writes it from the checkpoint, once, with
    the run's time unknown."""
    from facekd.train.checkpoint import CHECKPOINT, save_checkpoint

    runner = _tiny_runner(tmp_path)
    last = tmp_path / "runs" / "student5_alone-seed0" / CHECKPOINT
    save_checkpoint(last, {"epoch": 1, "metrics": {"epoch": 1, "lfw_acc": 61.5, "lfw_std": 2.0, "lfw_pairs": 20}})
    assert runner.prerequisite("student5_alone", 0) == last
    runner._prereq_ckpt.clear()
    runner.prerequisite("student5_alone", 0)
    (rec,) = read_results(tmp_path / "r.jsonl")
    assert (rec.table, rec.row, rec.seed, rec.lfw_acc, rec.epochs, rec.seconds) == ("teachers", "student5_alone", 0,
                                                                                    61.5, 1, None)


# The configs the composed rows replaced, as they were (their ``extends`` made absolute).
OLD_STUDENT = "extends: {base}\nmodel: {{backbone: {name}, head: cosface, head_args: {{scale: 64.0, margin: 0.35}}}}\n"
OLD_DISTILL = {
    "dlib_resnet": "teacher: {model: dlib_resnet, crops: dev_train_dlib150.fkpack}\n",
    "facenet_casia": "teacher: {model: facenet_casia, crops: dev_train_facenet160.fkpack}\n",
    "ensemble": ("teacher:\n  members:\n    - {model: facenet_casia, crops: dev_train_facenet160.fkpack}\n"
                 "    - {model: dlib_resnet, crops: dev_train_dlib150.fkpack}\n"
                 "    - {model: mobilefacenet, weights: mobilefacenet_casia}\n"),
}


def _old(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"old{len(list(tmp_path.glob('old*.yaml')))}.yaml"
    path.write_text(text)
    return path


def _same_but_head_args(old: TrainConfig, new: TrainConfig) -> None:
    """Equal configs except that the old file spelled out CosFace's defaults (s=64, m=0.35)."""
    assert dataclasses.replace(old, model=dataclasses.replace(old.model, head_args={})) == new
    a, b = (build_head(c.model.head, 8, 3, **c.model.head_args) for c in (old, new))
    assert (a.scale, a.margin) == (b.scale, b.margin) == (64.0, 0.35)


@pytest.mark.parametrize("student", ["resnet27_c10", "mobilenet_v2", "student5"])
def test_a_table_b_row_is_the_protocol_base_with_its_student_named(tmp_path, student):
    proto = protocols(REPO)["facekd-dev"]
    row = next(r for r in TABLES["B"] if r.name == f"{student} alone")
    new = from_dict(TrainConfig, Runner(REPO, proto, tmp_path, tmp_path / "r.jsonl").row_config(row, seed=0))
    old = load_config(TrainConfig, _old(tmp_path, OLD_STUDENT.format(base=CONFIGS / "base/dev.yaml", name=student)))
    _same_but_head_args(old, new)


def test_the_teacher_prerequisite_is_the_dev_base_with_resnet27(tmp_path):
    runner = Runner(REPO, protocols(REPO)["facekd-dev"], tmp_path, tmp_path / "r.jsonl")
    new = from_dict(TrainConfig, runner._raw(runner.protocol.teacher, "resnet27", 0))
    old = load_config(TrainConfig, _old(tmp_path, OLD_STUDENT.format(base=CONFIGS / "base/dev.yaml", name="resnet27")))
    _same_but_head_args(old, new)


@pytest.mark.parametrize("name", sorted(OLD_DISTILL))
def test_a_ready_teacher_named_on_the_cpu_recipe_is_the_old_student5_from_config(tmp_path, name):
    raw = read_config_tree(CONFIGS / "distill/cpu_recipe.yaml")
    raw["teacher"] = teacher_section(READY_TEACHERS[name])
    new = from_dict(DistillConfig, raw)
    old = load_config(DistillConfig, _old(tmp_path, f"extends: {CONFIGS / 'distill/cpu_recipe.yaml'}\n{OLD_DISTILL[name]}"))
    if name == "ensemble":  # the deleted file listed the members in another order than the runner's list
        assert sorted(m.model for m in old.teacher.members) == sorted(m.model for m in new.teacher.members)
        old = dataclasses.replace(old, teacher=dataclasses.replace(old.teacher, members=new.teacher.members))
    assert old == new


def test_the_multiexit_and_prune_controls_are_their_base_with_one_set(tmp_path):
    nokl = load_config(MultiExitConfig, CONFIGS / "multiexit/resnet37_c10_cpu.yaml", ["exits.kl_weight=0"])
    old = load_config(MultiExitConfig, _old(tmp_path, f"extends: {CONFIGS / 'multiexit/resnet37_c10_cpu.yaml'}\n"
                                                      "exits: {kl_weight: 0.0}\n"))
    assert nokl == old and nokl.exits.kl_weight == 0.0
    # prune/student5_cpu.yaml extended prune/student5_dev.yaml (the MobileFaceNet recipe with
    # a student5 checkpoint as the source); it now states those two keys itself.
    mid = _old(tmp_path, f"extends: {CONFIGS / 'prune/mobilefacenet_casia_dev.yaml'}\n"
                         "prune: {source: runs/student5_dev/checkpoints/best.pt, weights: null}\n")
    old = _old(tmp_path, f"extends: {mid}\nprune: {{steps: 1, importance_batches: 8}}\n"
                         "schedule: {warmup_epochs: 0.1}\ntrain: {epochs: 1, batch_size: 128}\n"
                         "eval: {every: 1, flip: false}\n")
    assert load_config(PruneConfig, CONFIGS / "prune/student5_cpu.yaml") == load_config(PruneConfig, old)


def test_a_run_another_process_holds_is_skipped_and_counted_as_left(tmp_path):
    """Several processes share one suite: a run whose lock another process holds (here a
    child process, as a second `reproduce_paper.py` would) is skipped, not trained twice,
    and counted among the runs left; once released, the next command trains it."""
    import subprocess
    import sys

    runner = _tiny_runner(tmp_path)
    row = next(r for r in TABLES["B"] if r.name == "student5 alone")
    lock = str(runner.run_dir(row, 0)) + ".lock"
    (tmp_path / "runs").mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from filelock import FileLock; l = FileLock(sys.argv[1]); l.acquire(); "
         "print('held', flush=True); sys.stdin.read()", lock],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert runner.run(["B"], rows=["student5 alone"]) == 1
        assert not runner.run_dir(row, 0).exists() and read_results(tmp_path / "r.jsonl") == []
    finally:
        holder.communicate("")
    # Released (its process ended): this command takes it (the tiny protocol has no LFW
    # evaluation, so the finished run's record is refused, after training).
    with pytest.raises(FacekdError, match="no LFW result"):
        runner.run(["B"], rows=["student5 alone"])
    assert (runner.run_dir(row, 0) / "checkpoints" / "last.pt").is_file()


def test_runs_left_are_counted_from_the_results_file_when_the_runner_returns(tmp_path):
    """Two processes share a suite: runs the other one finished after this one made its
    plan are not left. (The count once came from the stale plan: "11 runs left" with 9.)"""
    runner = _tiny_runner(tmp_path)
    runner.deadline = 0.0  # the budget is spent before the first run
    rows = ["student5 alone", "resnet27_c10 alone"]
    assert runner.run(["B"], rows=rows) == 2

    class _OtherFinishes(Runner):  # while this process plans, another one records resnet27_c10's run
        def plan(self, *args, **kwargs):
            todo = super().plan(*args, **kwargs)
            if not read_results(self.results):
                self._append(Result(protocol="tiny", table="B", row="resnet27_c10 alone", seed=0,
                                    lfw_acc=80.0, lfw_std=1.0))
            return todo

    other = _OtherFinishes(tmp_path, runner.protocol, tmp_path / "runs", tmp_path / "r.jsonl", say=lambda m: None)
    other.deadline = 0.0
    assert other.run(["B"], rows=rows) == 1


def test_a_record_carries_the_lfw_curve_its_run_logged(tmp_path):
    """The evaluations of the run's metrics.jsonl, by epoch (a torn line skipped, the
    step lines and the epochs without LFW left out), go into the record, so that the
    budget plot can draw LFW against epochs without the run folder."""
    from facekd.train.run_log import lfw_curve

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        '{"kind": "train", "epoch": 1, "step": 20, "loss": 8.1}\n'
        '{"kind": "epoch", "epoch": 1, "step": 111, "loss": 8.0}\n'
        '{"kind": "epoch", "epoch": 2, "step": 222, "loss": 6.4, "lfw_acc": 77.61666666, "lfw_std": 2.1}\n'
        '{"kind": "epoch", "epoch": 4, "step": 4\n'
        '{"kind": "epoch", "epoch": 4, "step": 444, "loss": 4.0, "lfw_acc": 82.0166666, "lfw_std": 2.2}\n')
    assert lfw_curve(run) == [[2, 77.6167], [4, 82.0167]]
    assert lfw_curve(tmp_path / "none") == []
    runner = _tiny_runner(tmp_path)
    row = next(r for r in TABLES["B"] if r.name == "student5 alone")
    rec = runner._record("B", row.name, row.student, 0, runner.row_config(row, 0),
                         {"epoch": 4, "lfw_acc": 82.0, "lfw_std": 2.2}, run, 1.0)
    again = read_results_line(rec)
    assert again.lfw_curve == [[2, 77.6167], [4, 82.0167]]


def read_results_line(rec: Result) -> Result:
    from facekd.experiments.results import parse_result

    return parse_result(json.loads(rec.to_json()))


def test_a_record_charges_a_resumed_run_its_epochs_not_the_gap(tmp_path):
    """work_seconds sums each epoch's training and LFW seconds from the run's log; an
    epoch taken again after a kill counts once (its last record), a torn line is skipped;
    the report's min/run reads it instead of the command's wall time, which here would
    include a 70-minute pause."""
    from facekd.experiments.report import run_minutes
    from facekd.train.run_log import work_seconds

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        '{"kind": "train", "epoch": 1, "step": 20, "loss": 8.1, "seconds": 999}\n'
        '{"kind": "epoch", "epoch": 1, "step": 111, "seconds": 100.0}\n'
        '{"kind": "epoch", "epoch": 2, "step": 222, "seconds": 50.0}\n'  # killed during its evaluation
        '{"kind": "epoch", "epoch": 2, "step": 222, "seconds": 110.0, "eval_seconds": 30.5}\n'
        '{"kind": "epoch", "epoch": 3, "st\n')
    assert work_seconds(run) == 240.5  # 100 + (110 + 30.5)
    assert work_seconds(tmp_path / "none") is None
    runner = _tiny_runner(tmp_path)
    row = next(r for r in TABLES["B"] if r.name == "student5 alone")
    rec = runner._record("B", row.name, row.student, 0, runner.row_config(row, 0),
                         {"epoch": 2, "lfw_acc": 82.0, "lfw_std": 2.2}, run, 1.0)
    again = read_results_line(rec)
    assert again.work_seconds == 240.5
    assert run_minutes(dataclasses.replace(again, seconds=4440.0)) == pytest.approx(240.5 / 60)
    # An older record (no work_seconds) falls back to the wall time; neither: not known.
    assert run_minutes(dataclasses.replace(again, seconds=600.0, work_seconds=None)) == 10.0
    assert run_minutes(dataclasses.replace(again, seconds=None, work_seconds=None)) is None
