"""Synthetic vectors that look like embeddings, for benchmarks and index tests (see BENCHMARKING.md).

Independent Gaussian vectors in 512-d are nearly equidistant, the worst case for any approximate
index; real embeddings have a low intrinsic dimension. The recipe here:
  `centres` cluster centres ~ N(0, I) in a `latent`-d space; a point = centre + `spread` x N(0, I);
  mapped into `dim` dimensions through a random orthonormal latent x dim matrix; plus `noise` x N(0, I)
  in `dim` dimensions; L2-normalised, float32.
Defaults: 2,000 centres, 48-d latent, spread 0.5, noise 0.02. Queries are fresh draws from the same
mixture (`sample` with another seed), never copies of stored points.
"""
from __future__ import annotations

import numpy as np

CHUNK = 100_000  # rows generated at a time, so 1M x 512 needs no float64 copy of the whole matrix


class LatentMixture:
    """One embedding-like distribution: its centres and basis are fixed by `seed`."""

    def __init__(self, dim: int = 512, centres: int = 2000, latent: int = 48, spread: float = 0.5,
                 noise: float = 0.02, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim, self.spread, self.noise = dim, spread, noise
        self.centres = rng.standard_normal((centres, latent)).astype(np.float32)
        self.basis = np.linalg.qr(rng.standard_normal((dim, latent)))[0].T.astype(np.float32)  # orthonormal rows

    def sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(vectors [n, dim] float32, unit rows; the centre index of each row)."""
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, len(self.centres), size=n)
        out = np.empty((n, self.dim), dtype=np.float32)
        for start in range(0, n, CHUNK):
            idx = labels[start : start + CHUNK]
            latent = self.centres[idx] + self.spread * rng.standard_normal((len(idx), self.centres.shape[1]), dtype=np.float32)
            block = latent @ self.basis + self.noise * rng.standard_normal((len(idx), self.dim), dtype=np.float32)
            out[start : start + len(idx)] = block / np.linalg.norm(block, axis=1, keepdims=True)
        return out, labels


def embedding_like(n: int, dim: int = 512, seed: int = 1, space_seed: int = 0, **mixture) -> np.ndarray:
    """n embedding-like unit vectors; the same space_seed gives the same distribution."""
    return LatentMixture(dim, seed=space_seed, **mixture).sample(n, seed)[0]
