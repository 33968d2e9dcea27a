"""The `pixels` baseline: no model, no weights; what any encoder's figure must beat on the same store.

A video becomes its sector-masked temporal mean and temporal standard deviation images (grey),
each centre-cropped square, area-averaged to a GRID x GRID grid and L2-normalised, then
concatenated and L2-normalised again (dim 2 * GRID^2 = 512). Why: a same-patient AUC or an EF
probe that this reaches says nothing about an encoder; evaluation prints it beside every encoder
(analysis/leaderboard.py). The sector mask is video/prepare.sector_mask (burned-in text, ECG and
depth ticks are static, so they are dropped from both images).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedstore.encoders.base import Encoder, register
from embedstore.encoders.weights import Resolved
from embedstore.errors import BadInput
from embedstore.video.prepare import center_crop_square, sector_mask
from embedstore.video.read import Video

GRID = 16
NO_WEIGHTS = "none"  # recorded as weights and weights_sha256: nothing was learned


@dataclass(frozen=True)
class PixelsPreparer:
    """Video -> float32 [2, grid, grid]: masked temporal mean and std of the grey frames, area-averaged."""

    grid: int = GRID

    def __call__(self, video: Video) -> np.ndarray:
        return pixel_images(video.frames, self.grid)


def pixel_images(frames: np.ndarray, grid: int = GRID) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float32 [2, grid, grid] (mean, std over time of the sector-masked grey frames)."""
    import torch
    import torch.nn.functional as F

    mask = sector_mask(frames)
    square = center_crop_square(frames)
    crop = center_crop_square(mask[None, :, :, None])[0, :, :, 0]
    grey = square.astype(np.float32).mean(axis=-1)
    images = np.stack([grey.mean(axis=0), grey.std(axis=0)]) * crop
    return F.adaptive_avg_pool2d(torch.from_numpy(images), grid).numpy().astype(np.float32)


@register("pixels")
class Pixels(Encoder):
    """Weightless: random_init is accepted and ignored, weights only as None or "none" (what provenance records)."""

    dim = 2 * GRID * GRID
    spec = {
        "images": "temporal mean and temporal std of grey frames (all frames)",
        "sector_mask": "video.prepare.sector_mask (largest moving region, rows filled)",
        "crop": "centre square",
        "grid": [GRID, GRID],
        "downsample": "area average (torch adaptive_avg_pool2d)",
        "normalise": "each image L2, then the concatenation L2",
    }
    card = {"input_scale": "grey 0-255, each image L2-normalised", "frames": "all (temporal mean and std)",
            "resize": f"centre square, area average to {GRID}x{GRID}"}
    defaults = {**Encoder.defaults, "precision": "fp32"}  # numpy arithmetic: there is nothing to autocast

    def __init__(self, weights=None, random_init: bool = False, device: str = "auto", **options):
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise BadInput(f"encoder pixels has no option {', '.join(unknown)}; its options are "
                           f"{', '.join(sorted(self.defaults))}")
        if weights is not None and str(weights) != NO_WEIGHTS:
            raise BadInput("encoder pixels has no weights; drop --weights")
        self.options = {**self.defaults, **options}
        self.device = "cpu"
        self.precision = "fp32"
        self.spec = dict(type(self).spec)
        self.resolved = None
        self.model = None

    def _load(self, resolved: Resolved | None):
        return None

    @property
    def preparer(self) -> PixelsPreparer:
        return PixelsPreparer(GRID)

    def _forward(self, batch):
        return batch

    def embed_prepared(self, inputs: list[np.ndarray]) -> np.ndarray:
        if not inputs:
            return np.zeros((0, self.dim), np.float32)
        x = np.stack(inputs).astype(np.float64).reshape(len(inputs), 2, -1)
        x /= np.maximum(np.linalg.norm(x, axis=2, keepdims=True), 1e-12)
        x = x.reshape(len(inputs), -1)
        return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def provenance(self) -> dict:
        return {**super().provenance(), "weights": NO_WEIGHTS, "weights_sha256": NO_WEIGHTS}

    @classmethod
    def describe(cls) -> dict:
        return {**super().describe(), "weights": f"{NO_WEIGHTS} needed"}
