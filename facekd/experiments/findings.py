"""The findings of Wang et al. (ICIP 2018) judged on one protocol's rows (summaries of
:func:`facekd.experiments.report.summaries`): a typed verdict per finding, the lines of
docs/RESULTS.md, and the rows whose seeds cannot order them."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


def fmt_summary(s: dict) -> str:
    """A row's LFW as ``mean ± std``, marked ¹ where the spread is over folds (one seed)."""
    return f"{s['mean']:.2f} ± {s['std']:.2f}{'¹' if s['over'] == 'folds' else ''}"


@dataclass(frozen=True)
class Finding:
    """One finding of Wang et al. judged on one protocol's rows: ``verdict`` is
    "confirmed", "refuted", "not distinguishable at this spread", "not measured yet" or
    "not testable"; ``detail`` gives the figures behind it."""

    label: str
    verdict: str
    detail: str = ""

    def line(self) -> str:
        return f"- {self.label}: {self.verdict}" + (f": {self.detail}" if self.detail else ".")


def judge(label: str, x: dict | None, y: dict | None, names: tuple[str, str], want: str) -> Finding:
    """``x want y`` (">" or "<") judged against the spread: confirmed, refuted, or not
    distinguishable when the difference is smaller than the larger std of the two."""
    if not x or not y:
        return Finding(label, "not measured yet", f"{names[0] if not x else names[1]} missing.")
    diff = x["mean"] - y["mean"]
    if abs(diff) < max(x["std"], y["std"]):
        verdict = "not distinguishable at this spread"
    else:
        verdict = "confirmed" if (diff > 0) == (want == ">") else "refuted"
    return Finding(label, verdict, f"{names[0]} {fmt_summary(x)} vs {names[1]} {fmt_summary(y)}.")


def finding_rows(by: dict, deep_teacher: str = "teacher") -> list[Finding]:
    """Each finding of Wang et al. (ICIP 2018) judged on ``by`` (rows summarised by
    :func:`summaries`), in the order of SPEC 3."""

    def row(t: str, name: str) -> dict | None:
        return by.get((t, name))

    feature, hard = row("A", "Feature"), row("A", "Hard")
    out = [
        Finding("Feature alone generalises badly off LFW-like data", "not testable",
                "LFW is the only test set; " + (f"on LFW, Feature {fmt_summary(feature)} vs Hard {fmt_summary(hard)}."
                                                  if feature and hard else "rows missing.")),
        judge("Hard+Soft+Feature < Hard+Soft", row("A", "Hard+Soft+Feature"), row("A", "Hard+Soft"),
              ("Hard+Soft+Feature", "Hard+Soft"), "<"),
    ]
    best = "Hard+Soft+FeatureNorm"
    a_rows = {k[1]: v for k, v in by.items() if k[0] == "A" and "weighting" not in k[1]}
    if best in a_rows and len(a_rows) > 1:
        top = max((k for k in a_rows if k != best), key=lambda k: a_rows[k]["mean"])
        out.append(judge("Hard+Soft+FeatureNorm is the best combination", a_rows[best], a_rows[top],
                         (best, f"the best other row, {top}"), ">"))
    else:
        out.append(Finding("Hard+Soft+FeatureNorm is the best combination", "not measured yet"))
    out.append(judge("Teacher weighting helps", row("A", f"{best}, teacher weighting"), row("A", best),
                     (f"{best}, teacher weighting", best), ">"))
    t = by.get(("teachers", deep_teacher))
    s = row("A", f"{best}, teacher weighting") or row("A", best)
    match = "The student can match or beat the teacher at 3x speed"
    if t and s:
        matches = s["mean"] + max(s["std"], t["std"]) >= t["mean"]
        # A speed ratio holds only between timings taken on one CPU; the accuracy alone can refute.
        t_on, s_on = t.get("ms_on", {}), s.get("ms_on", {})
        cpu = next((c for c in t_on if c is not None and c in s_on), None)
        if cpu is not None:
            speed = t_on[cpu] / s_on[cpu]
            verdict = "confirmed" if matches and speed >= 3 else "refuted"
            detail = (f"student5 {fmt_summary(s)} at {s_on[cpu]:.1f} ms vs teacher {fmt_summary(t)} at {t_on[cpu]:.1f} ms "
                      f"({speed:.1f}x faster" + (f", on {cpu})." if len(s_on) > 1 else ")."))
        else:
            cpus = "; ".join(f"{who} on {', '.join(sorted(str(c) for c in x.get('ms_on', {}))) or 'a CPU not recorded'}"
                             for who, x in (("student", s), ("teacher", t)))
            verdict = "refuted" if not matches else "not measured yet"
            detail = (f"student5 {fmt_summary(s)} at {s['cpu_ms']:.1f} ms vs teacher {fmt_summary(t)} at {t['cpu_ms']:.1f} "
                      f"ms, timed on different CPUs ({cpus}): no speed ratio.")
        out.append(Finding(match, verdict, detail))
    else:
        out.append(Finding(match, "not measured yet", "needs Table A and the teacher."))

    def distilled(names: tuple[str, ...]) -> list[float]:
        return [v["mean"] for k, v in by.items() if k[0] == "B" and k[1].endswith("distilled") and k[1].split()[0] in names]

    fast = distilled(("squeezenet1_1", "mobilenet_v2", "shufflenet_v2"))
    deep = distilled(("resnet27_c10", "resnet37_c10"))
    sota = distilled(("densenet121", "inception_resnet_v1"))
    speed_built = "Speed-built students (SqueezeNet/MobileNet/ShuffleNet) do worse than thinner-deeper ones"
    if fast and deep:
        detail = (f"speed-built {statistics.mean(fast):.2f}, thinner-deeper {statistics.mean(deep):.2f} (means of the "
                  "distilled rows)" + (f"; DenseNet/Inception-ResNet {statistics.mean(sota):.2f}." if sota else
                                       "; DenseNet/Inception-ResNet not run (GPU protocol)."))
        out.append(Finding(speed_built, "confirmed" if max(fast) < min(deep) else "refuted", detail))
    else:
        out.append(Finding(speed_built, "not measured yet"))
    return out


def findings(by: dict, deep_teacher: str = "teacher") -> list[str]:
    """One line per finding of Wang et al. (ICIP 2018)."""
    return [f.line() for f in finding_rows(by, deep_teacher)]


def close_rows(by: dict) -> list[str]:
    """Pairs of rows in one table whose means differ by less than the larger of their
    spreads (both with several seeds): the data cannot order them."""
    out = []
    for t in "ABCD":
        rows = sorted(((k[1], v) for k, v in by.items() if k[0] == t and v["over"] == "seeds"), key=lambda kv: -kv[1]["mean"])
        for i, (a, x) in enumerate(rows):
            for b, y in rows[i + 1:]:
                if x["mean"] - y["mean"] < max(x["std"], y["std"]):
                    out.append(f"- Table {t}: {a} ({fmt_summary(x)}) and {b} ({fmt_summary(y)}).")
    return out
