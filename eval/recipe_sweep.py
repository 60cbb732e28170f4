"""A short recipe sweep for distilling ``student5`` on the CPU: each variant trained the
same number of epochs on facekd-dev, its LFW accuracy appended to a results file.

    python eval/recipe_sweep.py --epochs 1 --packs /tmp --budget-minutes 80 \\
        --set 'data.train=[/tmp/dev_train_q85.fkpack]' --set eval.lfw=/tmp/lfw_pairs_q85.fkpack

Every variant starts from the facekd-dev-cpu protocol's base config
(configs/base/dev_cpu.yaml: softmax head, Nesterov, warm-up, flip + shifts) and changes
one thing, except "new user", which is what a first try looks like with the defaults a
user would start from. Finished variants are skipped on a second run (resumable).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

H = {"name": "hard", "weight": 1.0}
FN10 = {"name": "featurenorm", "weight": 10.0}
NO_AUGMENT = ("data.augment.flip=0", "data.augment.affine_p=0", "data.augment.color_p=0", "data.augment.gray_p=0")
COSFACE = ("model.head=cosface", "model.head_args={scale: 64.0, margin: 0.35}")

# name -> (teacher, terms, overrides)
VARIANTS = {
    "new user: cosface s=64 m=0.35, learned adapter, no Nesterov/warm-up/augmentation, batch 128": (
        "mobilefacenet", (H, FN10),
        (*COSFACE, *NO_AUGMENT, "optim.nesterov=false", "schedule.warmup_epochs=0", "train.batch_size=128",
         "distill.adapter=learned")),
    "reference recipe (FaceNet-CASIA)": ("facenet_casia", (H, FN10), ()),
    "reference, cosface s=64 m=0.35 head (FaceNet-CASIA)": ("facenet_casia", (H, FN10), COSFACE),
    "reference, fixed orthonormal lift (MobileFaceNet 128-d)": ("mobilefacenet", (H, FN10), ("distill.adapter=lift",)),
    "reference, learned adapter (MobileFaceNet 128-d)": ("mobilefacenet", (H, FN10), ("distill.adapter=learned",)),
    "reference, FeatureNorm weight 30 (FaceNet-CASIA)": ("facenet_casia", (H, {**FN10, "weight": 30.0}), ()),
    "reference, lr 0.05 (FaceNet-CASIA)": ("facenet_casia", (H, FN10), ("optim.lr=0.05",)),
    "reference, batch 128 (FaceNet-CASIA)": ("facenet_casia", (H, FN10), ("train.batch_size=128",)),
}


def main(argv: list[str] | None = None) -> int:
    from facekd.experiments import Row, Runner, protocols
    from facekd.experiments.results import append_result, read_results

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--only", action="append", default=[], help="run only variants whose name contains this")
    p.add_argument("--packs", type=Path, help="folder with dev_train_facenet160.fkpack (eval/teacher_crops.py)")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "recipe-sweep")
    p.add_argument("--results", type=Path, default=REPO / "docs" / "results" / "recipe-sweep-cpu.jsonl")
    p.add_argument("--budget-minutes", type=float, help="start no new variant after this long (0 or less: start none)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    deadline = time.time() + 60 * args.budget_minutes if args.budget_minutes is not None else None
    proto = protocols(REPO)["facekd-dev-cpu"]
    overrides = [*args.overrides, f"train.epochs={args.epochs}", f"eval.every={args.epochs}"]
    runner = Runner(REPO, proto, args.runs, args.results, overrides, packs=args.packs)
    done = {r.row for r in read_results(args.results)}
    for name, (teacher, terms, extra) in VARIANTS.items():
        if name in done or (args.only and not any(o in name for o in args.only)):
            continue
        if deadline is not None and time.time() > deadline:
            print("budget reached: run the same command again to continue")
            return 0
        row = Row("sweep", name, "student5", tuple(json.dumps(t, sort_keys=True) for t in terms), teacher,
                  overrides=extra)
        rec = dataclasses.replace(runner.run_row(row, seed=0), overrides=list(extra))
        append_result(args.results, rec)
        print(f"{name}: LFW {rec.lfw_acc:.2f} ± {rec.lfw_std:.2f} ({rec.seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
