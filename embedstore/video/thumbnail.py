"""Thumbnails (PNG of the middle frame, looping GIF of the clip): pictures that leave video/ for a web page.

Why here: a thumbnail is the one place where frames are shown to people, so it is made only from
frames that went through the store's mask (video/regions.py), never from the raw file.
"""
from __future__ import annotations

import io
from math import ceil
from pathlib import Path

from embedstore.video.read import MAX_FRAMES, Video, read_video

THUMBNAIL_SIDE = 256  # pixels, longer side; smaller frames are kept as they are
GIF_FRAMES = 48  # an animated thumbnail shows at most this many frames (every n-th) at the clip's speed


def thumbnail(path: str | Path, animated: bool, mask: str, max_frames: int = MAX_FRAMES) -> bytes:
    """PNG or GIF bytes of the video file at `path`, masked with the store's setting `mask`."""
    return render_thumbnail(read_video(path, max_frames=max_frames, mask=mask), animated)


def render_thumbnail(video: Video, animated: bool) -> bytes:
    """PNG of the middle frame, or a looping GIF of the clip at its own speed (every n-th frame)."""
    from PIL import Image

    scale = min(1.0, THUMBNAIL_SIDE / max(video.height, video.width))
    size = (max(1, round(video.width * scale)), max(1, round(video.height * scale)))
    out = io.BytesIO()
    if not animated:
        Image.fromarray(video.frames[video.n_frames // 2]).resize(size).save(out, "PNG")
        return out.getvalue()
    step = ceil(video.n_frames / GIF_FRAMES)
    images = [Image.fromarray(frame).resize(size) for frame in video.frames[::step]]
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], loop=0,
                   duration=max(20, round(1000 * step / video.fps)))
    return out.getvalue()
