"""``facekd distill-detector``: trains a student face detector from YuNet's maps and a
teacher's final detections (SPEC 4a), resumable, and exports it to ONNX.

A run directory holds ``config.yaml`` (as resolved), ``checkpoints/last.pt`` (after every
epoch, atomically: a kill loses at most the epoch in progress; ``--resume`` continues
from it with the same frames), ``history.jsonl`` (loss parts and validation per epoch),
and at the end ``detector.onnx`` (with facekd metadata) and ``record.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from facekd.align.base import box_iou
from facekd.align.grid import assign, decode
from facekd.config import save_config, to_dict
from facekd.detect.config import (
    YUNET_INIT,
    DetectorRunCfg,
    check_config,
    check_same_run,
    frame_options,
    init_checkpoint,
)
from facekd.detect.data import LabelledPhotos, frame_rng, load_photos, make_frame
from facekd.detect.export import export_detector
from facekd.detect.losses import DetBatch, DetectionObjective
from facekd.detect.model import DETECTOR_NETS
from facekd.detect.teacher import YunetMaps
from facekd.io_utils import atomic_write_bytes, atomic_write_json
from facekd.models.records import records
from facekd.errors import FacekdError
from facekd.paths import cache_dir, data_root
from facekd.progress import progress_bar
from facekd.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from facekd.train.speed import cpu_info


def _to_torch(maps: dict[str, list[np.ndarray]]) -> dict[str, list[torch.Tensor]]:
    return {k: [torch.from_numpy(np.ascontiguousarray(m)) for m in v] for k, v in maps.items()}


def _batch_targets(faces, size: int):
    per = [assign(f, size, size) for f in faces]
    out = {}
    for key in ("pos", "bbox", "kps", "kps_known"):
        out[key] = [torch.from_numpy(np.stack([p[key][i] for p in per])) for i in range(len(per[0][key]))]
    return out


def split_photos(photos, val_fraction: float, seed: int):
    """Training and validation photos: every photo goes to one side only."""
    rng = np.random.default_rng(seed + 7919)
    order = rng.permutation(len(photos))
    n_val = int(round(len(photos) * val_fraction))
    val, tr = set(order[:n_val].tolist()), order[n_val:]

    def take(idx):
        return LabelledPhotos([photos.images[i] for i in idx], [photos.faces[i] for i in idx],
                              [photos.sources[i] for i in idx])

    return take(sorted(tr.tolist())), take(sorted(val))


@torch.no_grad()
def _detections(model, frames: list[np.ndarray], score: float) -> list[np.ndarray]:
    """Each frame's decoded detections (``facekd.align.grid.decode`` rows, best first)
    scoring at least ``score``."""
    model.eval()
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()
    outs = model(x)
    model.train()
    names = ("cls", "obj", "bbox", "kps")
    return [decode({k: [outs[j * 3 + i][b].numpy() for i in range(3)] for j, k in enumerate(names)}, score_threshold=score)
            for b in range(len(frames))]


def _agreement(detections: list[np.ndarray], faces, score: float) -> dict[str, float]:
    """Recall, precision (IoU >= 0.5 with a label) and landmark error (mean pixel distance
    over matched faces, divided by the label's inter-ocular distance) of the detections
    scoring at least ``score``. Greedy NMS keeps a box only for boxes scoring higher, so
    the detections above a score are those a decode at that score gives."""
    tp = n_det = n_gt = 0
    nme = []
    for rows, gt in zip(detections, faces):
        det = rows[rows[:, 14] >= score]
        n_det += len(det)
        n_gt += len(gt)
        used = set()
        for d in det:
            best, bi = 0.5, -1
            for g in range(len(gt)):
                if g in used:
                    continue
                iou = box_iou(d[:4], gt.boxes[g])
                if iou >= best:
                    best, bi = iou, g
            if bi >= 0:
                used.add(bi)
                tp += 1
                lm = d[4:14].reshape(5, 2)
                io = float(np.linalg.norm(gt.landmarks[bi][0] - gt.landmarks[bi][1]))
                nme.append(float(np.linalg.norm(lm - gt.landmarks[bi], axis=1).mean()) / max(io, 1.0))
    return {"recall": tp / max(n_gt, 1), "precision": tp / max(n_det, 1), "nme": float(np.mean(nme)) if nme else float("nan")}


def validate(model, frames: list[np.ndarray], faces, score: float = 0.6) -> dict[str, float]:
    """:func:`_agreement` of the model's detections on fixed frames with their labels."""
    return _agreement(_detections(model, frames, score), faces, score)


SCORE_GRID = tuple(round(0.1 * k, 1) for k in range(1, 10))


def choose_min_score(model, frames: list[np.ndarray], faces) -> float:
    """The score (of ``SCORE_GRID``) with the best F1 of recall and precision against the
    labels of the validation frames: the detector's operating score. One pass over the
    frames; each score filters its detections."""
    detections = _detections(model, frames, min(SCORE_GRID))
    best, best_f1 = 0.6, -1.0
    for s in SCORE_GRID:
        v = _agreement(detections, faces, s)
        f1 = 2 * v["recall"] * v["precision"] / max(v["recall"] + v["precision"], 1e-9)
        if f1 > best_f1 + 1e-9:
            best, best_f1 = s, f1
    return best


def _rebuilt(arch: str, state: dict) -> torch.nn.Module:
    """The detector a checkpoint holds: its registered size with its pruning replayed."""
    if state.get("transforms"):
        from facekd.detect.prune import rebuild_detector  # Torch-Pruning: only for a pruned detector

        model = rebuild_detector(arch, state["transforms"])
    else:
        model = DETECTOR_NETS.build(arch)
    model.load_state_dict(state["model"])
    return model


def _detector(cfg: DetectorRunCfg, resumed: dict | None, log) -> torch.nn.Module:
    """The detector the run trains: the run's own when it resumes, else ``init``'s
    (pruned by ``cfg.prune``), else a fresh one of the registered size."""
    if resumed is not None:
        return _rebuilt(cfg.model, resumed)
    if not cfg.init:
        return DETECTOR_NETS.build(cfg.model)
    if cfg.init == YUNET_INIT:
        from facekd.detect.yunet_net import load_yunet_weights

        model = load_yunet_weights(DETECTOR_NETS.build(cfg.model))
        log("init: YuNet's own weights (yunet_2023mar)")
    else:
        path = init_checkpoint(cfg.init)
        state = load_checkpoint(path)
        if state.get("arch") != cfg.model:
            raise FacekdError(f"init: {path} holds a {state.get('arch')} detector, not this run's model {cfg.model}")
        model = _rebuilt(cfg.model, state)
        log(f"init: {path} (epoch {state.get('epoch')})")
    if cfg.prune is not None:
        from facekd.detect.prune import prune_detector

        p = cfg.prune
        before = sum(t.numel() for t in model.parameters())
        model = prune_detector(model, p.ratio, importance=p.importance, global_pruning=p.global_pruning,
                               round_to=p.round_to)
        log(f"pruned {p.importance} {p.ratio:g}{' (global)' if p.global_pruning else ''}: {before:,} -> "
            f"{sum(t.numel() for t in model.parameters()):,} parameters")
    return model


def train_detector(cfg: DetectorRunCfg, out: Path, resume: bool = False, log=print) -> Path:
    """Runs ``cfg`` into ``out``; returns the exported ONNX file."""
    out = Path(out)
    ckpt_path = out / "checkpoints" / "last.pt"
    if ckpt_path.exists() and not resume:
        raise FacekdError(f"{out}: a run is already there; --resume continues it, or choose another --out")
    check_config(cfg)  # before anything is written
    if resume and ckpt_path.exists():
        check_same_run(out / "config.yaml", cfg)
    out.mkdir(parents=True, exist_ok=True)

    save_config(cfg, out / "config.yaml")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)

    root = data_root(cfg.data.root)
    labels = cache_dir() / "detect-labels"
    photos = load_photos(cfg.data.labelled, root, cfg.data.labeller, labels, cfg.data.limit,
                         progress_bar(f"label ({cfg.data.labeller})"))
    n_labelled = len(photos)
    if cfg.data.unlabelled:
        photos = photos + load_photos(cfg.data.unlabelled, root, cfg.data.unlabelled_labeller, labels, cfg.data.limit,
                                      progress_bar(f"label ({cfg.data.unlabelled_labeller})"))
    train_set, val_set = split_photos(photos, cfg.data.val_fraction, cfg.train.seed)
    opts = frame_options(cfg.frames)
    val_frames, val_faces = [], []
    if len(val_set):
        for i in range(min(128, 4 * len(val_set))):
            f, faces = make_frame(val_set, opts, frame_rng(10_000 + cfg.train.seed, 0, i))
            val_frames.append(f)
            val_faces.append(faces)

    resumed = load_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None
    model = _detector(cfg, resumed, log)
    objective = DetectionObjective([(t.name, t.weight, t.args()) for t in cfg.terms], model.neck_channels,
                                   use_fm_nms=cfg.fm_nms)
    wants_teacher = objective.needs_teacher
    teacher = None
    if wants_teacher:
        teacher = YunetMaps(threads=cfg.train.threads)
    wants_hint = any(getattr(t, "needs_hint", False) for t in objective.terms)
    sparse_layers = None
    if cfg.sparsity is not None:
        from facekd.detect.prune import detector_layers, sparsity_penalty

        sparse_layers = detector_layers(model, cfg.sparsity.layers)
    params = list(model.parameters()) + list(objective.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    steps_per_epoch = max(1, cfg.train.frames_per_epoch // cfg.train.batch_size)
    total = steps_per_epoch * cfg.train.epochs
    warm = int(cfg.train.warmup_epochs * steps_per_epoch)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return float(0.5 * (1 + np.cos(np.pi * (step - warm) / max(1, total - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    start = 0
    if resumed is not None:
        state = resumed
        objective.load_state_dict(state["objective"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start = int(state["epoch"])
        if (out / "history.jsonl").exists():  # rows of an epoch killed after its row was written go
            rows = [r for r in _read_history(out / "history.jsonl") if r.get("epoch", 0) <= start]
            atomic_write_bytes(out / "history.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
        log(f"resumed {ckpt_path} after epoch {start}")
    cpu = cpu_info()
    precision = cfg.train.precision if cfg.train.precision != "auto" else ("bf16" if cpu.native_bf16 else "fp32")
    model = model.to(memory_format=torch.channels_last)
    log(f"{cfg.model}: {sum(p.numel() for p in model.parameters()):,} parameters; {len(train_set)} training photos "
        f"({n_labelled} labelled by {cfg.data.labeller}), {len(val_set)} validation; terms "
        f"{', '.join(objective.names)}{' + FM-NMS' if cfg.fm_nms else ''}; {precision}; {cpu.describe()}")
    history = out / "history.jsonl"
    model.train()
    for epoch in range(start, cfg.train.epochs):
        t0 = time.time()
        sums: dict[str, float] = {}
        bar = progress_bar(f"epoch {epoch + 1}/{cfg.train.epochs}", unit="step")
        for step in range(steps_per_epoch):
            idx = range(step * cfg.train.batch_size, (step + 1) * cfg.train.batch_size)
            made = [make_frame(train_set, opts, frame_rng(cfg.train.seed, epoch, i)) for i in idx]
            frames = np.stack([m[0] for m in made])
            tg = _batch_targets([m[1] for m in made], opts.size)
            tmaps = hint = None
            if teacher is not None:
                tm, th = teacher(frames)
                tmaps = _to_torch(tm)
                hint = torch.from_numpy(th) if wants_hint else None
            x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                feats = model.features(x)
                smaps = model.maps(feats)
            feats = [f.float() for f in feats]
            smaps = {k: [t.float() for t in v] for k, v in smaps.items()}
            batch = DetBatch(student=smaps, guided=feats[0], pos=tg["pos"], box_t=tg["bbox"], kps_t=tg["kps"],
                             kps_known=tg["kps_known"], teacher=tmaps, hint=hint)
            loss, parts = objective(batch)
            if sparse_layers is not None:
                penalty = cfg.sparsity.weight * sparsity_penalty(model, sparse_layers)
                loss, parts = loss + penalty, {**parts, "sparsity": float(penalty.detach())}
            if not torch.isfinite(loss):
                raise FacekdError(f"{out}: the loss is {float(loss)} at epoch {epoch + 1}, step {step + 1} "
                                  f"(parts {parts}); lower train.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            sched.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar(step + 1, steps_per_epoch)
        rec = {"epoch": epoch + 1, "seconds": round(time.time() - t0, 1),
               "frames_per_s": round(steps_per_epoch * cfg.train.batch_size / (time.time() - t0), 1),
               "loss": {k: round(v / steps_per_epoch, 5) for k, v in sums.items()}}
        if val_frames:
            rec["val"] = {k: round(v, 4) for k, v in validate(model, val_frames, val_faces).items()}
        with open(history, "a") as fh:  # a torn last line (a kill) is skipped by readers
            fh.write(json.dumps(rec) + "\n")
        save_checkpoint(ckpt_path, {"model": model.state_dict(), "objective": objective.state_dict(),
                                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                    "rng": rng_state(), "epoch": epoch + 1, "arch": cfg.model,
                                    "transforms": records(model)})
        log(json.dumps(rec))

    min_score = choose_min_score(model, val_frames, val_faces) if val_frames else 0.6
    log(f"operating score {min_score:.2f} (best F1 on the validation frames)")
    onnx_path = export_detector(model, cfg.model, out / "detector.onnx", min_score=min_score, max_side=cfg.max_side)
    atomic_write_json(out / "record.json", {"config": to_dict(cfg), "cpu": cpu.describe(), "precision": precision,
                                            "parameters": sum(p.numel() for p in model.parameters()),
                                            "min_score": min_score,
                                            "history": _read_history(history)})
    return onnx_path


def _read_history(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows
