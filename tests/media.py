"""Small real video files for tests (PyAV), including deliberately broken ones."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def moving_frames(n: int = 24, size: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 [n, size, size, 3]: noise plus a bright square that moves, so codecs keep detail."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 60, size=(n, size, size, 3), dtype=np.uint8)
    for t in range(n):
        x = (t * 2) % (size - 12)
        frames[t, 10:22, x : x + 12] = 230
    return frames


def write_video(path: Path, frames: np.ndarray, fps: int = 50, codec: str = "mjpeg") -> Path:
    """Write frames with PyAV: mjpeg/mpeg4 in .avi, libx264 in .mp4."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec == "mpeg4":
            stream.codec_tag = "XVID"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])
    return Path(path)
