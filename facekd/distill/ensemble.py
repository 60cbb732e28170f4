"""An ensemble teacher: several teachers' L2-normalised embeddings, concatenated.

For members with embeddings ``e_1..e_k`` of one photo (each from its own crop), the
ensemble's embedding is ``[e_1/|e_1|, ..., e_k/|e_k|]``; the cosine of two such
embeddings is the mean of the members' cosines, so the ensemble verifies by the
members' average similarity, whatever their embedding sizes.

Its classifier over the student's identities: a cosine head on the concatenation whose
class weights start at the normalised class means (:func:`facekd.distill.teacher.fit_classifier`);
at that start its logit for class ``c`` is ``s * mean_i cos(e_i, mu_i,c)`` up to the
norm of the concatenated mean, i.e. the members' class-mean classifiers combined by
averaging their cosines, then trained on the frozen concatenation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from facekd.errors import FacekdError
from facekd.preprocessing import l2_normalize


@dataclass(frozen=True)
class EnsembleMember:
    """One member: a model spec for the hub, its weights, and where its crops come from."""

    model: str
    weights: str | None = None
    crops: str | None = None  # a pack or folder of this member's crops (None: the student's)


def combine(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenates each member's (N, D_i) embeddings after L2-normalising each row.

    Raises:
        FacekdError: members disagree on the number of images, or none are given.
    """
    if not parts:
        raise FacekdError("an ensemble needs at least one member")
    n = {len(p) for p in parts}
    if len(n) != 1:
        raise FacekdError(f"ensemble members embedded different numbers of images: {sorted(n)}")
    out = []
    for p in parts:
        out.append(l2_normalize(np.asarray(p, dtype=np.float32)))
    return np.concatenate(out, axis=1)
