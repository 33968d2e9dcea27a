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
APEX_BAND, TAPERED = 0.15, 0.6  # a fan's top 15% of rows is at most 60% as wide as the fan (a strip's is as wide)


def sector_mask(frames: np.ndarray, change: int = 2, density: float = 0.3, max_pairs: int = 16) -> np.ndarray:
    """Boolean [H, W] mask of the ultrasound fan, all False when nothing moves.

    Why (FACTS.md, after EchoPrime): the fan is the large region that changes over time; burned-in
    text, depth marks and toolbars do not. Pixels that change by more than `change` grey levels in at
    least two of up to `max_pairs` frame pairs are accumulated; where fewer than `density` of a small
    window's pixels move (dim speckle, thin lines) the window is dropped; an erosion cuts thin
    moving lines such as a sweeping ECG trace and the bridges to it. Of the pieces left, the fan is
    the largest one shaped like a sector (apex at the top: its top rows much narrower than its widest),
    else the largest; a rectangle that moves as much (a spectral Doppler strip beside a dark study's
    sector) loses to it. Nearby pieces join it (the walls of a dark study move, the blood between
    them does not); grown back, it is filled by its convex hull (the fan is convex: dark blood pools
    and the apex stay in). Bright pixels that never change (text, even over the fan's edge) are left out.
    Frames of 480 pixels or more a side are analysed on every `step`-th pixel, in uint8 (a fan is large;
    the mask must cost a small share of decoding) and the hull is filled at full resolution.
    """
    from scipy import ndimage

    t, h, w, _ = frames.shape
    if t < 2:
        return np.zeros((h, w), dtype=bool)
    step = max(1, min(h, w) // 240)
    picks = np.unique(np.linspace(0, t - 1, min(t, max_pairs + 1)).round().astype(int))
    grey = np.empty((len(picks), *frames[0, ::step, ::step, 0].shape), dtype=np.uint8)
    for row, i in zip(grey, picks):  # the brightest channel (colour Doppler moves in any), reduced, in uint8
        frame = frames[i, ::step, ::step]
        np.maximum(frame[..., 0], frame[..., 1], out=row)
        np.maximum(row, frame[..., 2], out=row)
    later, earlier = grey[1:], grey[:-1]
    changed = (np.maximum(later, earlier) - np.minimum(later, earlier)) > change  # |a - b| without leaving uint8
    counts = changed.sum(axis=0, dtype=np.uint8)
    high, low = grey.max(axis=0), grey.min(axis=0)
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
    seed = _fan_piece(labels, n)
    near = ndimage.maximum_filter(labels == seed, size=2 * round(side / 40) + 1)
    pieces = np.unique(labels[near & core])
    fan = ndimage.binary_dilation(np.isin(labels, pieces[pieces > 0]), structure=disk) & moving
    text_full = np.repeat(np.repeat(text, step, axis=0), step, axis=1)[:h, :w]
    return _convex_fill(fan, (h, w), step) & ~text_full


def _fan_piece(labels: np.ndarray, n: int, share: float = 0.25) -> int:
    """Label of the fan among `n` pieces: the largest tapered one of those at least `share` of the
    largest, else the largest."""
    from scipy import ndimage

    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    boxes = ndimage.find_objects(labels)
    best = None
    for k in np.argsort(-sizes):
        if sizes[k] < share * sizes.max():
            break
        ys, xs = boxes[k]
        piece = labels[ys, xs] == k + 1
        cols = np.flatnonzero(piece.any(axis=0))
        widest = cols[-1] - cols[0] + 1
        top = piece[: max(1, round(APEX_BAND * piece.shape[0]))].any(axis=0)
        top_cols = np.flatnonzero(top)
        if top_cols[-1] - top_cols[0] + 1 <= TAPERED * widest:
            best = k
            break
    return int(np.argmax(sizes) if best is None else best) + 1


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def _convex_fill(region: np.ndarray, shape: tuple[int, int], step: int = 1) -> np.ndarray:
    """Boolean `shape`: every pixel inside the convex hull of `region`'s pixels, `region` being sampled
    every `step` pixels of `shape` (QHull half-planes, half a sample of tolerance).

    Filled row by row: a convex hull crosses each row in one run, bounded by its half-planes.
    """
    from scipy.spatial import ConvexHull, QhullError

    from scipy import ndimage

    ys, xs = np.nonzero(region & ~ndimage.binary_erosion(region))  # the hull of the outline is the region's
    out = np.zeros(shape, dtype=bool)
    try:
        hull = ConvexHull(np.column_stack([xs, ys]).astype(np.float64) * step)
    except (QhullError, ValueError):  # a line or a point: nothing to fill
        out[ys * step, xs * step] = True
        return out
    y0, y1 = ys.min() * step, min(shape[0], ys.max() * step + step)
    rows = np.arange(y0, y1, dtype=np.float64)[:, None]
    a, b, c = hull.equations.T  # a x + b y + c <= tolerance inside
    room = 0.5 * step - c - b * rows  # a x <= room
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = room / a
    left = np.where(a < 0, bound, -np.inf).max(axis=1)
    right = np.where(a > 0, bound, np.inf).min(axis=1)
    right[((a == 0) & (room < 0)).any(axis=1)] = -np.inf  # a horizontal edge excludes the row
    cols = np.arange(shape[1])
    out[y0:y1] = (cols >= np.ceil(left)[:, None]) & (cols <= np.floor(right)[:, None])
    return out


def apply_mask(frames: np.ndarray, mask: np.ndarray, in_place: bool = False) -> np.ndarray:
    """Blank everything outside the fan: a new array, or `frames` itself when `in_place` (the caller owns them).

    One bitwise AND of each frame, seen as rows of W x 3 bytes, with the mask repeated per channel
    (0 or 255): a single pass over memory, no per-frame or per-row work in Python.
    """
    t, h, w, c = frames.shape
    keep = np.repeat(mask, c, axis=1).astype(np.uint8) * np.uint8(255)
    source = np.ascontiguousarray(frames)
    out = source if in_place and source.flags.writeable else np.empty_like(source)
    np.bitwise_and(source.reshape(t, h, w * c), keep, out=out.reshape(t, h, w * c))
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
