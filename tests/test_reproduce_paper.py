"""The paper runner: its report's verdicts on constructed results, and the CPU smoke of every table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from facekd.errors import FacekdError
from facekd.experiments import TABLES, write_report

REPO = Path(__file__).resolve().parent.parent


def _rec(table, row, acc, seed=0, std=0.5, ms=2.0, student="student5", cpu="CPU one"):
    return {"protocol": "p", "table": table, "row": row, "seed": seed, "student": student, "lfw_acc": acc,
            "lfw_std": std, "params": 1_000_000, "mb": 3.8, "cpu_ms": ms, "cpu": cpu}


def test_report_gives_mean_and_std_over_seeds_and_judges_findings(tmp_path):
    recs = [
        _rec("teachers", "teacher", 88.0, ms=9.0, student="resnet27"),
        _rec("A", "Hard", 85.0), _rec("A", "Feature", 80.0), _rec("A", "Hard+Soft", 87.0),
        _rec("A", "Hard+Soft+Feature", 86.0), _rec("A", "Hard+Soft+FeatureNorm", 88.0, seed=0),
        _rec("A", "Hard+Soft+FeatureNorm", 90.0, seed=1),
        _rec("A", "Hard+Soft+FeatureNorm, teacher weighting", 89.5, ms=2.5),
    ]
    res = tmp_path / "r.jsonl"
    res.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"torn": \n')
    text = write_report(res, tmp_path / "R.md", "p")
    # Two seeds: mean 89.00, sample std sqrt(2) = 1.41, no ¹ mark.
    assert "| Hard+Soft+FeatureNorm | student5 | 89.00 ± 1.41 | 2 |" in text
    assert "| Hard | student5 | 85.00 ± 0.50¹ | 1 |" in text
    assert text.count("## Table ") == 4 and "| Soft | student5 | not run | 0 |" in text
    assert ("- Hard+Soft+Feature < Hard+Soft: confirmed: Hard+Soft+Feature 86.00 ± 0.50¹ vs Hard+Soft 87.00 ± 0.50¹."
            in text)
    # 89.00 ± 1.41 against the best other row, Hard+Soft 87.00: 2 points apart, more than 1.41.
    assert "- Hard+Soft+FeatureNorm is the best combination: confirmed" in text and "best other row, Hard+Soft" in text
    # 0.5 points apart with a spread of 1.41: the data cannot say.
    assert "- Teacher weighting helps: not distinguishable at this spread" in text
    # student5's latency is the median of its 7 runs' timings (six 2.0, one 2.5): 2.0 ms.
    assert "student5 89.50 ± 0.50¹ at 2.0 ms vs teacher 88.00 ± 0.50¹ at 9.0 ms (4.5x faster)" in text
    assert "- The student can match or beat the teacher at 3x speed: confirmed" in text
    assert (tmp_path / "r.png").stat().st_size > 10_000 and "![LFW accuracy against CPU latency](r.png)" in text


@pytest.mark.parametrize("student_acc, verdict", [(80.0, "refuted"), (88.0, "not measured yet")])
def test_no_speed_ratio_between_timings_on_different_cpus(tmp_path, student_acc, verdict):
    # The teacher timed on one CPU, every student run on another: 9.0 / 2.0 would read
    # "4.5x faster" but compares two machines. Accuracy alone still refutes (80 + 0.5 <
    # 88); a student level with the teacher (88 vs 88) cannot be confirmed without a ratio.
    recs = [_rec("teachers", "teacher", 88.0, ms=9.0, student="resnet27", cpu="CPU one"),
            _rec("A", "Hard+Soft+FeatureNorm", student_acc, cpu="CPU two"), _rec("A", "Hard", 70.0, cpu="CPU two")]
    res = tmp_path / "r.jsonl"
    res.write_text("".join(json.dumps(r) + "\n" for r in recs))
    text = write_report(res, tmp_path / "R.md", "p", plot=False)
    line = next(x for x in text.splitlines() if x.startswith("- The student can match or beat the teacher"))
    assert line.startswith(f"- The student can match or beat the teacher at 3x speed: {verdict}: ")
    assert "x faster" not in line
    assert "timed on different CPUs (student on CPU two; teacher on CPU one): no speed ratio." in line


def test_the_speed_ratio_uses_only_the_runs_timed_on_the_teachers_cpu(tmp_path):
    # Student runs on two CPUs (3.0 ms on the teacher's, 1.0 and 1.0 on another): the
    # median over all of them (1.0) against the teacher's 9.0 would say 9x; on the
    # teacher's CPU it is 9.0 / 3.0 = 3x.
    recs = [_rec("teachers", "teacher", 88.0, ms=9.0, student="resnet27", cpu="CPU one"),
            _rec("A", "Hard+Soft+FeatureNorm", 88.0, ms=3.0, cpu="CPU one"),
            _rec("A", "Hard", 70.0, ms=1.0, cpu="CPU two"), _rec("A", "Soft", 70.0, ms=1.0, cpu="CPU two")]
    res = tmp_path / "r.jsonl"
    res.write_text("".join(json.dumps(r) + "\n" for r in recs))
    text = write_report(res, tmp_path / "R.md", "p", plot=False)
    assert ("- The student can match or beat the teacher at 3x speed: confirmed: student5 88.00 ± 0.50¹ at 3.0 ms "
            "vs teacher 88.00 ± 0.50¹ at 9.0 ms (3.0x faster, on CPU one).") in text


def test_report_refutes_a_finding_the_data_contradict_and_lists_rows_it_cannot_order(tmp_path):
    recs = [
        _rec("A", "Hard+Soft+Feature", 90.0, std=0.3), _rec("A", "Hard+Soft", 88.0, std=0.3),
        _rec("A", "Hard", 85.0, seed=0), _rec("A", "Hard", 86.0, seed=1),  # mean 85.5, std 0.71
        _rec("A", "Soft", 85.2, seed=0), _rec("A", "Soft", 85.4, seed=1),  # mean 85.3: 0.2 from Hard
    ]
    res = tmp_path / "r.jsonl"
    res.write_text("".join(json.dumps(r) + "\n" for r in recs))
    text = write_report(res, tmp_path / "R.md", "p", plot=False)
    assert "- Hard+Soft+Feature < Hard+Soft: refuted: Hard+Soft+Feature 90.00 ± 0.30¹ vs Hard+Soft 88.00 ± 0.30¹." in text
    assert "- Table A: Hard (85.50 ± 0.71) and Soft (85.30 ± 0.14)." in text


def test_each_network_shows_the_median_of_its_runs_latencies(tmp_path):
    recs = [_rec("A", "Hard", 85.0, ms=36.0), _rec("A", "Soft", 84.0, ms=12.0), _rec("A", "Feature", 83.0, ms=10.0),
            _rec("B", "resnet27_c10 alone", 80.0, ms=20.0, student="resnet27_c10"),
            _rec("teachers", "teacher", 88.0, ms=9.0, student="resnet27"),
            {**_rec("teachers", "dlib_resnet", 98.7, ms=130.0, student="dlib_resnet"), "params": 0, "mb": 0.0}]
    res = tmp_path / "r.jsonl"
    res.write_text("".join(json.dumps(r) + "\n" for r in recs))
    text = write_report(res, tmp_path / "R.md", "p", plot=False)
    assert "| dlib_resnet | dlib_resnet | 98.70 ± 0.50¹ | 1 | – | 130.00 |" in text  # runs in dlib: not counted
    for row, acc in (("Hard", 85.0), ("Soft", 84.0), ("Feature", 83.0)):  # median of 36, 12, 10
        assert f"| {row} | student5 | {acc:.2f} ± 0.50¹ | 1 | 1.00 M | 3.8 | 12.00 |" in text
    assert "| resnet27_c10 alone | resnet27_c10 | 80.00 ± 0.50¹ | 1 | 1.00 M | 3.8 | 20.00 |" in text
    assert "| teacher | resnet27 | 88.00 ± 0.50¹ | 1 | 1.00 M | 9.00 |" in text  # teachers: their own figure


def test_a_network_timed_on_two_cpus_shows_a_median_per_cpu(tmp_path):
    # student5 on CPU one: 4, 5, 6 ms (median 5); on CPU two: 8, 10 ms (median 9). One
    # median over all five (6) would mix machines.
    recs = [_rec("A", "Hard", 85.0, ms=4.0), _rec("A", "Soft", 84.0, ms=5.0), _rec("A", "Feature", 83.0, ms=6.0),
            _rec("A", "Hard", 85.0, seed=1, ms=8.0, cpu="CPU two"), _rec("A", "Soft", 84.0, seed=1, ms=10.0, cpu="CPU two")]
    res = tmp_path / "r.jsonl"
    res.write_text("".join(json.dumps(r) + "\n" for r in recs))
    text = write_report(res, tmp_path / "R.md", "p", plot=False)
    assert "| Hard | student5 | 85.00 ± 0.00 | 2 | 1.00 M | 3.8 | 5.00 a · 9.00 b |" in text
    assert "| Feature | student5 | 83.00 ± 0.50¹ | 1 | 1.00 M | 3.8 | 5.00 a · 9.00 b |" in text
    assert "- **a**: settings not recorded; CPU one;" in text and "- **b**: settings not recorded; CPU two;" in text


def test_report_adds_onnx_runtime_ms_from_the_bench_file_beside_the_results(tmp_path):
    recs = [_rec("A", "Hard", 85.0, ms=12.0), _rec("B", "resnet27_c10 alone", 80.0, ms=20.0, student="resnet27_c10"),
            _rec("teachers", "teacher", 88.0, ms=9.0, student="resnet27"),
            {**_rec("teachers", "dlib_resnet", 98.7, ms=130.0, student="dlib_resnet"), "params": 0, "mb": 0.0}]
    res = tmp_path / "r.jsonl"
    res.write_text("".join(json.dumps(r) + "\n" for r in recs))
    without = write_report(res, tmp_path / "R.md", "p", plot=False)
    assert "| Hard | student5 | 85.00 ± 0.50¹ | 1 | 1.00 M | 3.8 | 12.00 |  |" in without  # no bench file: blank
    (tmp_path / "r-ort.json").write_text(json.dumps([
        {"name": "student5", "ort_fp32_ms_1t": 3.456, "ort_int8_ms_1t": 2.0},
        {"name": "resnet27", "ort_fp32_ms_1t": 21.0}]))
    text = write_report(res, tmp_path / "R.md", "p", plot=False)
    assert "| Hard | student5 | 85.00 ± 0.50¹ | 1 | 1.00 M | 3.8 | 12.00 | 3.46 |" in text
    assert "| resnet27_c10 alone | resnet27_c10 | 80.00 ± 0.50¹ | 1 | 1.00 M | 3.8 | 20.00 |  |" in text
    assert "| teacher | resnet27 | 88.00 ± 0.50¹ | 1 | 1.00 M | 9.00 | 21.00 |" in text
    assert "| dlib_resnet | dlib_resnet | 98.70 ± 0.50¹ | 1 | – | 130.00 | – |" in text
    assert "from `r-ort.json`" in text
    (tmp_path / "r-ort.json").write_text('{"student5": 3.4}')
    with pytest.raises(FacekdError, match="r-ort.json: not facekd bench --json output"):
        write_report(res, tmp_path / "R.md", "p", plot=False)


def test_cpu_protocol_plans_first_seeds_then_repeats_and_leaves_gpu_rows_out(tmp_path):
    from facekd.experiments import Runner, protocols

    proto = protocols(REPO)["facekd-dev-cpu"]
    plan = Runner(REPO, proto, tmp_path / "runs", tmp_path / "none.jsonl").plan(["A", "C"])
    a = [(row.name, seed) for row, seed in plan if row.table == "A"]
    assert [seed for _, seed in a[:9]] == [0] * 9 and len(a) == 9 + 2 * 5  # five rows get three seeds
    assert {name for name, seed in a if seed == 2} == {
        "Hard", "Hard+Soft", "Hard+Soft+Feature", "Hard+Soft+FeatureNorm", "Hard+Soft+FeatureNorm, teacher weighting"}
    c = {row.name for row, _ in plan if row.table == "C"}
    assert c == {"self-training (student5 teaches student5)", "manually designed teacher (a = 0.99)",
                 "label smoothing (ε = 0.1)"}  # Defective and Reversed KD need a teacher trained on facekd-dev


def test_row_filter_keeps_the_named_rows_in_table_order_and_refuses_an_unknown_name(tmp_path):
    from facekd.experiments import Runner, protocols

    runner = Runner(REPO, protocols(REPO)["facekd-dev-cpu"], tmp_path / "runs", tmp_path / "none.jsonl")
    # "enlargement" names Table D rows only: not a row of the tables asked for.
    with pytest.raises(FacekdError, match="'enlargement' names no row of table"):
        runner.plan(["C", "B"], seeds=1, rows=["enlargement"])
    plan = runner.plan(["C", "B"], seeds=1, rows=["LABEL smoothing", "student5 alone"])
    assert [(r.table, r.name, s) for r, s in plan] == [("C", "label smoothing (ε = 0.1)", 0),
                                                       ("B", "student5 alone", 0)]


def test_every_table_has_one_smoke_row():
    for name, rows in TABLES.items():
        assert sum(r.smoke for r in rows) == 1, name


def test_cpu_smoke_runs_one_row_per_table(data_dir, mobilefacenet_weights, tmp_path):
    env = {**os.environ, "FACEKD_DATA": str(data_dir), "FACEKD_WEIGHTS": str(mobilefacenet_weights.parent)}
    res = tmp_path / "results.jsonl"
    proc = subprocess.run(
        [sys.executable, str(REPO / "eval/reproduce_paper.py"), "--protocol", "smoke", "--runs", str(tmp_path / "runs"),
         "--results", str(res), "--report", str(tmp_path / "RESULTS.md")],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in res.read_text().splitlines()]
    assert sorted(r["table"] for r in rows) == ["A", "B", "C", "D", "teachers"]
    # Each record says how the trainer ran it (smoke: device cpu, so fp32 or bf16 autocast).
    assert all(r["precision"] in ("fp32", "bf16") and r["loader"] and r["device"] == "cpu" for r in rows)
    report = (tmp_path / "RESULTS.md").read_text()
    legend = [line for line in report.split("## How the runs were trained")[1].splitlines() if line.startswith("- **")]
    assert legend and not any("not recorded" in line for line in legend)
    for r in rows:
        if r["table"] != "teachers":
            assert f"| {r['row']} | {r['student']} | {r['lfw_acc']:.2f} ± " in report
    # A second command finds everything done and trains nothing.
    again = subprocess.run(
        [sys.executable, str(REPO / "eval/reproduce_paper.py"), "--protocol", "smoke", "--runs", str(tmp_path / "runs"),
         "--results", str(res), "--report", str(tmp_path / "RESULTS.md")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert again.returncode == 0 and "0 runs to do (5 results already" in again.stdout


def test_a_budget_of_zero_minutes_starts_no_run(tmp_path):
    """--budget-minutes 0 used to read as "no budget" (a falsy number) and start every
    run; found when a wrapper script computed the minutes left and reached 0."""
    res = tmp_path / "results.jsonl"
    proc = subprocess.run(
        [sys.executable, str(REPO / "eval/reproduce_paper.py"), "--protocol", "smoke", "--runs", str(tmp_path / "runs"),
         "--results", str(res), "--report", str(tmp_path / "RESULTS.md"), "--budget-minutes", "0"],
        env={**os.environ, "FACEKD_DATA": str(tmp_path / "no-data")}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    todo = int(proc.stdout.split(" runs to do")[0].split()[-1])
    assert todo > 0 and f"budget reached; {todo} runs left" in proc.stdout
    assert proc.stdout.splitlines()[-1].endswith(f"; {todo} runs left")
    assert not res.exists() and not (tmp_path / "runs").exists()


def test_ready_teachers_enter_the_results_with_their_lfw_size_and_latency(mobilefacenet_weights, monkeypatch):
    from facekd.experiments import Protocol
    from facekd.experiments.runner import ready_teacher_records

    monkeypatch.setenv("FACEKD_WEIGHTS", str(mobilefacenet_weights.parent))
    proto = Protocol("p", "base.yaml", "t.yaml", teachers={
        "mobilefacenet": {"model": "mobilefacenet", "weights": "mobilefacenet_casia"},
        "ensemble": {"members": [{"model": "mobilefacenet", "weights": "mobilefacenet_casia"}]},
    })
    lfw = {"mobilefacenet plain": {"accuracy": 98.97, "std": 0.31}, "mobilefacenet flip": {"accuracy": 99.07, "std": 0.4}}
    (rec,) = ready_teacher_records(proto, lfw)  # the ensemble has no figure in the file: left out
    assert rec.row == "mobilefacenet" and rec.table == "teachers"
    assert rec.lfw_acc == 99.07 and rec.flip and rec.recipe == "mobilefacenet flip"
    assert abs(rec.params - 0.99e6) < 0.02e6  # MobileFaceNet: 0.99 M parameters
    assert 0.1 < rec.cpu_ms < 1000


def test_a_note_on_a_run_is_a_footnote_under_its_table(tmp_path):
    recs = [_rec("A", "Hard", 85.0), {**_rec("A", "Hard", 86.0, seed=1), "note": "shared the CPU for half its run"},
            _rec("A", "Soft", 80.0)]
    res = tmp_path / "r.jsonl"
    res.write_text("".join(json.dumps(r) + "\n" for r in recs))
    text = write_report(res, tmp_path / "R.md", "p", plot=False)
    assert "| Hard² | student5 | 85.50 ± 0.71 | 2 |" in text and "| Soft | student5 |" in text
    assert "- ² Hard, seed 1: shared the CPU for half its run" in text


def test_a_note_on_a_teacher_is_a_footnote_under_the_teachers(tmp_path):
    recs = [{**_rec("teachers", "teacher", 58.7), "note": "did not learn"}, _rec("A", "Hard", 85.0)]
    res = tmp_path / "r.jsonl"
    res.write_text("".join(json.dumps(r) + "\n" for r in recs))
    text = write_report(res, tmp_path / "R.md", "p", plot=False)
    teachers = text.split("## Teachers")[1].split("## Table A")[0]
    assert "| teacher² | student5 | 58.70 ± " in teachers and "- ² teacher, seed 0: did not learn" in teachers


def test_a_row_that_trains_what_another_tables_row_trained_shows_that_figure_by_name(tmp_path):
    # Table B's "student5 distilled" is Table A's weighting row (same student, terms, teacher,
    # weighting); B's "student5 alone" trains without a teacher, unlike A's Hard: not the same.
    recs = [_rec("A", "Hard+Soft+FeatureNorm, teacher weighting", 80.0),
            _rec("A", "Hard+Soft+FeatureNorm, teacher weighting", 82.0, seed=1), _rec("A", "Hard", 75.0)]
    res = tmp_path / "r.jsonl"
    res.write_text("".join(json.dumps(r) + "\n" for r in recs))
    text = write_report(res, tmp_path / "R.md", "p", plot=False)
    assert ("| student5 distilled (= Table A: Hard+Soft+FeatureNorm, teacher weighting) | student5 | 81.00 ± 1.41 | 2 |"
            in text)
    assert "| student5 alone | student5 | not run | 0 |" in text
