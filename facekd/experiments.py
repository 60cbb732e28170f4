"""The paper's experiment tables as data, a resumable runner, and the RESULTS.md report.

Tables (SPEC sections 3-4):
- A: loss combinations on ``student5`` taught by the ResNet-27 teacher;
- B: architectures of similar size with the best loss, each also trained alone;
- C: the Tf-KD family (self-training, a designed teacher, label smoothing, a poorly
  trained teacher, a student teaching its teacher);
- D: a strong teacher, the public CASIA-WebFace MobileFaceNet.

Every finished run appends one JSON line to a results file, so a suite can be spread
over several commands (each retrains the teachers it needs, since a checkpoint may not
travel back from the machine that made it) and the report is rebuilt from whatever
results exist.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from facekd.errors import FacekdError

H = {"name": "hard", "weight": 1.0}
S = {"name": "soft", "weight": 1.0, "tau": 4.0}
F_ = {"name": "feature", "weight": 1.0}
FN = {"name": "featurenorm", "weight": 10.0}  # 2 - 2cos is small; weight 10 balances it with the CE terms
BEST = [H, S, FN]


@dataclass(frozen=True)
class Row:
    """One line of a table: a student trained alone or distilled from ``teacher``.

    ``teacher`` names a prerequisite run ("teacher", "defective_teacher",
    "student5_alone") or the public model ("mobilefacenet").
    """

    table: str
    name: str
    student: str
    terms: tuple = ()
    teacher: str | None = None
    weighting: bool = False
    smoke: bool = False  # the one row per table the CPU smoke runs

    @property
    def kind(self) -> str:
        return "distill" if self.terms else "train"


def _t(*terms) -> tuple:
    return tuple(json.dumps(t, sort_keys=True) for t in terms)


TABLES: dict[str, list[Row]] = {
    "A": [
        Row("A", "Hard", "student5", _t(H), "teacher"),
        Row("A", "Soft", "student5", _t(S), "teacher"),
        Row("A", "Feature", "student5", _t(F_), "teacher"),
        Row("A", "FeatureNorm", "student5", _t(FN), "teacher"),
        Row("A", "Hard+Soft", "student5", _t(H, S), "teacher"),
        Row("A", "Hard+Feature", "student5", _t(H, F_), "teacher"),
        Row("A", "Hard+Soft+Feature", "student5", _t(H, S, F_), "teacher"),
        Row("A", "Hard+Soft+FeatureNorm", "student5", _t(*BEST), "teacher"),
        Row("A", "Hard+Soft+FeatureNorm, teacher weighting", "student5", _t(*BEST), "teacher", True, smoke=True),
    ],
    "B": [
        row
        for arch in ("student5", "resnet27_c10", "resnet37_c10", "squeezenet1_1", "mobilenet_v2", "shufflenet_v2",
                     "densenet121", "inception_resnet_v1")
        for row in (
            Row("B", f"{arch} alone", arch, smoke=arch == "student5"),
            Row("B", f"{arch} distilled", arch, _t(*BEST), "teacher", True),
        )
    ],
    "C": [
        Row("C", "self-training (student5 teaches student5)", "student5",
            _t({"name": "hard", "weight": 0.5}, {"name": "soft", "weight": 0.5, "tau": 4.0}), "student5_alone"),
        Row("C", "manually designed teacher (a = 0.99)", "student5",
            _t({"name": "hard", "weight": 0.5}, {"name": "manual_teacher", "weight": 0.5, "a": 0.99, "tau": 20.0})),
        Row("C", "label smoothing (ε = 0.1)", "student5", _t({"name": "label_smoothing", "weight": 1.0, "epsilon": 0.1}),
            smoke=True),
        Row("C", "Defective KD (teacher trained 10% of the epochs)", "student5", _t(*BEST), "defective_teacher", True),
        Row("C", "Reversed KD (student5 teaches resnet27)", "resnet27", _t(*BEST), "student5_alone", True),
    ],
    "D": [
        Row("D", "student5, Hard+FeatureNorm", "student5", _t(H, FN), "mobilefacenet", smoke=True),
        Row("D", "student5, Hard+Soft+FeatureNorm, weighting", "student5", _t(*BEST), "mobilefacenet", True),
        Row("D", "student5, FeatureNorm only (no labels)", "student5", _t(FN), "mobilefacenet"),
        Row("D", "resnet37_c10, Hard+FeatureNorm", "resnet37_c10", _t(H, FN), "mobilefacenet"),
    ],
}


@dataclass(frozen=True)
class Protocol:
    """Where configs come from and how they are scaled."""

    name: str
    base: str  # training config every run starts from
    teacher: str  # config of the ResNet-27 teacher
    smoke_only: bool = False
    shrink: dict = field(default_factory=dict)  # backbone -> backbone_args (tiny CPU models)
    overrides: tuple[str, ...] = ()  # applied to every run before the user's --set


def protocols(repo: Path) -> dict[str, Protocol]:
    return {
        "facekd-dev": Protocol("facekd-dev", str(repo / "configs/base/dev.yaml"),
                               str(repo / "configs/teacher/resnet27_dev.yaml")),
        "smoke": Protocol("smoke", str(repo / "configs/smoke.yaml"), str(repo / "configs/smoke.yaml"), True,
                          {"student5": {"widths": [8, 16, 16, 32, 32]}, "resnet27": {"base": 4, "units": [1, 1, 1, 1]}},
                          ("data.max_identities=8", "data.max_per_identity=20", "data.workers=0")),
    }


PREREQS = {
    "teacher": ("resnet27", 1.0),
    "defective_teacher": ("resnet27", 0.1),
    "student5_alone": ("student5", 1.0),
}
PUBLIC_TEACHERS = {"mobilefacenet": ("mobilefacenet", "mobilefacenet_casia")}


def cpu_ms_per_face(backbone: str, backbone_args: dict, repeats: int = 30) -> float:
    """Median PyTorch eager latency for one face, batch 1, one thread (this machine's CPU)."""
    import torch

    from facekd.models import build_backbone

    net = build_backbone(backbone, **backbone_args).eval()
    x = torch.zeros(1, 3, *net.cfg.input_size)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for _ in range(5):
                net(x)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                net(x)
                times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(before)
    return 1000 * statistics.median(times)


def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a kill
            continue
    return out


def append_result(path: Path, rec: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


@dataclass
class Runner:
    """Runs table rows (and the teachers they need) and appends their results."""

    repo: Path
    protocol: Protocol
    runs: Path
    results: Path
    overrides: list[str] = field(default_factory=list)
    say: Callable[[str], None] = print
    deadline: float | None = None
    _prereq_ckpt: dict = field(default_factory=dict)

    def _raw(self, config: str, backbone: str, seed: int, epochs_scale: float = 1.0) -> dict:
        from facekd.config import apply_overrides, read_config_tree

        raw = read_config_tree(config)
        raw.setdefault("model", {})["backbone"] = backbone
        if backbone in self.protocol.shrink:
            raw["model"]["backbone_args"] = self.protocol.shrink[backbone]
        raw.setdefault("train", {})["seed"] = seed
        raw = apply_overrides(raw, [*self.protocol.overrides, *self.overrides])
        if epochs_scale != 1.0:
            epochs = raw["train"].get("epochs", 40)
            raw["train"]["epochs"] = max(1, round(epochs * epochs_scale))
        return raw

    def _fit(self, raw: dict, run: Path, distill: bool) -> dict:
        from facekd.config import from_dict
        from facekd.train.checkpoint import CHECKPOINT
        from facekd.train.loop import fit

        if distill:
            from facekd.distill.config import DistillConfig
            from facekd.distill.objective import make_distill_objective

            cfg = from_dict(DistillConfig, raw, str(run))
            maker = make_distill_objective
        else:
            from facekd.train.config import TrainConfig

            cfg = from_dict(TrainConfig, raw, str(run))
            maker = None
        return fit(cfg, run, resume=(run / CHECKPOINT).is_file(), say=self.say, make_objective=maker)

    def prerequisite(self, key: str, seed: int) -> Path:
        """The checkpoint of a teacher run, trained here unless this command already did."""
        from facekd.train.checkpoint import load_checkpoint
        from facekd.train.checkpoint import CHECKPOINT

        if (key, seed) in self._prereq_ckpt:
            return self._prereq_ckpt[(key, seed)]
        backbone, scale = PREREQS[key]
        config = self.protocol.teacher if backbone == "resnet27" else self.protocol.base
        raw = self._raw(config, backbone, seed, scale)
        run = self.runs / f"{key}-seed{seed}"
        last = run / CHECKPOINT
        done = last.is_file() and load_checkpoint(last)["epoch"] >= raw["train"].get("epochs", 40)
        if not done:
            self.say(f"== prerequisite {key} (seed {seed}): {backbone}, {raw['train'].get('epochs')} epochs -> {run}")
            t0 = time.perf_counter()
            metrics = self._fit(raw, run, distill=False)
            known = {(r["protocol"], r["table"], r["row"], r["seed"]) for r in read_results(self.results)}
            if (self.protocol.name, "teachers", key, seed) not in known and "lfw_acc" in metrics:
                append_result(self.results, self._record("teachers", key, backbone, seed, raw, metrics, run, t0))
        self._prereq_ckpt[(key, seed)] = last
        return last

    def run_row(self, row: Row, seed: int) -> dict:
        raw = self._raw(self.protocol.base, row.student, seed)
        if row.kind == "distill":
            if row.teacher in PUBLIC_TEACHERS:
                name, weights = PUBLIC_TEACHERS[row.teacher]
                raw["teacher"] = {"model": name, "weights": weights}
            elif row.teacher:
                raw["teacher"] = {"model": str(self.prerequisite(row.teacher, seed))}
            raw["distill"] = {"terms": [json.loads(t) for t in row.terms], "teacher_weighting": row.weighting}
        slug = "".join(c if c.isascii() and c.isalnum() else "_" for c in f"{row.table}-{row.name}")[:80]
        run = self.runs / f"{slug}-seed{seed}"
        self.say(f"== table {row.table}: {row.name} (seed {seed}) -> {run}")
        t0 = time.perf_counter()
        metrics = self._fit(raw, run, distill=row.kind == "distill")
        return self._record(row.table, row.name, row.student, seed, raw, metrics, run, t0)

    def _record(self, table: str, name: str, student: str, seed: int, raw: dict, metrics: dict, run: Path,
                t0: float) -> dict:
        import torch

        from facekd.models import build_backbone

        if "lfw_acc" not in metrics:
            raise FacekdError(f"{run}: no LFW result (eval.every is 0?)")
        args = raw["model"].get("backbone_args", {})
        params = sum(p.numel() for p in build_backbone(student, **args).parameters())
        return {
            "protocol": self.protocol.name, "table": table, "row": name, "seed": seed,
            "student": student, "lfw_acc": metrics["lfw_acc"], "lfw_std": metrics["lfw_std"],
            "lfw_pairs": metrics.get("lfw_pairs"), "flip": raw.get("eval", {}).get("flip", False),
            "epochs": metrics.get("epoch"), "params": params, "mb": params * 4 / 2**20,
            "cpu_ms": cpu_ms_per_face(student, args), "seconds": round(time.perf_counter() - t0, 1),
            "run": str(run), "machine": platform.node(), "cpu": platform.processor() or platform.machine(),
            "device": "cuda" if torch.cuda.is_available() else "cpu", "torch": str(torch.__version__),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    def run(self, tables: list[str], seeds: int) -> int:
        """Runs every wanted row that has no result yet; returns how many remain."""
        done = {(r["protocol"], r["table"], r["row"], r["seed"]) for r in read_results(self.results)}
        todo = [
            (row, seed)
            for t in tables
            for row in TABLES[t]
            if row.smoke or not self.protocol.smoke_only
            for seed in range(seeds)
            if (self.protocol.name, row.table, row.name, seed) not in done
        ]
        self.say(f"{len(todo)} runs to do ({len(done)} results already in {self.results})")
        for k, (row, seed) in enumerate(todo):
            if self.deadline is not None and time.time() > self.deadline:
                self.say(f"budget reached; {len(todo) - k} runs left: run the same command again to continue")
                return len(todo) - k
            append_result(self.results, self.run_row(row, seed))
        return 0


# --- the report --------------------------------------------------------------------------

TITLES = {
    "A": "Table A: loss combinations, student5 taught by ResNet-27",
    "B": "Table B: students of similar size, Hard+Soft+FeatureNorm with teacher weighting, and alone",
    "C": "Table C: the Tf-KD family",
    "D": "Table D: a strong teacher (public CASIA-WebFace MobileFaceNet)",
}


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _summary(recs: list[dict]) -> dict:
    accs = [r["lfw_acc"] for r in recs]
    if len(accs) > 1:
        spread, how = statistics.stdev(accs), "seeds"
    else:
        spread, how = recs[0]["lfw_std"], "folds"
    return {"mean": statistics.mean(accs), "std": spread, "over": how, "n": len(accs), **{k: recs[0][k] for k in ("params", "mb", "cpu_ms", "student")}}


def _get(by: dict, table: str, row: str) -> dict | None:
    return by.get((table, row))


def findings(by: dict) -> list[str]:
    """One line per SPEC 3 finding: confirmed, not confirmed, or not measured."""

    def cmp(label: str, a: tuple[str, str], b: tuple[str, str], want: str) -> str:
        x, y = _get(by, *a), _get(by, *b)
        if not x or not y:
            return f"- {label}: not measured yet ({a[1] if not x else b[1]} missing)."
        diff = x["mean"] - y["mean"]
        ok = diff > 0 if want == ">" else diff < 0
        noise = max(x["std"], y["std"])
        verdict = "confirmed" if ok else "not confirmed"
        within = " (within the spread, so not conclusive)" if abs(diff) < noise else ""
        return f"- {label}: {verdict}{within}: {a[1]} {x['mean']:.2f} vs {b[1]} {y['mean']:.2f}."

    lines = [
        "- Feature alone generalises badly off LFW-like data: not testable with LFW as the only test set; "
        + (f"on LFW, Feature {by[('A', 'Feature')]['mean']:.2f} vs Hard {by[('A', 'Hard')]['mean']:.2f}."
           if ("A", "Feature") in by and ("A", "Hard") in by else "rows missing."),
        cmp("Hard+Soft+Feature < Hard+Soft", ("A", "Hard+Soft+Feature"), ("A", "Hard+Soft"), "<"),
    ]
    a_rows = {k[1]: v for k, v in by.items() if k[0] == "A" and "weighting" not in k[1]}
    best = "Hard+Soft+FeatureNorm"
    if best in a_rows and len(a_rows) > 1:
        top = max(a_rows, key=lambda k: a_rows[k]["mean"])
        lines.append(f"- Hard+Soft+FeatureNorm is the best combination: {'confirmed' if top == best else 'not confirmed'}: "
                     f"best is {top} ({a_rows[top]['mean']:.2f}); Hard+Soft+FeatureNorm {a_rows[best]['mean']:.2f}.")
    else:
        lines.append("- Hard+Soft+FeatureNorm is the best combination: not measured yet.")
    lines.append(cmp("Teacher weighting helps", ("A", "Hard+Soft+FeatureNorm, teacher weighting"), ("A", best), ">"))
    t = by.get(("teachers", "teacher"))
    s = _get(by, "A", "Hard+Soft+FeatureNorm, teacher weighting") or _get(by, "A", best)
    if t and s:
        speed = t["cpu_ms"] / s["cpu_ms"]
        ok = s["mean"] >= t["mean"]
        lines.append(f"- The student can match or beat the teacher at 3x speed: {'confirmed' if ok and speed >= 3 else 'not confirmed'}: "
                     f"student5 {s['mean']:.2f} at {s['cpu_ms']:.1f} ms vs teacher {t['mean']:.2f} at {t['cpu_ms']:.1f} ms ({speed:.1f}x faster).")
    else:
        lines.append("- The student can match or beat the teacher at 3x speed: not measured yet (needs Table A and the teacher).")
    fast = [by[k]["mean"] for k in by if k[0] == "B" and k[1].endswith("distilled") and k[1].split()[0] in ("squeezenet1_1", "mobilenet_v2", "shufflenet_v2")]
    deep = [by[k]["mean"] for k in by if k[0] == "B" and k[1].endswith("distilled") and k[1].split()[0] in ("resnet27_c10", "resnet37_c10")]
    sota = [by[k]["mean"] for k in by if k[0] == "B" and k[1].endswith("distilled") and k[1].split()[0] in ("densenet121", "inception_resnet_v1")]
    if fast and deep and sota:
        ok = max(fast) < min(deep) and abs(statistics.mean(deep) - statistics.mean(sota)) < 2.0
        lines.append(f"- Speed-built students (SqueezeNet/MobileNet/ShuffleNet) do poorly, thinner-deeper ones as well as "
                     f"DenseNet/Inception-ResNet: {'confirmed' if ok else 'not confirmed'}: speed-built {statistics.mean(fast):.2f}, "
                     f"thinner-deeper {statistics.mean(deep):.2f}, DenseNet/Inception-ResNet {statistics.mean(sota):.2f} (means).")
    else:
        lines.append("- Speed-built students do poorly, thinner-deeper ones as well as DenseNet/Inception-ResNet: not measured yet.")
    return lines


def write_report(results: Path, out: Path, protocol: str) -> str:
    """Renders the Markdown report from the results file (atomically)."""
    from facekd.io_utils import atomic_write_bytes

    recs = [r for r in read_results(results) if r["protocol"] == protocol]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in recs:
        groups.setdefault((r["table"], r["row"]), []).append(r)
    by = {k: _summary(v) for k, v in groups.items()}
    lines = [
        f"# Results: {protocol}",
        "",
        f"Built by `eval/reproduce_paper.py --protocol {protocol}` from `{_relative(results)}`. LFW accuracy is the mean ± std "
        "over seeds of each seed's 10-fold accuracy (where a row has one seed, the ± is its std over the 10 folds, "
        "marked ¹). Params and MB count the student's backbone in fp32; CPU ms is PyTorch eager, batch 1, one thread, "
        "on the machine that trained it. Machines and times are in the results file.",
        "",
    ]
    teachers = [(k[1], v) for k, v in sorted(by.items()) if k[0] == "teachers"]
    if teachers:
        lines += ["## Teachers", "", "| run | network | LFW % | seeds | params | CPU ms/face |", "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {name} | {s['student']} | {s['mean']:.2f} ± {s['std']:.2f}{'¹' if s['over'] == 'folds' else ''} | "
                  f"{s['n']} | {s['params'] / 1e6:.2f} M | {s['cpu_ms']:.2f} |" for name, s in teachers]
        lines.append("")
    for t in "ABCD":
        lines += [f"## {TITLES[t]}", "", "| row | student | LFW % | seeds | params | MB | CPU ms/face |", "|---|---|---:|---:|---:|---:|---:|"]
        for row in TABLES[t]:
            s = by.get((t, row.name))
            if s is None:
                lines.append(f"| {row.name} | {row.student} | not run | 0 | | | |")
                continue
            mark = "¹" if s["over"] == "folds" else ""
            lines.append(f"| {row.name} | {s['student']} | {s['mean']:.2f} ± {s['std']:.2f}{mark} | {s['n']} | "
                         f"{s['params'] / 1e6:.2f} M | {s['mb']:.1f} | {s['cpu_ms']:.2f} |")
        lines.append("")
    if not recs:
        lines[4:4] = [
            "**No results yet.** Every table below needs training runs on an accelerator (about 40 epochs over",
            "14,350 crops per row); the task that built this runner had none. The command, one table per",
            "10-minute device command, with the packs carried in the checkout:",
            "",
            "```",
            f"python eval/reproduce_paper.py --protocol {protocol} --tables A --seeds 1 --budget-minutes 8 \\",
            "    --set 'data.train=[.carry/dev_train_q85.fkpack]' --set eval.lfw=.carry/lfw_pairs_q85.fkpack",
            "```",
            "",
        ]
    lines += ["## Findings of SPEC section 3", ""] + findings(by) + [""]
    text = "\n".join(lines)
    atomic_write_bytes(out, text.encode())
    return text
