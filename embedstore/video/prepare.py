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


STATIC_BRIGHT, STATIC_RANGE = 48, 12  # grey levels: what counts as burned-in text for sector_mask


def sector_mask(frames: np.ndarray, change: int = 2, density: float = 0.3, max_pairs: int = 32) -> np.ndarray:
    """Boolean [H, W] mask of the ultrasound fan, all False when nothing moves.

    Why (FACTS.md, after EchoPrime): the fan is the largest region that changes over time; burned-in
    text, depth marks and toolbars do not. Pixels that change by more than `change` grey levels in at
    least two of up to `max_pairs` frame pairs are accumulated; where fewer than `density` of a small
    window's pixels move (dim speckle, thin lines) the window is dropped; an erosion cuts thin
    moving lines such as a sweeping ECG trace and the bridges to it; the largest piece left, grown
    back, is filled by its convex hull (the fan is convex: dark blood pools and the apex stay in).
    Bright pixels that never change (text, even next to or over the fan's edge) are always left out.
    Frames of 480 pixels or more a side are analysed on every `step`-th pixel (a fan is large; the cost of
    a mask stays a share of decoding) and the hull is filled at full resolution.
    """
    from scipy import ndimage

    t, h, w, _ = frames.shape
    if t < 2:
        return np.zeros((h, w), dtype=bool)
    step = max(1, min(h, w) // 240)
    picks = np.unique(np.linspace(0, t - 1, min(t, max_pairs + 1)).round().astype(int))
    previous = _brightest(frames[picks[0], ::step, ::step])
    counts = np.zeros(previous.shape, dtype=np.uint8)
    low, high = previous.copy(), previous.copy()
    for i in picks[1:]:
        current = _brightest(frames[i, ::step, ::step])
        counts += np.abs(current - previous) > change
        np.minimum(low, current, out=low)
        np.maximum(high, current, out=high)
        previous = current
    # burned-in text: bright and (but for codec noise) constant; never part of the fan, even inside its hull
    text = ndimage.binary_dilation((high > STATIC_BRIGHT) & (high - low <= STATIC_RANGE))
    moving = (counts >= min(2, len(picks) - 1)) & ~text
    side = min(moving.shape)
    dense = ndimage.uniform_filter(moving.astype(np.float32), size=max(3, side // 128 * 2 + 1)) > density
    disk = _disk(max(1, round(side / 160)))
    core = ndimage.binary_erosion(dense, structure=disk)
    labels, n = ndimage.label(core)
    if n == 0:
        return np.zeros((h, w), dtype=bool)
    sizes = ndimage.sum(core, labels, index=range(1, n + 1))
    fan = ndimage.binary_dilation(labels == (int(np.argmax(sizes)) + 1), structure=disk) & moving
    text_full = np.repeat(np.repeat(text, step, axis=0), step, axis=1)[:h, :w]
    return _convex_fill(fan, (h, w), step) & ~text_full


def _brightest(frame: np.ndarray) -> np.ndarray:
    """int16 [H, W]: the largest of the three channels (colour Doppler moves in any of them)."""
    return np.maximum(np.maximum(frame[..., 0], frame[..., 1]), frame[..., 2]).astype(np.int16)


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def _convex_fill(region: np.ndarray, shape: tuple[int, int], step: int = 1) -> np.ndarray:
    """Boolean `shape`: every pixel inside the convex hull of `region`'s pixels, `region` being sampled
    every `step` pixels of `shape` (QHull half-planes, half a sample of tolerance)."""
    from scipy.spatial import ConvexHull, QhullError

    ys, xs = np.nonzero(region)
    out = np.zeros(shape, dtype=bool)
    try:
        hull = ConvexHull(np.column_stack([xs, ys]).astype(np.float64) * step)
    except (QhullError, ValueError):  # a line or a point: nothing to fill
        out[ys * step, xs * step] = True
        return out
    y0, y1 = ys.min() * step, min(shape[0], ys.max() * step + step)
    x0, x1 = xs.min() * step, min(shape[1], xs.max() * step + step)
    gy, gx = np.mgrid[y0:y1, x0:x1]
    inside = np.ones(gy.shape, dtype=bool)
    for a, b, c in hull.equations:
        inside &= a * gx + b * gy + c <= 0.5 * step
    out[y0:y1, x0:x1] = inside
    return out


def apply_mask(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blank everything outside the fan (a new array; the input stays as decoded).

    Row by row: the part left and right of a row's run is zeroed with slices (a fan's rows are one
    run each), and only the few holes inside a run (text over the fan's edge) are scattered.
    """
    out = frames.copy()
    out[:, ~mask.any(axis=1)] = 0
    for y in np.flatnonzero(mask.any(axis=1)):
        cols = np.flatnonzero(mask[y])
        left, right = cols[0], cols[-1] + 1
        out[:, y, :left] = 0
        out[:, y, right:] = 0
        if len(cols) < right - left:
            out[:, y, left + np.flatnonzero(~mask[y, left:right])] = 0
    return out


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
