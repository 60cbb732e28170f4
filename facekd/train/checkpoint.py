"""Run checkpoints: written atomically, read with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers and strings, so the safe loader reads
it: ``backbone`` and ``model`` (what :func:`facekd.loading.load_checkpoint_backbone`
needs, so ``facekd eval lfw --model RUN/checkpoints/last.pt`` works), the head,
optimizer, scheduler and scaler states, the epoch and step reached, every RNG state, the
config and the metrics so far.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch

from facekd.errors import FacekdError
from facekd.io_utils import atomic_write_bytes


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states as weights-only-loadable values."""
    version, keys, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": {"version": version, "keys": torch.tensor(keys, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restores what :func:`rng_state` saved."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(k) for k in py["keys"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        ("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path | str, state: dict) -> None:
    """Serialises to memory, then writes atomically: a kill leaves the old file whole."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path | str) -> dict:
    """Reads a checkpoint safely (``weights_only=True``); errors name the file."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FacekdError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # truncated zip, refused global
        lines = str(exc).splitlines()
        why = next((ln.strip() for ln in lines if "Unsupported global" in ln), lines[0] if lines else "")
        raise FacekdError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {why})") from None
