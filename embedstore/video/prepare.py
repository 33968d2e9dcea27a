"""Frame preparation shared by the encoders: sampling, cropping, resizing and the sector mask.

Frames come in as uint8 numpy [T, H, W, 3]; resizing returns float32 torch tensors [T, 3, H, W]
on the 0-255 scale, so each encoder applies its own normalisation and nothing is done twice.
"""
from __future__ import annotations

import numpy as np

from embedstore.errors import VideoError


def sample_period(frames: np.ndarray, period: int = 1, length: int | None = None, start: int = 0) -> np.ndarray:
    """Every `period`-th frame from `start`, cut to `length` frames when given (R3D: period 4)."""
    if period < 1:
        raise VideoError(f"sampling period must be >= 1, got {period}")
    out = frames[start::period]
    return out[:length] if length else out


def sample_even(frames: np.ndarray, n: int) -> np.ndarray:
    """`n` frames spread evenly over the whole video (VideoMAE/EchoVisionFM: linspace, truncated toward zero)."""
    idx = np.linspace(0, len(frames) - 1, n).astype(int)
    return frames[idx]


def center_crop_square(frames: np.ndarray) -> np.ndarray:
    """Crop the largest centred square (EchoCLIP's first step)."""
    _, h, w, _ = frames.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return frames[:, top : top + side, left : left + side]


def zoom_center(frames: np.ndarray, keep: float = 0.8) -> np.ndarray:
    """Keep the central `keep` fraction of height and width (EchoCLIP removes 10% per side).

    The trim per side is int(side x 0.1), truncated as the authors' code does (not rounded).
    """
    _, h, w, _ = frames.shape
    trim = round((1 - keep) / 2, 6)  # 0.1, not 0.0999...: int(110 x 0.0999...) would trim 10, not 11
    dh, dw = int(h * trim), int(w * trim)
    return frames[:, dh : h - dh, dw : w - dw]


def resize(frames: np.ndarray, size: int | tuple[int, int], mode: str = "bilinear"):
    """uint8 [T, H, W, 3] -> float32 tensor [T, 3, h, w] on 0-255, resized with torch.

    bilinear is antialiased (PIL-like); bicubic is the cubic-convolution kernel with a = -0.75 and no
    antialiasing, i.e. OpenCV's INTER_CUBIC that EchoCLIP and EchoPrime use (torch's antialiased
    bicubic is PIL's a = -0.5 kernel and differs by up to 15 grey levels).
    """
    import torch
    import torch.nn.functional as F

    h, w = _hw(size)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (h, w):
        kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        x = F.interpolate(x, size=(h, w), mode=mode, antialias=mode == "bilinear", **kwargs)
        x = x.clamp_(0, 255)
    return x


def sector_mask(frames: np.ndarray, threshold: float = 2.0) -> np.ndarray:
    """Boolean [H, W] mask of the ultrasound fan.

    Why: burned-in text, depth scales and logos are static and the ECG trace sits apart from the
    fan; the fan is the largest connected region of pixels that change over time, and it is convex
    row by row, so each row is filled between its leftmost and rightmost fan pixel.
    """
    from scipy import ndimage

    grey = frames.astype(np.float32).mean(axis=-1)
    moving = grey.std(axis=0) > threshold
    moving = ndimage.binary_opening(moving, iterations=1)
    labels, n = ndimage.label(moving)
    if n == 0:
        return np.ones(grey.shape[1:], dtype=bool)
    sizes = ndimage.sum(moving, labels, index=range(1, n + 1))
    fan = labels == (int(np.argmax(sizes)) + 1)
    mask = np.zeros_like(fan)
    for row in np.nonzero(fan.any(axis=1))[0]:
        cols = np.nonzero(fan[row])[0]
        mask[row, cols[0] : cols[-1] + 1] = True
    return mask


def apply_mask(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blank everything outside the fan."""
    return frames * mask[None, :, :, None].astype(frames.dtype)


def resize_uint8(frames: np.ndarray, size: int | tuple[int, int], mode: str = "bilinear", chunk: int = 64) -> np.ndarray:
    """uint8 [T, H, W, 3] -> uint8 numpy [T, 3, h, w], resized `chunk` frames at a time.

    Why: encoders' preparers run in reader workers ahead of the model; rounding back to uint8 (as
    the authors' OpenCV/PIL pipelines do) keeps queued inputs 4x smaller than float32, and chunking
    bounds memory on long or large cines.
    """
    import torch

    parts = [resize(frames[i : i + chunk], size, mode).round_().to(torch.uint8).numpy() for i in range(0, len(frames), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, 3, *_hw(size)), dtype=np.uint8)


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)
