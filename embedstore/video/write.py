"""Write frames to a real AVI/MP4 file through FFmpeg (PyAV): the phantom cohort and tests use it."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def write_video(path: str | Path, frames: np.ndarray, fps: float = 50.0, codec: str = "mjpeg") -> Path:
    """uint8 frames [T, H, W] (grey) or [T, H, W, 3] (RGB) -> mjpeg/mpeg4 (XVID) in .avi, libx264 in .mp4.

    Quality is set near-lossless so dark cavities and thin leaflets survive the codec.
    """
    import av

    path = Path(path)
    grey = frames.ndim == 3
    height, width = frames.shape[1:3]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = width, height
        if codec == "mjpeg":
            stream.pix_fmt = "yuvj420p"
            stream.codec_context.qscale = 2
        else:
            stream.pix_fmt = "yuv420p"
        if codec == "mpeg4":
            stream.codec_context.codec_tag = "XVID"
            stream.bit_rate = 4_000_000
        if codec == "libx264":
            stream.options = {"crf": "12", "preset": "fast"}
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="gray" if grey else "rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
