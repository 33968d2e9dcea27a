"""Decode a video file into uint8 RGB frames [T, H, W, 3] plus its frame rate.

AVI and MP4 go through PyAV (FFmpeg); DICOM through pydicom (embedstore.video.dicom). Every failure
is a VideoError naming the file and the problem, so a batch can report it and go on.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from embedstore.errors import NotFound, TooManyFrames, VideoError
from embedstore.video.frames import MAX_FRAMES, MAX_SIDE, Video

VIDEO_SUFFIXES = {".avi": "avi", ".mp4": "mp4", ".m4v": "mp4", ".mov": "mp4", ".dcm": "dicom", ".dicom": "dicom"}


def video_format(path: Path) -> str:
    """The container kind from the suffix, or from the DICOM preamble for suffix-less files."""
    kind = VIDEO_SUFFIXES.get(path.suffix.lower())
    if kind:
        return kind
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise VideoError(f"{path}: cannot open ({exc.strerror})") from exc
    if head[128:132] == b"DICM":
        return "dicom"
    raise VideoError(f"{path}: unsupported file type {path.suffix or '(no suffix)'}; use AVI, MP4 or DICOM")


def check_frames(frames: np.ndarray, path: Path | str, min_frames: int = 2) -> np.ndarray:
    """Validate a decoded array: shape [T, H, W, 3] uint8, enough frames, sane sizes."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoError(f"{path}: decoded to shape {frames.shape}, expected [frames, height, width, 3]")
    t, h, w, _ = frames.shape
    if t < min_frames:
        raise VideoError(f"{path}: has {t} frame(s); a cine needs at least {min_frames}")
    if h < 8 or w < 8:
        raise VideoError(f"{path}: frames of {w}x{h} pixels are too small to be an echo video")
    if max(h, w) > MAX_SIDE:
        raise VideoError(f"{path}: frames of {w}x{h} pixels exceed the {MAX_SIDE}-pixel limit")
    return frames


def read_video(path: str | Path, max_frames: int = MAX_FRAMES, min_frames: int = 2, salt: str = "",
               mask: str | None = None) -> Video:
    """Read an AVI, MP4 or DICOM file; raise VideoError with the file name on any problem.

    `salt` keys the de-identified patient/study hashes of DICOM files (the store's own salt).
    `mask` "on" keeps only the ultrasound image (video/regions.py), "off" records that nothing was
    masked; None (raw frames) is for the decoder's own checks: pixels that leave video/ for an
    encoder, a thumbnail or an export go through a store's setting.
    """
    path = Path(path)
    if not path.exists():
        raise NotFound(f"{path}: no such file; check the path")
    if not path.is_file():
        raise VideoError(f"{path}: is not a file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: file is empty (0 bytes)")
    kind = video_format(path)
    if kind == "dicom":
        from embedstore.video.dicom import read_dicom

        video = read_dicom(path, max_frames=max_frames, salt=salt)
    else:
        video = _read_av(path, kind, max_frames)
    check_frames(video.frames, path, min_frames)
    if mask is not None:
        from embedstore.video.regions import mask_video

        video = mask_video(video, mask, in_place=True)  # the frames were decoded here: nobody else holds them
    return video


def _read_av(path: Path, kind: str, max_frames: int) -> Video:
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise VideoError(f"{path}: not a readable {kind.upper()} video ({_why(exc)})") from exc
    with container:
        if not container.streams.video:
            raise VideoError(f"{path}: contains no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx.width and ctx.height and max(ctx.width, ctx.height) > MAX_SIDE:
            raise VideoError(f"{path}: frames of {ctx.width}x{ctx.height} pixels exceed the {MAX_SIDE}-pixel limit")
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 30.0
        declared = int(stream.frames or 0)
        frames = []
        try:
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) > max_frames:
                    raise TooManyFrames(f"{path}: more than {max_frames} frames; raise max_frames to read it")
        except av.error.FFmpegError as exc:
            raise VideoError(f"{path}: damaged after {len(frames)} frame(s) ({_why(exc)}); re-copy or re-export it") from exc
    if not frames:
        raise VideoError(f"{path}: has 0 decodable frames; the file holds no picture")
    if declared and len(frames) < declared:
        raise VideoError(
            f"{path}: truncated, the header declares {declared} frames but only {len(frames)} decode; re-copy the file"
        )
    return Video(np.stack(frames), fps, kind, path, {"codec": ctx.name})


def _why(exc: Exception) -> str:
    return " ".join(str(exc).split())[:160]
