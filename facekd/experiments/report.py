"""docs/RESULTS.md from the results file: a table per experiment, mean ± std over seeds,
a verdict line for each finding of the source (Wang et al., ICIP 2018), and a plot of
LFW accuracy against CPU latency."""

from __future__ import annotations

import json
import os
import re
import statistics
from pathlib import Path

from facekd.errors import FacekdError
from facekd.evaluation.plots import pyplot, save_figure
from facekd.experiments.findings import close_rows, findings, fmt_summary
from facekd.experiments.results import Result, read_results
from facekd.experiments.tables import TABLES, Protocol, Row
from facekd.io_utils import atomic_write_bytes

TITLES = {
    "A": "Table A: loss combinations, student5 taught by {teacher}",
    "B": "Table B: students of similar size, Hard+Soft+FeatureNorm with teacher weighting, and alone",
    "C": "Table C: the Tf-KD family",
    "D": "Table D: ready teachers trained on CASIA-WebFace (MobileFaceNet, dlib's ResNet, their ensemble with FaceNet)",
}
HEADER = "| row | student | LFW % | seeds | params | MB | CPU ms/face | ORT ms/face | min/run | trained with |"


def _relative(path: Path, start: Path | None = None) -> str:
    try:
        return os.path.relpath(path.resolve(), (start or Path.cwd()).resolve())
    except ValueError:
        return str(path)


# What a hand-written note of an older record states about how it was trained (records
# from before the fields existed): the exact phrases those notes use, nothing inferred.
_NOTE_FACTS = (
    (re.compile(r"trained with (bf16|fp32) autocast"), lambda m: {"precision": m[1]}),
    (re.compile(r"\b(H100|H200), (bf16|fp32), (eager|compiled)\b"),
     lambda m: {"gpu": f"NVIDIA {m[1]}", "precision": m[2], "compile": m[3] == "compiled"}),
    (re.compile(r"train\.compile=false"), lambda m: {"compile": False}),
)


def _from_note(note: str | None) -> dict:
    facts: dict = {}
    for pattern, read in _NOTE_FACTS:
        if note and (m := pattern.search(note)):
            facts = {**read(m), **facts}
    return facts


def how_trained(r: Result) -> str:
    """How a record says its run was trained: precision, layout, compile, loader, the
    hardware and torch. A field the record lacks is "not recorded", unless the record's
    own note states it (marked "per its note"); nothing is guessed."""
    if r.recipe is not None and r.epochs is None:  # a ready teacher: timed here, trained elsewhere
        return f"not trained here (a ready model); timed on {r.cpu or 'a CPU not recorded'}"
    noted = _from_note(r.note)

    def field(name: str, show) -> str | None:
        value = getattr(r, name)
        if value is not None:
            return show(value)
        if name in noted:
            return f"{show(noted[name])} (per its note)"
        return None

    precision = field("precision", lambda v: f"{v} autocast" if v in ("bf16", "fp16") else v)
    layout = field("channels_last", lambda v: "channels_last" if v else "contiguous")
    compiled = field("compile", lambda v: "compiled" if v else "eager")
    loader = field("loader", lambda v: f"{v} loader")
    settings = [precision or "precision not recorded", *(x for x in (layout, compiled, loader) if x)]
    if precision is None and layout is None and compiled is None and loader is None:
        settings = ["settings not recorded"]
    if r.gpu or "gpu" in noted:
        hardware = field("gpu", str)
    elif r.device and r.device not in ("cpu", "cuda"):  # older GPU records: the GPU's name here
        hardware = r.device
    elif r.device == "cuda":
        hardware = "a CUDA GPU, model not recorded"
    else:
        hardware = r.cpu or "hardware not recorded"
    return f"{', '.join(settings)}; {hardware}; torch {r.torch or 'not recorded'}"


def run_minutes(r: Result) -> float | None:
    """Minutes a run spent training and evaluating (its epoch log); the wall time of its
    command for records older than that field; None when neither was recorded."""
    sec = r.work_seconds if r.work_seconds is not None else r.seconds
    return sec / 60 if sec else None


def _summary(recs: list[Result], keys: dict[str, str], timed: list[Result] | None = None) -> dict:
    """A row's summary over its seeds; ``timed``: the records whose latency stands for the
    row's network (see :func:`summaries`; None: the row's own first record)."""
    accs = [r.lfw_acc for r in recs]
    if len(accs) > 1:
        spread, how = statistics.stdev(accs), "seeds"
    else:
        spread, how = recs[0].lfw_std, "folds"
    minutes = [m for r in recs if (m := run_minutes(r)) is not None]
    return {"mean": statistics.mean(accs), "std": spread, "over": how, "n": len(accs),
            "minutes": statistics.median(minutes) if minutes else None,
            "notes": [f"seed {r.seed}: {r.note}" for r in recs if r.note],
            "how": ", ".join(dict.fromkeys(keys[how_trained(r)] for r in recs)),
            "params": recs[0].params, "mb": recs[0].mb, "student": recs[0].student, "epochs": recs[0].epochs,
            **_latency(recs, keys, timed)}


def _latency(recs: list[Result], keys: dict[str, str], timed: list[Result] | None) -> dict:
    if not timed:
        return {"cpu_ms": recs[0].cpu_ms, "ms_on": _ms_on(recs)}
    return {"cpu_ms": statistics.median(r.cpu_ms for r in timed), "ms_on": _ms_on(timed),
            "ms_by_how": _median_by(timed, lambda r: keys[how_trained(r)])}


def _median_by(recs: list[Result], key) -> dict:
    """The median latency of ``recs`` per ``key(record)``, in order of first appearance."""
    on: dict = {}
    for r in recs:
        if r.cpu_ms:
            on.setdefault(key(r), []).append(r.cpu_ms)
    return {k: statistics.median(ms) for k, ms in on.items()}


def _ms_on(recs: list[Result]) -> dict[str | None, float]:
    """The median latency of ``recs`` on each CPU that timed them."""
    return _median_by(recs, lambda r: r.cpu)


def _cpu_ms(s: dict) -> str:
    """A row's CPU ms: one median, or one per "trained with" letter where its network's runs
    were timed on differently set-up machines (their figures do not compare)."""
    by = s.get("ms_by_how", {})
    if len(by) > 1:
        return " · ".join(f"{ms:.2f} {k}" for k, ms in sorted(by.items()))
    return f"{s['cpu_ms']:.2f}"


def summaries(recs: list[Result], keys: dict[str, str] | None = None) -> dict[tuple[str, str], dict]:
    """(table, row) -> the row's summary over its seeds (:func:`_summary`); ``keys``: the
    letters of :func:`_trained_with_keys` (None: computed from ``recs``)."""
    keys = keys if keys is not None else _trained_with_keys(recs)
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in recs:
        groups.setdefault((r.table, r.row), []).append(r)
    # One network's latency is one figure: each run timed it once at its end (30 calls),
    # and those figures scatter with whatever else ran (student5: 10 to 37 ms on one
    # machine). Every row of a network shows the median over all its runs here.
    # ``ms_on``: the same per CPU (as records name it; None: not recorded).
    timings: dict[tuple[str, int], list[Result]] = {}
    for r in recs:
        if r.table != "teachers" and r.cpu_ms:
            timings.setdefault((r.student, r.params), []).append(r)
    return {(table, row): _summary(v, keys, None if table == "teachers" else timings.get((v[0].student, v[0].params)))
            for (table, row), v in groups.items()}


def _trained_with_keys(recs: list[Result]) -> dict[str, str]:
    """A letter for each distinct way the records were trained, in order of first use."""
    labels = list(dict.fromkeys(how_trained(r) for r in recs))
    return {label: chr(ord("a") + i) if i < 26 else f"z{i - 25}" for i, label in enumerate(labels)}


def trained_with_section(keys: dict[str, str]) -> list[str]:
    """The legend of the "trained with" column: each letter's precision, layout, compile,
    loader, hardware and torch."""
    if not keys:
        return []
    lines = ["## How the runs were trained", "",
             "The last column of every table names one of these (several letters: the row's seeds ran "
             "differently). Rows with different letters differ in precision or hardware, so their minutes and "
             "CPU ms do not compare and their accuracy may not; \"not recorded\": the record predates the field.",
             ""]
    return [*lines, *(f"- **{k}**: {label}" for label, k in keys.items()), ""]


def _params(s: dict) -> str:
    """Millions of parameters; "–" for a network facekd runs through another library
    (dlib), whose parameters it cannot count."""
    return f"{s['params'] / 1e6:.2f} M" if s.get("params") else "–"


def _ort(s: dict) -> str:
    return f"{s['ort_ms']:.2f}" if s.get("ort_ms") else ""


def read_ort_timings(path: Path) -> dict[str, float]:
    """ONNX Runtime ms per face (FP32, batch 1, one thread) by network, from ``facekd
    bench --json`` (a list of rows with ``name`` and ``ort_fp32_ms_1t``); {} without it."""
    if not path.exists():
        return {}
    try:
        rows = json.loads(path.read_text())
        if not isinstance(rows, list):
            raise ValueError(f"a list of rows expected, found {type(rows).__name__}")
        return {r["name"]: float(r["ort_fp32_ms_1t"]) for r in rows if r.get("ort_fp32_ms_1t")}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise FacekdError(f"{path}: not facekd bench --json output ({exc})") from exc


def plot_accuracy_latency(by: dict, path: Path, title: str) -> Path | None:
    """LFW accuracy against CPU ms per face for every row and teacher, marker area by
    parameter count."""
    points = [(k, v) for k, v in by.items() if v.get("cpu_ms")]
    if not points:
        return None

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    colours = {"A": "tab:blue", "B": "tab:green", "C": "tab:purple", "D": "tab:orange", "teachers": "tab:red"}
    for (table, name), v in points:
        ax.scatter(v["cpu_ms"], v["mean"], s=20 + 40 * v["params"] / 1e6, alpha=0.55, color=colours.get(table, "grey"),
                   edgecolors="black", linewidths=0.5)
        label = name if table == "teachers" else f"{table}: {name}"
        ax.annotate(label[:48], (v["cpu_ms"], v["mean"]), fontsize=6, xytext=(4, 2), textcoords="offset points")
    for table, colour in colours.items():
        ax.scatter([], [], color=colour, label="teachers" if table == "teachers" else f"table {table}")
    ax.set_xscale("log")
    ax.set_xlabel("CPU ms per face (PyTorch eager, batch 1, one thread; log scale)")
    ax.set_ylabel("LFW accuracy, %")
    ax.set_title(title + " (marker area: parameters)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    return save_figure(fig, path)


def sweep_section(path: Path, start: Path | None = None, keys: dict[str, str] | None = None) -> list[str]:
    """The recipe sweep (eval/recipe_sweep.py): each variant's LFW and its difference from
    the reference recipe, largest first; ``keys``: the report's letters for how runs were
    trained (default: this file's own)."""
    recs = read_results(path)
    keys = keys or _trained_with_keys(recs)
    if not recs:
        return []
    ref = next((r for r in recs if r.row.startswith("reference recipe")), None)
    lines = ["## Recipe sweep", "",
             f"`eval/recipe_sweep.py` ({_relative(path, start)}): student5 taught with Hard + 10·FeatureNorm, every variant "
             f"{recs[0].epochs or '?'} epoch(s) from the same seed; each changes one thing of the reference recipe "
             "(configs/base/dev_cpu.yaml) except the first, a new user's first try. Minutes are training and LFW time "
             "summed over epochs (for records older than that field, the wall time of the command, which includes a "
             "teacher's one pass over the training crops where its output cache was cold), on the machine named in the "
             "file while it also did other work: not a benchmark.", "",
             "| variant | LFW % | vs reference | minutes | trained with |", "|---|---:|---:|---:|---|"]
    for r in sorted(recs, key=lambda r: -r.lfw_acc):
        delta = f"{r.lfw_acc - ref.lfw_acc:+.2f}" if ref and r is not ref else ""
        minutes = f"{m:.1f}" if (m := run_minutes(r)) is not None else ""
        lines.append(f"| {r.row} | {r.lfw_acc:.2f} ± {r.lfw_std:.2f} | {delta} | {minutes} | {keys[how_trained(r)]} |")
    return [*lines, ""]


def _same_run(row: Row, by: dict) -> Row | None:
    """A row of another table that trains exactly what ``row`` does and has results."""
    return next((r for rows in TABLES.values() for r in rows
                 if r.table != row.table and r.recipe == row.recipe and (r.table, r.name) in by), None)


def _table(t: str, by: dict, proto: Protocol | None) -> list[str]:
    teacher = proto.teacher_title if proto else "ResNet-27"
    lines = [f"## {TITLES[t].format(teacher=teacher)}", "", HEADER, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in TABLES[t]:
        s, name = by.get((t, row.name)), row.name
        if s is None and (twin := _same_run(row, by)) is not None:
            # The same run under another table's name: its figure, named, not a second run.
            s, name = by[(twin.table, twin.name)], f"{row.name} (= Table {twin.table}: {twin.name})"
        if s is None:
            why = proto.skip_note if proto and proto.skips(row) else "not run"
            lines.append(f"| {row.name} | {row.student} | {why} | 0 | | | | | | |")
            continue
        minutes = f"{s['minutes']:.1f}" if s["minutes"] is not None else ""
        mark = "²" if s.get("notes") and name == row.name else ""
        lines.append(f"| {name}{mark} | {s['student']} | {fmt_summary(s)} | {s['n']} | {_params(s)} | "
                     f"{s['mb']:.1f} | {_cpu_ms(s)} | {_ort(s)} | {minutes} | {s['how']} |")
    notes = [f"- ² {row.name}, {n}" for row in TABLES[t] if (s := by.get((t, row.name))) for n in s.get("notes", [])]
    return [*lines, *([""] + notes if notes else []), ""]


def write_report(results: Path, out: Path, protocol: str | Protocol, plot: bool = True) -> str:
    """Renders the Markdown report (and its plot, beside the results file) atomically.
    ONNX Runtime latencies come from ``<results>-ort.json`` beside the results file
    (``facekd bench NETWORKS --json``, run on an idle machine) where it exists."""
    proto = protocol if isinstance(protocol, Protocol) else None
    name = proto.name if proto else protocol
    recs = [r for r in read_results(results) if r.protocol == name]
    sweep = results.parent / proto.sweep if proto and proto.sweep else None
    keys = _trained_with_keys([*recs, *(read_results(sweep) if sweep else [])])
    by = summaries(recs, keys)
    ort_file = results.with_name(results.stem + "-ort.json")
    ort = read_ort_timings(ort_file)
    for s in by.values():
        s["ort_ms"] = ort.get(s["student"])
    lines = [
        f"# Results: {name}",
        "",
        f"Built by `eval/reproduce_paper.py --protocol {name}` from `{_relative(results, out.parent)}`. LFW accuracy is "
        "the mean ± std over seeds of each seed's 10-fold accuracy (where a row has one seed, the ± is its std over the "
        "10 folds, marked ¹). Params and MB count the student's backbone in fp32; CPU ms is PyTorch eager, batch 1, one "
        "thread, on the machine that trained it, the median over every run of that network in this file (each run "
        "times it once, at its end; where they ran on differently set-up machines, one median per \"trained with\" "
        "letter); "
        + (f"ORT ms is ONNX Runtime, FP32, batch 1, one thread, from `{_relative(ort_file, out.parent)}` (`facekd bench`, "
           "one idle run for every network; – where a network has no ONNX form); " if ort else "")
        + "min/run is the median time one run spent training and evaluating on LFW, summed over its epochs (so a "
        "run killed and resumed later is not charged for the time between; records older than that field give the "
        "wall time of their command). "
        "Machines and times are in the results file.",
        "",
    ]
    if proto and proto.about:
        lines += [proto.about, ""]
    cpus = sorted({r.cpu for r in recs if r.cpu})
    epochs = sorted({r.epochs for r in recs if r.epochs and r.table != "teachers"})
    if recs:
        lines += [f"Runs in this file: {len(recs)}; epochs per row: {', '.join(map(str, epochs)) or '?'}; "
                  f"CPU: {'; '.join(cpus) or '?'}.", ""]
    if plot and by:
        png = plot_accuracy_latency(by, results.with_suffix(".png"), f"LFW accuracy against CPU latency, {name}")
        if png is not None:
            lines += [f"![LFW accuracy against CPU latency]({_relative(png, out.parent)})", ""]
    lines += trained_with_section(keys)
    if sweep:
        lines += sweep_section(sweep, out.parent, keys)
    teachers = [(k[1], v) for k, v in sorted(by.items()) if k[0] == "teachers"]
    if teachers:
        lines += ["## Teachers", "", "| run | network | LFW % | seeds | params | CPU ms/face | ORT ms/face | trained with |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        lines += [f"| {n}{'²' if s.get('notes') else ''} | {s['student']} | {fmt_summary(s)} | {s['n']} | {_params(s)} "
                  f"| {s['cpu_ms']:.2f} | {_ort(s) or ('–' if ort else '')} | {s['how']} |" for n, s in teachers]
        notes = [f"- ² {n}, {note}" for n, s in teachers for note in s.get("notes", [])]
        lines += [*([""] + notes if notes else []), ""]
    for t in "ABCD":
        lines += _table(t, by, proto)
    if not recs:
        lines[4:4] = [
            "**No results yet.** The command (see the protocol's notes for where the packs come from):",
            "",
            "```",
            f"python eval/reproduce_paper.py --protocol {name} --tables A --budget-minutes 8 \\",
            "    --set 'data.train=[.carry/dev_train_q85.fkpack]' --set eval.lfw=.carry/lfw_pairs_q85.fkpack",
            "```",
            "",
        ]
    lines += ["## Findings of Wang et al. (ICIP 2018)", ""] + findings(by, proto.deep_teacher if proto else "teacher")
    close = close_rows(by)
    lines += ["", "## Rows the seeds cannot order", "",
              *(close or ["- None yet (or too few rows with several seeds)."]), ""]
    text = "\n".join(lines)
    atomic_write_bytes(out, text.encode())
    return text
