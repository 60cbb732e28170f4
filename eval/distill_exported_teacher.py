"""``facekd distill`` with the teacher's outputs read from ``eval/export_teacher_outputs.py``'s
file, plus a small copy of the result: for an accelerator machine that lacks the teacher's
weights and crops.

The exported file is a registered teacher source (``teacher.outputs: FILE``, see
:mod:`facekd.distill.teacher_sources`), so this is ``facekd distill CONFIG --set
teacher.outputs=FILE ...``; the file must match the training set (same number of crops,
same labels in the same order). With ``--small OUT`` the backbone's weights (fp16) and the
run's metadata are also written to OUT: a file small enough to come back from the machine.

Usage (how the 40-epoch student5 rows of docs/BENCHMARKS.md were trained on an H200)::

    python eval/distill_exported_teacher.py .carry/facenet_dev_emb.pt \\
        configs/distill/cpu_recipe.yaml --set teacher.model=facenet_casia --out /tmp/r2/fn_s0 --small $OUT/fn_s0.pt \\
        --set 'data.train=[.carry/dev_train_q85.fkpack]' \\
        --set 'distill.terms=[{name: featurenorm, weight: 10.0}]' --set train.epochs=40 \\
        --set train.seed=0 --set eval.every=0 --set train.compile=false
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facekd.cli.main import main as facekd_main  # noqa: E402
from facekd.train.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402


def save_small(run: str, out: str) -> None:
    """The run's last backbone in fp16 with its metadata, without optimizer state."""
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
    rc = facekd_main(["distill", *argv[1:], "--set", f"teacher.outputs={argv[0]}"])
    if rc == 0 and small:
        save_small(argv[argv.index("--out") + 1], small)
        print(f"backbone (fp16) and metadata: {small}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
