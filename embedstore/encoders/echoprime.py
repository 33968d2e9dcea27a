"""EchoPrime (Nature 2025) video encoder: torchvision mvit_v2_s with a 768->512 head, 512-d vectors.

Weights: `<model_data>/weights/echo_prime_encoder.pt` of the authors' release (a bare state dict,
loaded strictly), from a folder the user gives or $EMBEDSTORE_WEIGHTS/echoprime/. Academic licence:
nothing of theirs is shipped.

Preparation, as the authors': centre-crop to a square (their symmetric int(round()) crop), trim
int(0.1 x side) from each side, bicubic to 224x224 (OpenCV INTER_CUBIC: a = -0.75, no antialiasing),
raw 0-255 values minus their mean over their std, zero-padded (after normalising) to 32 frames,
frames 0, 2, ..., 30 kept: input (N, 3, 16, 224, 224). The sector mask is applied where frames
leave video/ (the reader's masking), not here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedstore.encoders.base import Encoder, register
from embedstore.encoders.state import load_into, load_torch_file
from embedstore.encoders.weights import WEIGHTS, Resolved
from embedstore.video.prepare import resize_uint8
from embedstore.video.read import Video

MEAN = (29.110628, 28.076836, 29.096405)  # on 0-255, per RGB channel (echo_prime/model.py)
STD = (47.989223, 46.456997, 47.20083)
SIZE = 224
FRAMES_TO_TAKE, STRIDE = 32, 2
CLIP = FRAMES_TO_TAKE // STRIDE  # 16: mvit_v2_s accepts exactly (N, 3, 16, 224, 224)
ZOOM = 0.1
LAYOUT = "torchvision mvit_v2_s state dict with head.1 = Linear(768, 512) (bare, as echo_prime_encoder.pt)"


def crop_and_trim(frame_hw: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns the authors keep of an H x W frame: a centred square whose cut is
    int(round(excess / 2)) from each side (Python's round: halves to even), then int(0.1 x side)
    off each side. A cut that rounds to 0 keeps everything (their slice [0:-0] would be empty)."""
    h, w = frame_hw
    top, bottom, left, right = 0, h, 0, w
    if w > h:
        pad = int(round((w - h) / 2))
        left, right = pad, w - pad
    elif h > w:
        pad = int(round((h - w) / 2))
        top, bottom = pad, h - pad
    pad_y, pad_x = int((bottom - top) * ZOOM), int((right - left) * ZOOM)
    return slice(top + pad_y, bottom - pad_y), slice(left + pad_x, right - pad_x)


@dataclass(frozen=True)
class EchoPrimePreparer:
    """Video -> uint8 [3, t, 224, 224] with t <= 16: frames 0, 2, ..., 30 (those that exist), cropped,
    trimmed and resized; normalising and zero padding to 16 happen on the device (`normalise`)."""

    size: int = SIZE

    def __call__(self, video: Video) -> np.ndarray:
        frames = video.frames[:FRAMES_TO_TAKE:STRIDE]
        rows, cols = crop_and_trim(frames.shape[1:3])
        x = resize_uint8(np.ascontiguousarray(frames[:, rows, cols]), self.size, mode="bicubic")
        return np.ascontiguousarray(x.transpose(1, 0, 2, 3))


def normalise(batch):
    """uint8 [B, 3, t, 224, 224] -> float32 [B, 3, 16, 224, 224]: (x - mean) / std, then zero frames to 16."""
    import torch

    x = batch.float()
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1, 1)
    x = (x - mean) / std
    if x.shape[2] < CLIP:
        pad = torch.zeros((x.shape[0], 3, CLIP - x.shape[2], *x.shape[3:]), dtype=x.dtype, device=x.device)
        x = torch.cat((x, pad), dim=2)
    return x


@register("echoprime")
class EchoPrime(Encoder):
    dim = 512
    spec = {
        "sampling": "first 32 frames, every 2nd (0, 2, ..., 30); zero frames after normalising when shorter",
        "frames": CLIP,
        "size": [SIZE, SIZE],
        "crop": "centre square (int(round(excess/2)) off each side), then int(0.1 x side) off each side",
        "resize": "bicubic a=-0.75, no antialiasing (OpenCV INTER_CUBIC)",
        "mask": "ultrasound sector, applied where frames leave video/",
        "channels": "RGB",
        "scale": "0-255",
        "mean": list(MEAN),
        "std": list(STD),
        "layout": "B,C,T,H,W",
        "pooling": "mvit_v2_s class token -> head (768->512)",
        "licence": WEIGHTS["echoprime"].licence,  # recorded with the vectors (provenance)
    }
    # batch_size 4: one clip is 16x224x224 through a video transformer
    card = {"input_scale": "raw 0-255, minus EchoPrime's mean, over its std (per channel); zeros padded after",
            "frames": "frames 0, 2, ..., 30 of the first 32 (zero-padded to 32): 16",
            "resize": "centre square crop, int(0.1 x side) trimmed per side, bicubic a=-0.75 no antialias to 224"}
    defaults = {**Encoder.defaults, "batch_size": 4}

    def _load(self, resolved: Resolved | None):
        return build_mvit(resolved.file if resolved else None)

    @property
    def preparer(self) -> EchoPrimePreparer:
        return EchoPrimePreparer()

    def _forward(self, batch):
        return self.model(normalise(batch))


def build_mvit(path=None):
    """torchvision mvit_v2_s with EchoPrime's 512 head (random when `path` is None, else loaded strictly)."""
    import torch
    from torchvision.models.video import mvit_v2_s

    model = mvit_v2_s(weights=None)
    model.head[-1] = torch.nn.Linear(model.head[-1].in_features, 512)
    if path is not None:
        load_into(model, load_torch_file(path, LAYOUT), path, LAYOUT)
    return model
