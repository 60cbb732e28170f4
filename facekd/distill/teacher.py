"""Teacher models: loading one, its outputs on the training crops (computed once, cached
on disk), the file of exported outputs (:func:`write_exported` / :func:`read_exported`,
for a machine without the teacher), and a classifier over the student's identities when
the teacher has none. What the objective holds is built from these by
:mod:`facekd.distill.teacher_sources`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facekd.align.template import adapt_crop, get_template
from facekd.evaluation.embed import TorchEmbedder, embed_images
from facekd.errors import FacekdError
from facekd.models.heads import build_head
from facekd.hub import resolve
from facekd.paths import cache_dir
from facekd.progress import progress_bar
from facekd.train.checkpoint import load_checkpoint, save_checkpoint

Progress = Callable[[int, int], None]
CACHE_VERSION = 1


@dataclass
class TeacherModel:
    """A frozen teacher network (or embedder), as loaded.

    Attributes:
        name: What to call it in logs.
        key: Identifies its weights (a file hash) for the output cache.
        template, mean, std: What input it expects.
        backbone: The PyTorch network (None for an ONNX teacher: cached outputs only).
        embedder: Embeds uint8 crops (PyTorch or ONNX Runtime) for the cache.
        head: Classifier over the student's training identities, if the teacher has one.
        center: Subtract the training set's mean embedding from its outputs before a
            student learns them (see :func:`center_outputs`).
    """

    name: str
    key: str
    template: str
    mean: float
    std: float
    backbone: nn.Module | None
    embedder: object
    head: nn.Module | None = None
    center: bool = False


def _freeze(m: nn.Module) -> nn.Module:
    m.eval()
    m.requires_grad_(False)
    return m


def load_teacher(cfg, identities: list[str], device: torch.device) -> TeacherModel:
    """Loads ``cfg`` (a :class:`~facekd.distill.config.TeacherCfg`), frozen, on ``device``.

    Anything the model hub resolves can teach. A facekd checkpoint trained on the same
    identities (same names in the same order) brings its classifier head; otherwise the
    teacher is an embedder only (a classifier is fitted on its embeddings).
    """
    if not cfg.model:
        raise FacekdError("teacher.model is empty: name a facekd checkpoint, a registered backbone with weights, or an .onnx file")
    ref = resolve(cfg.model, cfg.weights or None)
    pre = ref.pre
    center = pre.center_targets if cfg.center is None else bool(cfg.center)
    if ref.backbone is None:  # ONNX or an external embedder: cached outputs only
        return TeacherModel(name=ref.name, key=ref.key, template=pre.template, mean=pre.mean, std=pre.std,
                            backbone=None, embedder=ref.embedder(str(device)), center=center)
    net = _freeze(ref.backbone).to(device)
    head = ref.head_for(identities)
    if head is not None:
        head = _freeze(head).to(device)
    embedder = TorchEmbedder(net, pre, name=ref.name, device=str(device), optimize=False)
    return TeacherModel(name=ref.name, key=ref.key, template=pre.template, mean=pre.mean, std=pre.std,
                        backbone=net, embedder=embedder, head=head, center=center)


def center_outputs(emb: torch.Tensor, name: str, say: Callable = print) -> torch.Tensor:
    """``emb`` (N, D) minus its mean over the N training crops, in ``emb``'s dtype.

    Logs how much the outputs shared one direction: the norm of the mean of the unit
    embeddings (0 when they spread evenly, 1 when all are the same)."""
    x = emb.float()
    common = float(F.normalize(x, dim=1).mean(0).norm())
    say(f"distill: {name}'s outputs centred (training-set mean subtracted; the mean of its unit embeddings "
        f"had norm {common:.3f})")
    return (x - x.mean(0)).to(emb.dtype)


def crop_adapter(have: str, want: str, pad_value: float = 0.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(batch)`` turning (N, C, H, W) crops aligned to ``have`` into ``want``'s (112x112
    and 112x96 differ by 8 columns on each side); ``pad_value`` fills new columns."""
    if have == want:
        return lambda x: x
    h, w = get_template(have), get_template(want)
    # Where column c of a "want" crop comes from: probe adapt_crop with column numbers.
    probe = np.broadcast_to(np.arange(1, h.width + 1, dtype=np.int64)[None, :, None], (h.height, h.width, 1))
    cols = adapt_crop(np.ascontiguousarray(probe), h, w)[0, :, 0] - 1  # -1 where padded
    src = torch.from_numpy(cols.clip(min=0))
    keep = torch.from_numpy(cols >= 0)

    def adapt(x: torch.Tensor) -> torch.Tensor:
        out = x.index_select(3, src.to(x.device))
        return torch.where(keep.to(x.device).view(1, 1, 1, -1), out, torch.full_like(out, pad_value))

    return adapt


def data_fingerprint(data) -> str:
    """Identifies a training set's crops and labels (its :class:`~facekd.train.data.TrainSetId`,
    sizes, order)."""
    h = hashlib.sha256()
    for part in data.identity.cache_parts():
        h.update(part.encode())
    h.update(data.labels.tobytes())
    for i in range(len(data)):
        h.update(data.describe(i).encode())
    return h.hexdigest()


def teacher_embeddings(teacher: TeacherModel, data, progress: Progress | None = None, say: Callable = print) -> torch.Tensor:
    """The teacher's embeddings of every un-augmented training crop, (N, D) float16 on CPU.

    Computed once per (teacher weights, training crops, preprocessing) and kept under
    the cache (``$FACEKD_CACHE/teacher_outputs``); every run that can use them reuses them.
    Without ``progress`` the pass draws a progress bar (minutes for a large teacher).
    """
    key = hashlib.sha256(
        json.dumps(
            {"v": CACHE_VERSION, "teacher": teacher.key, "data": data_fingerprint(data),
             "pre": [teacher.template, teacher.mean, teacher.std]}
        ).encode()
    ).hexdigest()[:24]
    path = cache_dir() / "teacher_outputs" / f"{key}.pt"
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached["embeddings"].shape[0] == len(data):
                say(f"teacher outputs: reusing {path}")
                return cached["embeddings"]
        except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed, not fatal
            pass
    say(f"teacher outputs: embedding {len(data)} crops with {teacher.name} (once; cached at {path})")

    have, want = get_template(data.template), get_template(teacher.template)
    bar = progress or progress_bar(f"teacher outputs ({teacher.name})")
    emb = embed_images(teacher.embedder, lambda i: adapt_crop(data.image(i), have, want), len(data), progress=bar)
    out = torch.from_numpy(emb).to(torch.float16)

    save_checkpoint(path, {"embeddings": out, "teacher": teacher.name, "crops": len(data)})
    return out


def fit_classifier(
    embeddings: torch.Tensor, labels: torch.Tensor, head_name: str, head_args: dict, epochs: int,
    device: torch.device, seed: int = 0,
) -> tuple[nn.Module, float]:
    """A classifier head over frozen teacher embeddings.

    Class weights start at the normalised class means (already the best cosine
    classifier for well-separated classes), then train ``epochs`` passes with Adam.

    Returns:
        (frozen head, top-1 accuracy on the training crops in %)
    """
    gen = torch.Generator().manual_seed(seed)
    x = embeddings.float().to(device)
    y = labels.to(device)
    n, d = x.shape
    c = int(y.max()) + 1
    head = build_head(head_name, d, c, **head_args).to(device)
    means = torch.zeros(c, d, device=device).index_add_(0, y, F.normalize(x, dim=1))
    with torch.no_grad():
        w = head.weight if hasattr(head, "weight") else head.fc.weight
        w.copy_(F.normalize(means, dim=1) * (1.0 if hasattr(head, "weight") else 10.0))
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    for _ in range(epochs):
        for b in torch.randperm(n, generator=gen).split(1024):
            b = b.to(device)
            loss = F.cross_entropy(head(x[b], y[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = (head(x).argmax(1) == y).float().mean().item() * 100
    return _freeze(head), acc


# --- exported outputs: a teacher's cached outputs in one file that travels --------------


@dataclass(frozen=True)
class ExportedOutputs:
    """A teacher's embeddings of every training crop, in training-set order, with what
    identifies them (``eval/export_teacher_outputs.py`` writes it where the teacher runs).

    Attributes:
        embeddings: (N, D) float16, as the teacher-output cache holds them (not centred).
        teacher, key: The teacher's name and weights key.
        template, mean, std: Its input geometry and normalisation.
        labels, identities: The training set's labels (N,) and identity names.
        center: Whether the teacher's outputs are centred before a student learns them.
    """

    embeddings: torch.Tensor
    teacher: str
    key: str
    template: str
    mean: float
    std: float
    labels: torch.Tensor
    identities: list[str]
    center: bool = False


def write_exported(path: Path | str, out: ExportedOutputs) -> None:
    """Writes ``out`` to ``path`` atomically (a kill leaves no half-written file)."""
    blob = {"embeddings": out.embeddings, "teacher": out.teacher, "key": out.key, "template": out.template,
            "mean": out.mean, "std": out.std, "n": len(out.labels), "labels": out.labels,
            "identities": list(out.identities), "center": out.center}
    save_checkpoint(path, blob)


def read_exported(path: Path | str) -> ExportedOutputs:
    """The outputs :func:`write_exported` wrote (files written before ``center`` was
    recorded read as not centred).

    Raises:
        FacekdError: the file is missing, damaged or not exported outputs, naming it.
    """
    blob = load_checkpoint(path)
    try:
        return ExportedOutputs(
            embeddings=blob["embeddings"], teacher=blob["teacher"], key=blob["key"], template=blob["template"],
            mean=float(blob["mean"]), std=float(blob["std"]), labels=blob["labels"],
            identities=list(blob.get("identities", [])), center=bool(blob.get("center", False)))
    except (KeyError, TypeError) as exc:
        raise FacekdError(f"{path}: not a file of exported teacher outputs (missing {exc})") from None
