"""The schema of a detector distillation run (``configs/detect/*.yaml``) and its checks:
names and combinations before a run starts, and what a resumed run may change."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from facekd.align.fkdet import DEFAULT_MAX_SIDE
from facekd.config import at_least, fraction, load_config, non_empty, positive, to_dict
from facekd.errors import FacekdError


@dataclass
class DetTermCfg:
    """One detection loss term: a name in ``facekd.detect.losses.DET_TERMS``, its weight and
    the arguments it takes (left out: the term's default)."""

    name: str
    weight: float = field(default=1.0, metadata=at_least(0))
    cls_weight: float | None = None  # hard (Chen's μ)
    box_weight: float | None = None  # hard
    kps_weight: float | None = None  # hard
    w_background: float | None = None  # weighted_soft_ce
    w_face: float | None = None  # weighted_soft_ce
    tau: float | None = field(default=None, metadata=positive())  # weighted_soft_ce
    margin: float | None = field(default=None, metadata=at_least(0))  # bounded_reg
    norm: str | None = None  # hint: l2 | l1
    landmarks: bool | None = None  # objectness_scaled

    def args(self) -> dict:
        return {k: v for k, v in vars(self).items() if k not in ("name", "weight") and v is not None}


@dataclass
class DetDataCfg:
    """Training photos (folders under ``root``, default ``$FACEKD_DATA``) and their labels.

    ``labelled`` photos are labelled by ``labeller``'s final detections (MTCNN: the
    landmarks facekd's templates are built on); ``unlabelled`` photos (Mehta & Ozturk's
    unlabelled data) by ``unlabelled_labeller``'s.
    """

    root: str | None = None
    labelled: list[str] = field(default_factory=lambda: ["celeba-wild"], metadata=non_empty())
    labeller: str = "mtcnn"
    unlabelled: list[str] = field(default_factory=list)
    unlabelled_labeller: str = "yunet"
    limit: int | None = field(default=None, metadata=at_least(1))  # photos per folder (tests)
    val_fraction: float = field(default=0.05, metadata=fraction(high_open=True))


@dataclass
class DetFrameCfg:
    size: int = field(default=256, metadata=at_least(32))
    grid_weights: list[float] = field(default_factory=lambda: [0.5, 0.35, 0.15], metadata=non_empty())
    zoom: list[float] = field(default_factory=lambda: [0.6, 1.6])
    flip: float = field(default=0.5, metadata=fraction())
    grey: float = field(default=0.2, metadata=fraction())
    jitter: float = field(default=0.25, metadata=fraction())


@dataclass
class DetTrainCfg:
    epochs: int = field(default=30, metadata=at_least(1))
    frames_per_epoch: int = field(default=4096, metadata=at_least(1))
    batch_size: int = field(default=32, metadata=at_least(1))
    lr: float = field(default=3e-3, metadata=positive())
    weight_decay: float = field(default=5e-4, metadata=at_least(0))
    warmup_epochs: float = field(default=1.0, metadata=at_least(0))
    seed: int = 0
    threads: int | None = field(default=None, metadata=at_least(1))
    precision: str = "auto"  # auto: bf16 autocast where the CPU has native bf16, else fp32; or bf16, fp32


@dataclass
class DetSparsityCfg:
    """Sparsity induction (Singh et al.): ``weight · Σ_l Σ_k ‖W_l[k]‖₁`` over the filters
    of the convs under ``layers`` (module paths; empty: the backbone and neck, never the
    heads) joins the loss."""

    weight: float = field(default=1e-4, metadata=positive())
    layers: list[str] = field(default_factory=list)


@dataclass
class DetPruneCfg:
    """Filter selection and removal (Singh et al.) of the ``init`` detector before this
    run retrains it: ``ratio`` of each layer's filters (of all together with
    ``global_pruning``) go, ranked by ``importance`` (``l1_next``, ``l1`` or ``random``),
    through Torch-Pruning; the heads keep every channel."""

    ratio: float = field(default=0.25, metadata=fraction(low_open=True, high_open=True))
    importance: str = "l1_next"
    global_pruning: bool = False
    round_to: int | None = field(default=None, metadata=at_least(1))


@dataclass
class DetectorRunCfg:
    """A detector distillation run (``configs/detect/*.yaml``).

    ``init`` starts from a trained detector (a run folder or its ``checkpoints/last.pt``)
    instead of random weights, or, as ``init: yunet`` with ``model: yunet``, from YuNet's
    own weights (the student begins as its teacher); ``prune`` prunes that detector first (it needs ``init``);
    ``sparsity`` adds the L1 penalty of sparsity induction. The three stages of
    multi-layer pruning are then: a run with ``sparsity``, a run with ``init`` (the
    first) and ``prune``, which retrains the pruned detector."""

    model: str = "fkdet_s"
    init: str | None = None
    prune: DetPruneCfg | None = None
    sparsity: DetSparsityCfg | None = None
    teacher: str = "yunet"  # yunet: its maps and hint feed the distillation terms; none: labels only
    # The longer side photos are brought down to before the exported detector's one pass
    # (stored in detector.onnx; facekd align, embed and verify use it): a smaller side is
    # faster and suits large faces (LFW's 250x250 framing at 160: faces of about 75 px).
    max_side: int = field(default=DEFAULT_MAX_SIDE, metadata=at_least(32))
    fm_nms: bool = False
    terms: list[DetTermCfg] = field(default_factory=lambda: [DetTermCfg("hard")], metadata=non_empty())
    data: DetDataCfg = field(default_factory=DetDataCfg)
    frames: DetFrameCfg = field(default_factory=DetFrameCfg)
    train: DetTrainCfg = field(default_factory=DetTrainCfg)


def frame_options(cfg: DetFrameCfg):
    from facekd.detect.data import FrameOptions

    if len(cfg.zoom) != 2 or not 0 < cfg.zoom[0] <= cfg.zoom[1]:
        raise FacekdError(f"frames.zoom must be [low, high] with 0 < low <= high, not {cfg.zoom}")
    if cfg.size % 32:
        raise FacekdError(f"frames.size must be a multiple of 32, not {cfg.size}")
    return FrameOptions(size=cfg.size, grid_weights=tuple(cfg.grid_weights), zoom=tuple(cfg.zoom), flip=cfg.flip,
                        grey=cfg.grey, jitter=cfg.jitter)


def check_config(cfg: DetectorRunCfg) -> None:
    """The config's names and combinations, checked before a run starts (its ranges are
    checked when it is read)."""
    from facekd.detect.losses import DET_TERMS
    from facekd.detect.model import DETECTOR_NETS

    DETECTOR_NETS.get(cfg.model)
    if cfg.teacher not in ("yunet", "none"):
        raise FacekdError(f"teacher is 'yunet' (its maps and hint) or 'none', not {cfg.teacher!r}")
    needs = [t.name for t in cfg.terms if DET_TERMS.get(t.name).needs_teacher or DET_TERMS.get(t.name).needs_hint]
    if needs and cfg.teacher == "none":
        raise FacekdError(f"terms {needs} need YuNet's maps; set teacher: yunet")
    if cfg.fm_nms and cfg.teacher == "none":
        raise FacekdError("fm_nms works on YuNet's maps; set teacher: yunet")
    if cfg.train.precision not in ("auto", "bf16", "fp32"):
        raise FacekdError(f"train.precision is auto, bf16 or fp32, not {cfg.train.precision!r}")
    frame_options(cfg.frames)
    if cfg.prune is not None and not cfg.init:
        raise FacekdError("prune: pruning needs a trained detector to start from; set init to a run folder "
                          "(or its checkpoints/last.pt)")
    if cfg.prune is not None:
        from facekd.prune.importance import IMPORTANCES

        if IMPORTANCES.build(cfg.prune.importance).needs_loss:
            raise FacekdError(f"prune.importance {cfg.prune.importance} needs a labelled loss; the detector "
                              "pruning takes l1_next, l1 or random")
    if cfg.init == YUNET_INIT and cfg.model != "yunet":
        raise FacekdError(f"init: {YUNET_INIT} starts from YuNet's own weights, which only model: yunet has "
                          f"(this run's model is {cfg.model})")
    if cfg.init and cfg.init != YUNET_INIT:
        init_checkpoint(cfg.init)


# ``init`` naming YuNet's own weights (the manifest's yunet_2023mar) for model: yunet.
YUNET_INIT = "yunet"


def init_checkpoint(init: str | Path) -> Path:
    """The checkpoint ``init`` names: a run folder's ``checkpoints/last.pt`` or the file."""
    path = Path(init)
    path = path / "checkpoints" / "last.pt" if path.is_dir() else path
    if not path.is_file():
        raise FacekdError(f"init: {path} not found (name a distill-detector run folder or its checkpoints/last.pt)")
    return path


# What a resumed run may change: how long it runs, on how many threads, and the side its
# export detects at (a finished run resumed with another max_side is exported again).
RESUMABLE_CHANGES = frozenset({"train.epochs", "train.threads", "max_side"})


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_same_run(path: Path, cfg: DetectorRunCfg) -> None:
    """Refuses to resume a run under a config that changes more than its length."""
    if not path.is_file():
        return
    try:
        then = _flat(to_dict(load_config(DetectorRunCfg, path)))
    except FacekdError:
        raise FacekdError(f"{path}: unreadable, so the run cannot be checked before resuming; start a new --out") from None
    now = _flat(to_dict(cfg))
    changed = sorted(k for k in then.keys() | now.keys() if then.get(k) != now.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        raise FacekdError(f"{path.parent}: resuming with a different config ({', '.join(changed)}); resume with the "
                          f"run's own config (only {', '.join(sorted(RESUMABLE_CHANGES))} may change), or choose another --out")
