"""``facekd distill`` with the teacher's outputs read from ``eval/export_teacher_outputs.py``'s
file instead of the teacher: for an accelerator machine that lacks the teacher's weights
and crops.

The file must match the training set (same number of crops, same labels in the same
order); it then stands in for the teacher-output cache lookup, and the distillation
objective, loop and checkpoints are facekd's own. Only cached-output teaching works this
way (the teacher never runs), so the config needs ``teacher.crops`` or
``distill.teacher_mode: cache``. With ``--small OUT`` the backbone's weights (fp16) and the
run's metadata are also written to OUT: a file small enough to come back from the machine.

Usage (how the 40-epoch student5 rows of docs/BENCHMARKS.md were trained on an H200)::

    python eval/distill_exported_teacher.py .carry/facenet_dev_emb.pt \\
        configs/distill/cpu_recipe.yaml --set teacher.model=facenet_casia --out /tmp/r2/fn_s0 --small $OUT/fn_s0.pt \\
        --set 'data.train=[.carry/dev_train_q85.fkpack]' --set teacher.crops=.carry/facenet_dev_emb.pt \\
        --set 'distill.terms=[{name: featurenorm, weight: 10.0}]' --set train.epochs=40 \\
        --set train.seed=0 --set eval.every=0 --set train.compile=false
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import facekd.distill.objective as objective  # noqa: E402
import facekd.distill.teacher as teacher  # noqa: E402
from facekd.errors import FacekdError  # noqa: E402
from facekd.train.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402


def use_exported(path: str) -> None:
    """Makes the distillation objective read the teacher's outputs from ``path``."""
    blob = load_checkpoint(path)  # weights_only; a missing or damaged file is an error naming it

    def load_teacher(cfg, identities, device):
        return teacher.Teacher(blob["teacher"], blob["key"], blob["template"], blob["mean"], blob["std"], None, None)

    def teacher_inputs(tcfg, template, data):
        if len(data) != blob["n"] or not torch.equal(torch.from_numpy(data.labels), blob["labels"]):
            raise FacekdError(f"{path}: exported for {blob['n']} crops with other labels; this training set has "
                              f"{len(data)} (export again from this config's data)")
        return data

    def teacher_embeddings(t, data, progress=None, say=print):
        say(f"teacher outputs: exported file {path} {tuple(blob['embeddings'].shape)}")
        return blob["embeddings"]

    teacher.load_teacher, teacher.teacher_embeddings, objective.teacher_inputs = (
        load_teacher, teacher_embeddings, teacher_inputs)


def save_small(run: str, out: str) -> None:
    ck = load_checkpoint(f"{run}/checkpoints/last.pt")
    small = {k: v for k, v in ck.items() if k not in ("optimizer", "model", "rng", "scaler", "schedule")}
    small["model"] = {k: (v.half() if v.is_floating_point() else v) for k, v in ck["model"].items()
                      if k.startswith("backbone.")}
    save_checkpoint(out, small)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0].startswith("-"):
        print(__doc__)
        return 2
    small = None
    if "--small" in argv:
        i = argv.index("--small")
        small = argv[i + 1]
        del argv[i:i + 2]
    use_exported(argv[0])
    from facekd.cli.main import main as facekd_main

    rc = facekd_main(["distill", *argv[1:]])
    if rc == 0 and small:
        save_small(argv[argv.index("--out") + 1], small)
        print(f"backbone (fp16) and metadata: {small}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
