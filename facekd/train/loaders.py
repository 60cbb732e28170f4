"""The loaders that turn a batch of training crops (:class:`facekd.train.data.TrainSet`)
into normalised tensors on the training device.

The training set holds encoded JPEG bytes (a pack is memory-mapped; a folder is read
file by file). Four loaders, chosen by ``data.loader``:

Every loader yields ``(images, labels, indices)`` on the training device; the indices
name the crops (a distillation run looks up cached teacher outputs by them).

- ``workers``: decode (PIL) in DataLoader worker processes; augment each batch in the
  training process.
- ``memory``: decode the whole set once into host memory as uint8 (facekd-dev's 14,350
  crops of 112x96 take 0.46 GB), then each batch is an index and a batched torch
  augmentation in the training process: on a CPU the cores train instead of decoding.
- ``device``: per batch, JPEG decode on the GPU (nvjpeg, ``torchvision.io.decode_jpeg``)
  and augmentation on the GPU; a background thread gathers the bytes ahead.
- ``device-cache``: as ``memory``, but in device memory (CASIA-WebFace's 494k crops take
  16 GB): the data path costs next to nothing.

Every loader augments with the one implementation,
:func:`facekd.data.gpu_augment.augment_batch`, drawing from a generator seeded by the run's
seed and the epoch alone, and normalises with :func:`facekd.preprocessing.normalize_pixels`:
for the same seed they give the same batches, up to the JPEG decoder (PIL in ``workers``,
torchvision elsewhere: a pixel may differ by a grey level or two).
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from facekd.align.template import get_template
from facekd.data.gpu_augment import augment_batch
from facekd.data.transforms import AugmentCfg
from facekd.errors import FacekdError
from facekd.preprocessing import normalize_pixels
from facekd.registry import Registry
from facekd.train.data import TrainSet

# --- loaders ---------------------------------------------------------------------------

LOADERS: Registry = Registry("loader")


@dataclass
class LoaderCtx:
    """What every loader needs."""

    data: TrainSet
    augment: AugmentCfg
    mean: float
    std: float
    device: torch.device
    workers: int
    seed: int


def _augment_gen(ctx: LoaderCtx, epoch: int) -> torch.Generator:
    """The augmentation draws of one epoch: the same in every loader, and on resume."""
    return torch.Generator().manual_seed(ctx.seed * 100_003 + epoch + 7)


class _Decode:
    """Dataset for DataLoader workers: index -> (HxWx3 uint8 crop, label, index)."""

    def __init__(self, data: TrainSet) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return torch.from_numpy(np.array(self.data.image(i))), int(self.data.labels[i]), i  # a writable copy


@LOADERS.register("workers")
class WorkerLoader:
    """Decode in DataLoader worker processes; augment each batch in the training process
    (the CPU path for a set too large to hold decoded)."""

    def __init__(self, ctx: LoaderCtx) -> None:
        self.ctx = ctx
        self.dataset = _Decode(ctx.data)

    def epoch(self, batches: list[np.ndarray], epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        ctx = self.ctx
        gen = _augment_gen(ctx, epoch)
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=[b.tolist() for b in batches],
            num_workers=ctx.workers,
            pin_memory=ctx.device.type == "cuda",
            prefetch_factor=4 if ctx.workers else None,
        )
        for img, y, idx in loader:
            x = img.to(ctx.device, non_blocking=True).permute(0, 3, 1, 2)
            x = normalize_pixels(augment_batch(x, ctx.augment, gen), ctx.mean, ctx.std)
            yield x, y.to(ctx.device, non_blocking=True), idx.to(ctx.device)


def decode_on(device: torch.device, blobs: list[bytes]) -> torch.Tensor:
    """JPEG bytes -> (N, 3, H, W) uint8 on ``device`` (nvjpeg on CUDA, libjpeg on CPU)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    return torch.stack(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))


@LOADERS.register("device")
class DeviceLoader:
    """Per batch: bytes gathered by a thread, decoded and augmented on the device."""

    def __init__(self, ctx: LoaderCtx) -> None:
        self.ctx = ctx

    def epoch(self, batches: list[np.ndarray], epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        ctx = self.ctx
        gen = _augment_gen(ctx, epoch)
        q: queue.Queue = queue.Queue(maxsize=6)
        stop = threading.Event()

        def gather() -> None:
            try:
                for b in batches:
                    if stop.is_set():
                        return
                    q.put(([ctx.data.raw(i) for i in b], torch.from_numpy(ctx.data.labels[b]), torch.from_numpy(b)))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                q.put(exc)
                return
            q.put(None)

        t = threading.Thread(target=gather, daemon=True)
        t.start()
        try:
            while (item := q.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                blobs, y, idx = item
                x = augment_batch(decode_on(ctx.device, blobs), ctx.augment, gen)
                yield normalize_pixels(x, ctx.mean, ctx.std), y.to(ctx.device, non_blocking=True), idx.to(ctx.device)
        finally:
            stop.set()
            while t.is_alive():  # unblock a producer waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    t.join(timeout=0.05)


class _CacheLoader:
    """Decodes the whole set once into ``store`` memory (uint8), then indexes batches and
    augments them there; batches are handed over on the training device."""

    def __init__(self, ctx: LoaderCtx, store: torch.device, chunk: int = 1024) -> None:
        self.ctx = ctx
        n = len(ctx.data)
        self.images: torch.Tensor | None = None
        for start in range(0, n, chunk):  # filled in place: no second copy of the set at the peak
            part = decode_on(store, [ctx.data.raw(i) for i in range(start, min(n, start + chunk))])
            if self.images is None:
                self.images = torch.empty((n, *part.shape[1:]), dtype=torch.uint8, device=store)
            if part.shape[1:] != self.images.shape[1:]:
                raise FacekdError(f"{ctx.data.describe(start)}: crops of {tuple(part.shape[2:])} among "
                                  f"crops of {tuple(self.images.shape[2:])}")
            self.images[start : start + len(part)] = part
        self.labels = torch.from_numpy(ctx.data.labels).to(store)

    def epoch(self, batches: list[np.ndarray], epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        ctx = self.ctx
        gen = _augment_gen(ctx, epoch)
        store = self.images.device
        for b in batches:
            idx = torch.from_numpy(b).to(store, non_blocking=True)
            x = normalize_pixels(augment_batch(self.images.index_select(0, idx), ctx.augment, gen), ctx.mean, ctx.std)
            dev = ctx.device
            yield (x.to(dev, non_blocking=True), self.labels.index_select(0, idx).to(dev, non_blocking=True),
                   idx.to(dev, non_blocking=True))


@LOADERS.register("memory")
class MemoryLoader(_CacheLoader):
    """The set decoded once into host memory (uint8); each batch augmented in-process
    with batched torch ops (the CPU path)."""

    def __init__(self, ctx: LoaderCtx, chunk: int = 1024) -> None:
        super().__init__(ctx, torch.device("cpu"), chunk)


@LOADERS.register("device-cache")
class DeviceCacheLoader(_CacheLoader):
    """The set decoded once into device memory (uint8); batches indexed and augmented there."""

    def __init__(self, ctx: LoaderCtx, chunk: int = 1024) -> None:
        super().__init__(ctx, ctx.device, chunk)


def decoded_bytes(data: TrainSet) -> int:
    """Bytes the set takes decoded as uint8 (``memory`` / ``device-cache``)."""
    h, w = get_template(data.template).size
    return len(data) * 3 * h * w


def host_available_bytes() -> int:
    """Memory the kernel can hand out without swapping (``MemAvailable``)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class LoaderChoice:
    """The loader ``data.loader`` resolved to, and why (for the run's first line)."""

    name: str
    reason: str


def choose_loader(name: str, data: TrainSet, device: torch.device) -> LoaderChoice:
    """Resolves ``auto``: the decoded set cached (``memory`` on the CPU, ``device-cache``
    on CUDA) when it fits in a quarter of free memory there; else per-batch decoding
    (``workers`` on the CPU, ``device`` on CUDA)."""
    if name != "auto":
        return LoaderChoice(name, "data.loader")
    need = decoded_bytes(data)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        where, cached, per_batch = "device", "device-cache", "device"
    else:
        free = host_available_bytes()
        where, cached, per_batch = "host", "memory", "workers"
    fits = need < free // 4
    reason = (f"auto: {need / 2**30:.2f} GiB decoded {'fits' if fits else 'does not fit'} in a quarter of "
              f"{free / 2**30:.1f} GiB free {where} memory")
    return LoaderChoice(cached if fits else per_batch, reason)
