"""The model side of the server: detection, alignment and embedding in a bounded pool.

Every call into ONNX Runtime or OpenCV runs in one :class:`~concurrent.futures.ThreadPoolExecutor`
of ``worker_threads`` threads, so however many requests arrive, at most that many photos
are decoded, detected and embedded at once and the event loop never blocks on them.
ONNX Runtime's session is shared (its ``run`` is thread-safe); the detectors are not
(YuNet keeps its input size between calls), so each running job borrows one
:class:`~facekd.deploy.photos.DetectorChain` of its own from a pool of ``worker_threads``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import queue
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from facekd.deploy.photos import DetectorChain, PhotoError, PhotoFace, align_image, embed_faces, stored_threshold
from facekd.errors import FacekdError
from facekd.evaluation.embed import OnnxEmbedder
from facekd.identify.gallery import file_sha256
from facekd.serve.errors import ApiError
from facekd.serve.images import decode_upload

T = TypeVar("T")


class Engine:
    """The loaded model and detectors, run in a pool of ``threads`` threads.

    Args:
        model: An ``.onnx`` exported by facekd (preprocessing and threshold in its metadata).
        detectors: Detector names tried in order for each photo.
        threads: Size of the pool (and of the detector pool).
        max_pixels: Largest decoded image accepted.

    Raises:
        FacekdError: The model is missing, not an ONNX file, or carries no facekd metadata.
    """

    def __init__(self, model: Path, detectors: tuple[str, ...], threads: int, max_pixels: int) -> None:
        model = Path(model)
        if model.suffix.lower() != ".onnx":
            raise FacekdError(f"{model}: facekd serve needs an exported .onnx model (facekd export)")
        # Each job gets a share of the cores for ONNX Runtime's own operator threads.
        ort_threads = max(1, (os.cpu_count() or 1) // threads)
        self.embedder = OnnxEmbedder(model, threads=ort_threads)
        self.model_path = model
        self.model_name = model.name
        self.model_sha256 = file_sha256(model)
        self.template = self.embedder.pre.template
        self.threshold = stored_threshold(model)
        self.max_pixels = max_pixels
        self.threads = threads
        self._chains: queue.SimpleQueue[DetectorChain] = queue.SimpleQueue()
        for _ in range(threads):
            chain = DetectorChain(detectors)
            chain.get(chain.names[0])  # the first detector loads now, not on the first request
            self._chains.put(chain)
        self.detectors = tuple(detectors)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="facekd-serve")
        probe = np.zeros((1, *self.embedder.pre.input_size, 3), np.uint8)
        self.embedding_dim = int(self.embedder(probe).shape[1])  # loads ORT's kernels now

    async def run(self, fn: Callable[..., T], *args) -> T:
        """``fn(*args)`` in the pool, awaited without blocking the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    def face(self, data: bytes, name: str) -> PhotoFace:
        """Decodes, detects and aligns one upload (runs in a pool thread).

        Raises:
            ApiError: An unusable image (4xx naming the problem), or no face (422 ``no_face``).
        """
        image = decode_upload(data, name, self.max_pixels)
        chain = self._chains.get()
        try:
            return align_image(image, name, chain, self.template)
        except PhotoError as exc:
            raise ApiError(422, "no_face", str(exc)) from None
        finally:
            self._chains.put(chain)

    def embed(self, faces: list[PhotoFace]) -> np.ndarray:
        """(N, D) L2-normalised embeddings (runs in a pool thread)."""
        return embed_faces(self.embedder, faces)

    def faces_and_embeddings(self, uploads: list[tuple[bytes, str]]) -> tuple[list[PhotoFace], np.ndarray]:
        """Aligns every upload, then embeds them in one batch (runs in a pool thread)."""
        faces = [self.face(data, name) for data, name in uploads]
        return faces, self.embed(faces)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
