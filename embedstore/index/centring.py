"""Centring: a vector set's mean removed and rows re-normalised, for indexes and the leaderboard.

Why: raw R3D outputs share one large component (random-init vectors have cosines near 0.9998 with
each other), so cosine neighbours are ranked by tiny residuals; removing the set's mean lets the
differences between videos decide. The mean is part of the index (its sidecar records it) and is
applied to every query, so stored and query vectors stay comparable.
"""
from __future__ import annotations

import numpy as np

from embedstore.errors import BadInput


def vector_mean(vectors: np.ndarray) -> np.ndarray:
    """float32 [D]: the mean row (float64 accumulation: large sets lose no precision)."""
    if len(vectors) == 0:
        raise BadInput("cannot centre an empty vector set")
    return np.asarray(vectors, dtype=np.float64).mean(axis=0).astype(np.float32)


def centre(vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """float32 [N, D]: rows minus `mean`, L2-normalised (a row equal to the mean stays zero)."""
    x = np.asarray(vectors, dtype=np.float32) - np.asarray(mean, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def centred(vectors: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    """`vectors` centred on `mean`, or as they are when the set is not centred (mean None)."""
    return vectors if mean is None else centre(vectors, mean)
