"""The schema of a training config (``facekd train CONFIG``); defaults live here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from facekd.config import at_least, fraction, non_empty, positive
from facekd.data.transforms import AugmentCfg


@dataclass(frozen=True)
class ModelCfg:
    """The backbone being trained and the head that classifies training identities."""

    backbone: str = "student5"
    backbone_args: dict = field(default_factory=dict)
    head: str = "cosface"  # a name in facekd.models.heads.HEADS
    head_args: dict = field(default_factory=dict)  # e.g. {scale: 32, margin: 0.3}
    center_loss: float = field(default=0.0, metadata=at_least(0))  # weight of center loss (the teacher's original recipe: 0.008)


@dataclass(frozen=True)
class DataCfg:
    """Where training crops come from and which of them to use.

    Each ``train`` entry is a ``.fkpack`` file, a folder of aligned crops, or a folder of
    photos in identity folders (aligned into the cache first, then reused). A relative
    entry is taken from the working directory when it exists there, otherwise under
    ``root`` (default: ``$FACEKD_DATA``). Identities are merged by name across entries.
    """

    root: str | None = None
    train: list[str] = field(default_factory=lambda: ["celeba-10k", "celeba-wild"], metadata=non_empty())
    min_images: int = field(default=1, metadata=at_least(1))  # drop identities with fewer crops
    max_identities: int | None = field(default=None, metadata=at_least(1))  # keep the N identities with the most crops (slices, smoke runs)
    max_per_identity: int | None = field(default=None, metadata=at_least(1))
    drop_fallbacks: bool = True  # leave out crops the detector found no face in
    # Which detector aligns unaligned photo folders (a name in facekd.align.detector.DETECTORS):
    # mtcnn (the reference), or yunet (about 5x faster on 2 cores; facekd demo --distill).
    detector: str = "mtcnn"
    augment: AugmentCfg = field(default_factory=AugmentCfg)
    # "workers": decode in DataLoader workers, augment each batch in-process;
    # "memory": decode everything once into host memory (uint8), augment each batch in-process;
    # "device": JPEG decode (nvjpeg) and augmentation on the GPU per batch;
    # "device-cache": decode everything once into GPU memory, augment per batch;
    # "auto": memory on CPU / device-cache on GPU when the decoded set fits in a quarter of
    # free memory there, else workers / device.
    loader: Literal["auto", "workers", "memory", "device", "device-cache"] = "auto"
    workers: int | None = field(default=None, metadata=at_least(0))  # DataLoader workers (default: cores - 1, at least 1)


@dataclass(frozen=True)
class OptimCfg:
    """Optimizer (a name in facekd.train.optim.OPTIMIZERS)."""

    name: str = "sgd"
    lr: float = field(default=0.1, metadata=positive())  # for the whole (global) batch
    momentum: float = field(default=0.9, metadata=fraction(high_open=True))
    nesterov: bool = False
    weight_decay: float = field(default=5e-4, metadata=at_least(0))  # conv/linear weights only; biases, norms and PReLU get none
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    prelu_lr_mult: float = field(default=1.0, metadata=positive())  # PReLU slopes learn at lr x this (their own group)


@dataclass(frozen=True)
class ScheduleCfg:
    """Learning-rate schedule (a name in facekd.train.optim.SCHEDULES), per step."""

    name: str = "cosine"
    warmup_epochs: float = field(default=1.0, metadata=at_least(0))  # linear warm-up from ~0 to the full rate
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75, 0.9])  # step: fractions of training
    gamma: float = field(default=0.1, metadata=fraction(low_open=True))  # step: factor at each milestone
    min_lr_ratio: float = field(default=0.0, metadata=fraction())  # cosine: final rate as a fraction of the peak


@dataclass(frozen=True)
class TrainCfg:
    """The loop: length, batch, precision, logging."""

    epochs: int = field(default=40, metadata=at_least(1))
    batch_size: int = field(default=256, metadata=at_least(1))  # global: split evenly over the processes of a distributed run
    seed: int = 0
    device: str = "auto"  # auto: cuda when present
    # Autocast dtype (heads and losses stay fp32). auto: bf16 on CUDA; on a CPU bf16 only
    # with native support (AVX512-BF16 / AMX) and when timed steps confirm it, else fp32.
    # fp16 (with a grad scaler) is CUDA only. See facekd/train/speed.py.
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"  # auto: on CUDA; on a CPU where timed steps show it pays
    compile: bool | Literal["auto"] = "auto"  # torch.compile the backbone; auto: CPU runs long enough to pay
    grad_clip: float | None = field(default=None, metadata=positive())  # max gradient norm
    log_every: int = field(default=50, metadata=at_least(1))  # steps between metrics.jsonl lines
    threads: int | None = field(default=None, metadata=at_least(1))  # CPU op threads (default: torch's)


@dataclass(frozen=True)
class EvalCfg:
    """LFW verification during training (on the main process)."""

    lfw: str | None = "lfw"  # LFW folder, LFW .fkpack or insightface .bin; relative: under data.root
    every: int = field(default=5, metadata=at_least(0))  # epochs; the last epoch is always evaluated; 0: never
    flip: bool = False
    pairs_per_fold: int | None = field(default=None, metadata=at_least(1))  # a quick subset: N same + N different pairs per fold


@dataclass(frozen=True)
class TrainConfig:
    """A whole ``facekd train`` run."""

    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    schedule: ScheduleCfg = field(default_factory=ScheduleCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
