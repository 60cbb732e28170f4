"""Exports a distillation config's teacher outputs (its cached embeddings of the training
crops, in training-set order) to one file that travels, for a machine without the teacher.

An accelerator machine may lack the teacher's weights and its own crop pack (FaceNet-CASIA:
94 MB of weights, 76 MB of 160x160 crops), too large to carry. Export here, where the
teacher runs (its outputs come from facekd's teacher cache, computed once), then train there
with the same config and ``--set teacher.outputs=FILE`` (the ``exported`` teacher source)::

    facekd distill configs/distill/cpu_recipe.yaml --set teacher.model=facenet_casia --out RUN \\
        --set teacher.outputs=.carry/facenet_dev_emb.pt --set 'data.train=[.carry/dev_train_q85.fkpack]'


Usage (dev CPU)::

    python eval/export_teacher_outputs.py configs/distill/cpu_recipe.yaml --set teacher.model=facenet_casia \\
        .carry/facenet_dev_emb.pt --set 'data.train=[/tmp/dev_train_q85.fkpack]' \\
        --set teacher.crops=/tmp/dev_train_facenet160.fkpack
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facekd.config import load_config  # noqa: E402
from facekd.distill.config import DistillConfig  # noqa: E402
from facekd.distill.teacher import ExportedOutputs, load_teacher, teacher_embeddings, write_exported  # noqa: E402
from facekd.distill.teacher_crops import teacher_inputs  # noqa: E402
from facekd.models import backbone_cfg  # noqa: E402
from facekd.train.data import build_train_set  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="distillation config (the teacher and the training data)")
    p.add_argument("out", type=Path, help="file to write (.pt)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)

    cfg = load_config(DistillConfig, args.config, args.overrides)
    data = build_train_set(cfg.data, backbone_cfg(cfg.model.backbone).pre.template)
    t = load_teacher(cfg.teacher, data.identities, torch.device("cpu"))
    emb = teacher_embeddings(t, teacher_inputs(cfg.teacher.crops, t.template, data))
    write_exported(args.out, ExportedOutputs(
        embeddings=emb, teacher=t.name, key=t.key, template=t.template, mean=t.mean, std=t.std,
        labels=torch.from_numpy(data.labels), identities=data.identities, center=t.center))
    print(f"{args.out}: {tuple(emb.shape)} embeddings of {t.name} over {len(data)} training crops")
    return 0


if __name__ == "__main__":
    sys.exit(main())
