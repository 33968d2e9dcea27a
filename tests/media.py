"""Small real video files for tests (PyAV), including deliberately broken ones."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from embedstore.video.write import write_video  # noqa: F401  (re-exported for tests)


def moving_frames(n: int = 24, size: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 [n, size, size, 3]: noise plus a bright square that moves, so codecs keep detail."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 60, size=(n, size, size, 3), dtype=np.uint8)
    for t in range(n):
        x = (t * 2) % (size - 12)
        frames[t, 10:22, x : x + 12] = 230
    return frames


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])
    return Path(path)
