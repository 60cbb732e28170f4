"""A short distillation on this machine's CPU (``facekd demo --distill``): student5 from
the public MobileFaceNet (teacher outputs cached) on the facekd-dev photos, aligned with
YuNet, with the CPU recipe (``configs/distill/demo_cpu.yaml``)."""

from __future__ import annotations

from pathlib import Path

from facekd.config import load_config
from facekd.distill.config import DistillConfig
from facekd.distill.objective import make_distill_objective
from facekd.errors import FacekdError
from facekd.experiments.compare import ComparedModel
from facekd.hub import resolve
from facekd.paths import bundled_config
from facekd.train.checkpoint import CHECKPOINT
from facekd.train.loop import fit

# The facekd-dev training photos (SPEC section 1), under the data root.
DEV_FOLDERS = ("celeba-10k", "celeba-wild")
CONFIG = "distill/demo_cpu.yaml"


def check_distill_data(root: Path) -> None:
    """Refuses, naming what is missing, when the data root lacks the facekd-dev photos."""
    missing = [name for name in DEV_FOLDERS if not (root / name).is_dir()]
    if missing:
        raise FacekdError(
            f"{root}: --distill trains on the facekd-dev photos and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing (identity folders of CelebA photos; "
            "point --data or $FACEKD_DATA at a root holding celeba-10k/ and celeba-wild/)"
        )


def distill_here(root: Path, out: Path, epochs: int, detector: str = "yunet"):
    """Distils student5 into ``out/distill-run`` (resuming what an earlier demo left
    there) and returns it as a :class:`~facekd.experiments.compare.ComparedModel`."""
    if epochs < 1:
        raise FacekdError(f"--distill-epochs must be at least 1 (got {epochs})")
    overrides = [f"data.root={root}", f"train.epochs={epochs}", f"data.detector={detector}"]
    cfg = load_config(DistillConfig, bundled_config(CONFIG), overrides)
    run = out / "distill-run"
    fit(cfg, run, resume=True, make_objective=make_distill_objective)
    student = resolve(run / CHECKPOINT)
    return ComparedModel(f"student5 (this run, {epochs} ep)", "student", student, teacher="mobilefacenet")
