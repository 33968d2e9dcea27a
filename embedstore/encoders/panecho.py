"""PanEcho (JAMA 2025) video backbone: per-frame ConvNeXt-Tiny + sinusoidal time encoding + a 4-layer
transformer, mean over time -> 768-d (the hub entry's `backbone_only` output).

Weights: `panecho.pt` = {'weights': state_dict} from the authors' release, loaded from a folder the user
gives or $EMBEDSTORE_WEIGHTS/panecho/; the time encoding `encoder.time_encoder.pe` is recomputed (it is
dropped from the file) and the 40 task heads are not used. The ConvNeXt is built with weights=None,
so nothing is fetched. Licence: weights CC BY-NC-SA 4.0, code AGPLv3 (nothing of theirs is shipped).

Input per video: 4 clips of 16 consecutive frames (starts spread evenly over the video), BGR as the
authors' OpenCV reader gives, short side scaled to 224 when smaller, centre-cropped 224, [0, 1],
ImageNet mean/std; the 4 clip vectors are averaged.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from embedstore.encoders.base import Encoder, register
from embedstore.encoders.state import load_into, load_torch_file
from embedstore.encoders.weights import WEIGHTS, Resolved
from embedstore.errors import BadInput, VideoError
from embedstore.video.prepare import resize_uint8
from embedstore.video.read import Video

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_LEN, CLIPS, SIZE, DIM = 16, 4, 224, 768
LAYOUT = "PanEcho's panecho.pt: {'weights': state dict} with encoder.encoder.model.*, encoder.transformer.layers.{0-3}.*"
_HEAD = re.compile(r"^[^.]+_head\.")


def clip_starts(n_frames: int, clips: int = CLIPS, length: int = CLIP_LEN) -> list[int]:
    """First frame of each clip: evenly spaced over [0, n - length], truncated toward zero."""
    return [int(s) for s in np.linspace(0, max(n_frames - length, 0), clips)]


@dataclass(frozen=True)
class PanEchoPreparer:
    """Video -> uint8 [clips, 3, 16, size, size] in BGR order; a video under 16 frames repeats its last frame."""

    size: int = SIZE
    clips: int = CLIPS

    def __call__(self, video: Video) -> np.ndarray:
        frames = video.frames
        if len(frames) == 0:
            raise VideoError("a video with no frames cannot be embedded")
        if len(frames) < CLIP_LEN:
            frames = np.concatenate([frames, np.repeat(frames[-1:], CLIP_LEN - len(frames), axis=0)])
        starts = clip_starts(len(frames), self.clips)
        used = sorted({i for s in starts for i in range(s, s + CLIP_LEN)})
        prepared = dict(zip(used, self._frames(frames[used])))
        clips = [np.stack([prepared[i] for i in range(s, s + CLIP_LEN)], axis=1) for s in starts]
        return np.ascontiguousarray(np.stack(clips))

    def _frames(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [T, H, W, 3] RGB -> uint8 [T, 3, size, size] BGR: short side up to `size`, centre crop."""
        _, h, w, _ = frames.shape
        if min(h, w) < self.size:
            scale = self.size / min(h, w)
            h, w = max(self.size, round(h * scale)), max(self.size, round(w * scale))
            x = resize_uint8(frames, (h, w), mode="bilinear")
        else:
            x = np.ascontiguousarray(frames.transpose(0, 3, 1, 2))
        top, left = (h - self.size) // 2, (w - self.size) // 2
        return x[:, ::-1, top : top + self.size, left : left + self.size]


def build_backbone(clip_len: int = CLIP_LEN):
    """The PanEcho module tree (keys as in panecho.pt, without task heads), random weights, no download."""
    import torch
    from torchvision.models import convnext_tiny

    class ImageEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = convnext_tiny(weights=None)
            self.model.classifier[-1] = torch.nn.Identity()

        def forward(self, x):
            return self.model(x)

    class TimeEncoder(torch.nn.Module):
        """Fixed sinusoidal encoding (1, clip_len, d): sin on even, cos on odd features."""

        def __init__(self, d: int, length: int):
            super().__init__()
            position = torch.arange(length).unsqueeze(1)
            div = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
            pe = torch.zeros(1, length, d)
            pe[0, :, 0::2] = torch.sin(position * div)
            pe[0, :, 1::2] = torch.cos(position * div)
            self.pe = torch.nn.Parameter(pe, requires_grad=False)

        def forward(self, x):
            return x + self.pe[0, : x.size(1), :]

    class FrameTransformer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = ImageEncoder()
            layer = torch.nn.TransformerEncoderLayer(d_model=DIM, nhead=8, dim_feedforward=DIM, dropout=0.0,
                                                     activation="relu", batch_first=True)
            self.transformer = torch.nn.TransformerEncoder(layer, num_layers=4, enable_nested_tensor=False)
            self.time_encoder = TimeEncoder(DIM, clip_len)

        def forward(self, x):
            b, c, t, h, w = x.shape
            # As the authors' forward: a reshape (not a permute) of the (B, C, T, H, W) clip into B*T images.
            frames = self.encoder(x.reshape(b * t, c, h, w)).reshape(b, t, DIM)
            return self.transformer(self.time_encoder(frames)).mean(dim=1)

    class PanEchoNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = FrameTransformer()

        def forward(self, x):
            return self.encoder(x)

    return PanEchoNet()


@register("panecho")
class PanEcho(Encoder):
    dim = DIM
    spec = {
        "sampling": f"{CLIPS} clips of {CLIP_LEN} consecutive frames, starts evenly spaced (truncated)",
        "frames": CLIP_LEN,
        "clips": CLIPS,
        "size": [SIZE, SIZE],
        "crop": "short side scaled to 224 when smaller (bilinear), centre crop 224",
        "channels": "BGR (as read by OpenCV in the authors' code)",
        "scale": "0-1",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "layout": "B,C,T,H,W (reshaped to B*T images as the authors' forward)",
        "pooling": "mean over time of the transformer output; mean over the clips",
        "licence": WEIGHTS["panecho"].licence,  # recorded with the vectors (provenance)
    }
    card = {"input_scale": "0-1, ImageNet mean/std; BGR as OpenCV reads (the authors)",
            "frames": "4 clips of 16 consecutive frames spread over the video, averaged",
            "resize": "short side to 224 when smaller, centre crop 224"}
    defaults = {**Encoder.defaults, "batch_size": 2}

    def _load(self, resolved: Resolved | None):
        model = build_backbone()
        if resolved is not None:
            saved = load_torch_file(resolved.file, LAYOUT)
            if not isinstance(saved, dict) or not isinstance(saved.get("weights"), dict):
                raise BadInput(f"{resolved.file}: has no 'weights' dict; expected {LAYOUT}")
            load_into(model, saved["weights"], resolved.file, LAYOUT,
                      ignore=lambda k: k == "encoder.time_encoder.pe" or bool(_HEAD.match(k)))
        return model

    @property
    def preparer(self) -> PanEchoPreparer:
        return PanEchoPreparer()

    def _forward(self, batch):
        import torch

        b, clips = batch.shape[:2]
        x = batch.reshape(b * clips, *batch.shape[2:]).float() / 255.0
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1, 1)
        return self.model((x - mean) / std).reshape(b, clips, DIM).mean(dim=1)
