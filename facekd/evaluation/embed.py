"""Embedding aligned crops in batches, with PyTorch or ONNX Runtime."""

from __future__ import annotations

import contextlib
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from facekd.align.template import Template, adapt_crop, template_for_size
from facekd.onnx_metadata import preprocessing_from_metadata
from facekd.errors import FacekdError
from facekd.preprocessing import Preprocessing, to_input
from facekd.runtime.onnx import accelerated, ort_session


class Embedder(Protocol):
    name: str
    pre: Preprocessing
    batch_size: int  # images per forward pass that run fastest on this device
    concurrency: int  # calls that may run at once from threads

    def session(self) -> "contextlib.AbstractContextManager[None]":
        """Context for a run of concurrent calls (e.g. one op thread per caller)."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB crops -> (N, D) float32 embeddings."""


# torch is imported inside the PyTorch paths: serving an ONNX model (facekd verify /
# embed) must not pay its import, seconds on a small CPU.


def optimize_for_cpu(model, input_size: tuple[int, int]):
    """TorchScript-freezes the model and lets oneDNN keep its own layout between layers.

    On the 2-core development machine this made MobileFaceNet 1.5x faster than eager
    mode (190 vs 130 images/s at batch 16). A model that cannot be scripted stays eager.
    """
    import torch

    try:
        with torch.no_grad(), warnings.catch_warnings():
            # TorchScript is deprecated in favour of torch.compile, whose compile time on
            # a 2-core CPU exceeds a whole LFW evaluation; it still works and is faster.
            warnings.simplefilter("ignore", FutureWarning)
            frozen = torch.jit.freeze(torch.jit.script(model))
            fast = torch.jit.optimize_for_inference(frozen)
            fast(torch.zeros(2, 3, *input_size))  # fail here, not mid-run
        return fast
    except Exception:  # noqa: BLE001 - any scripting failure means: run eagerly
        return model


class TorchEmbedder:
    """A PyTorch backbone in eval mode on ``device`` (default: CUDA when present).

    On the CPU, the model is frozen for inference and batches run concurrently from one
    thread per core, each with a single op thread: small batches of a depthwise network
    run faster side by side than one at a time over all cores (254 vs 190 images/s for
    MobileFaceNet on 2 cores).
    """

    def __init__(self, model, pre: Preprocessing, name: str, device: str | None = None, optimize: bool = True) -> None:
        import torch

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.pre = pre
        self.name = name
        if self.device.type == "cpu":
            self.batch_size = 16  # eval/bench_embedding.py: 16 beat 8 and 32 on 2 cores
            self.concurrency = max(1, torch.get_num_threads())
            if optimize:
                self.model = optimize_for_cpu(self.model, pre.input_size)
        else:
            self.batch_size, self.concurrency = 256, 1

    @contextlib.contextmanager
    def session(self):
        import torch

        before = torch.get_num_threads()
        if self.concurrency > 1:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(to_input(batch, self.pre)).to(self.device)
            return self.model(x).float().cpu().numpy()




class OnnxEmbedder:
    """An ONNX embedder run by ONNX Runtime; preprocessing from its facekd metadata."""

    def __init__(self, path: Path | str, pre: Preprocessing | None = None, threads: int | None = None) -> None:
        path = Path(path)
        # Throughput, not a timing: every core, pool threads left spinning between batches.
        self.ort = ort_session(path, threads=threads, providers=accelerated(), spinning=True)
        meta = self.ort.get_modelmeta().custom_metadata_map
        if pre is None:
            pre = preprocessing_from_metadata(meta, path)
        self.pre = pre
        self.name = path.name
        self.input_name = self.ort.get_inputs()[0].name
        self.batch_size, self.concurrency = 32, 1

    @contextlib.contextmanager
    def session(self):
        yield

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = self.ort.run(None, {self.input_name: to_input(batch, self.pre)})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(batch), -1)


def embed_images(
    embedder: Embedder,
    load: Callable[[int], np.ndarray],
    count: int,
    *,
    flip: bool = False,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    fuse: bool = True,
) -> np.ndarray:
    """Embeds ``count`` crops, read one by one with ``load(i)``, in batches.

    With ``flip``, each crop's mirror is embedded in the same batch and the two are
    fused as the embedder's preprocessing says ("concat" or "sum"); with ``fuse=False``
    they are returned side by side instead, ``[image | mirror]`` (see :func:`fuse_flip`),
    so that one pass gives both the plain and the flip embeddings.

    Batches are read and embedded by ``embedder.concurrency`` threads; memory holds a
    few batches at a time, whatever ``count`` is.

    Args:
        batch_size: Images per batch; default: the embedder's preferred forward-pass
            size, halved with ``flip`` (each image also brings its mirror).
    """
    if count == 0:
        raise FacekdError("no images to embed")
    bs = batch_size or max(1, embedder.batch_size // (2 if flip else 1))

    def run(start: int) -> np.ndarray:
        batch = np.stack([load(i) for i in range(start, min(start + bs, count))])
        if not flip:
            return embedder(batch).astype(np.float32)
        both = embedder(np.concatenate([batch, batch[:, :, ::-1]])).astype(np.float32)
        side_by_side = np.concatenate([both[: len(batch)], both[len(batch) :]], axis=1)
        return fuse_flip(side_by_side, embedder.pre.flip_fusion) if fuse else side_by_side

    starts = range(0, count, bs)
    out: np.ndarray | None = None
    with embedder.session(), ThreadPoolExecutor(max_workers=embedder.concurrency) as pool:
        # Submit a bounded window ahead so memory stays flat on large sets.
        window = 4 * embedder.concurrency
        futures = [pool.submit(run, s) for s in starts[:window]]
        for j, start in enumerate(starts):
            emb = futures[j].result()
            futures[j] = None  # free
            if j + window < len(starts):
                futures.append(pool.submit(run, starts[j + window]))
            if out is None:
                out = np.empty((count, emb.shape[1]), np.float32)
            out[start : start + len(emb)] = emb
            if progress:
                progress(min(start + bs, count), count)
    return out


def fuse_flip(side_by_side: np.ndarray, fusion: str) -> np.ndarray:
    """``[image | mirror]`` embeddings fused by ``fusion``: "concat" keeps both, "sum" adds them."""
    if fusion == "concat":
        return side_by_side
    d = side_by_side.shape[1] // 2
    return side_by_side[:, :d] + side_by_side[:, d:]


def crop_loader(want: Template, read: Callable[[int], np.ndarray], describe: Callable[[int], str]):
    """Wraps ``read(i)`` so each crop is checked for size and converted to ``want``
    (its template is known from its size)."""

    def load(i: int) -> np.ndarray:
        img = read(i)
        t = template_for_size(*img.shape[:2])
        if t is None or img.shape[:2] != t.size:
            raise FacekdError(
                f"{describe(i)}: {img.shape[1]}x{img.shape[0]} is not an aligned crop size "
                f"(expected {want.width}x{want.height}); align it first with `facekd align`"
            )
        return adapt_crop(img, t, want)

    return load
