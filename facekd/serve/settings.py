"""What ``facekd serve`` is started with: one typed record, checked before anything loads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from facekd.deploy.photos import DEFAULT_DETECTORS
from facekd.errors import FacekdError

# Pillow refuses images above 89 Mpx by default (and only warns above 44.7); a face
# photo needs far less, and a 40 Mpx RGB image is already 120 MB decoded.
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class ServeSettings:
    """Everything the HTTP server is built from.

    Attributes:
        model: The exported ``.onnx`` that embeds every face (its template and verify
            threshold come from its facekd metadata).
        gallery: The gallery the ``/v1/identify`` and ``/v1/people`` routes use: a
            SQLite file path (created with ``model`` when missing).
        host: Address to bind. Anything but loopback requires ``api_key_file``.
        port: TCP port.
        api_key_file: File of accepted API keys, one a line (``#`` comments and blank
            lines ignored). With it, every ``/v1`` route but health needs ``X-API-Key``.
        worker_threads: Threads that detect, align and embed (the bounded pool every
            ONNX Runtime call runs in).
        max_body_mb: Largest request body accepted, in MiB (413 beyond).
        max_pixels: Largest decoded image accepted, in pixels (a 4xx beyond).
        detectors: Face detectors tried in order for each photo.
        max_connections: Connections served at once; uvicorn answers 503 beyond.
    """

    model: Path
    gallery: str
    host: str = "127.0.0.1"
    port: int = 8000
    api_key_file: Path | None = None
    worker_threads: int = 2
    max_body_mb: float = 16.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    detectors: tuple[str, ...] = DEFAULT_DETECTORS
    max_connections: int = 128

    def __post_init__(self) -> None:
        if self.worker_threads < 1:
            raise FacekdError(f"--workers-threads must be at least 1 (got {self.worker_threads})")
        if not 0 < self.max_body_mb <= 1024:
            raise FacekdError(f"--max-body-mb must be in (0, 1024] (got {self.max_body_mb})")
        if self.max_pixels < 1:
            raise FacekdError(f"max_pixels must be positive (got {self.max_pixels})")
        if not 0 <= self.port <= 65535:
            raise FacekdError(f"--port must be in 0..65535 (got {self.port})")
        if not self.detectors:
            raise FacekdError("name at least one face detector")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)
