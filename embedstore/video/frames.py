"""A decoded video and the limits every decoder enforces; below both readers (read.py: PyAV, dicom.py: pydicom)
and the masking step (regions.py), so none of them imports another to get it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAX_SIDE = 4096  # larger frames are not echo cines; refuse before allocating
MAX_FRAMES = 20_000


@dataclass
class Video:
    """Decoded frames and what is known of their timing; `meta` never holds PHI."""

    frames: np.ndarray  # uint8 [T, H, W, 3]
    fps: float
    format: str
    path: Path | None = None
    meta: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])
