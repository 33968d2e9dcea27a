"""VideoMAE video embeddings (EchoVisionFM / Echo-VideoMAE preprocessing) with transformers' VideoMAEModel.

No echo-specific weights are public; the generic ones are `MCG-NJU/videomae-base` (Kinetics,
self-supervised), loaded from a local HF-format folder or the hub cache, never downloaded.
Input (B, T, C, H, W): T frames spread evenly over the whole video, resized to the model's size,
scaled to [0, 1], no mean/std. Vector = max (default, EchoVisionFM) or mean over all tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedstore.encoders.base import Encoder, register
from embedstore.encoders.weights import Resolved
from embedstore.errors import BadInput
from embedstore.video.prepare import resize_uint8, sample_even
from embedstore.video.read import Video

POOLINGS = ("max", "mean")


@dataclass(frozen=True)
class VideoMAEPreparer:
    """Video -> uint8 [T, 3, size, size]: `frames` evenly spaced frames, bilinear resize."""

    frames: int
    size: int

    def __call__(self, video: Video) -> np.ndarray:
        return resize_uint8(sample_even(video.frames, self.frames), self.size)


@register("videomae")
class VideoMAE(Encoder):
    dim = 768
    spec = {
        "sampling": "even",
        "frames": 16,
        "size": [224, 224],
        "resize": "bilinear to size x size (no crop)",
        "scale": "0-1",
        "mean": None,
        "std": None,
        "layout": "B,T,C,H,W",
        "pooling": "max",
        "tokens": "1568 = (16/2) x (224/16)^2",
    }
    card = {"input_scale": "0-1, no mean/std (EchoVisionFM, even with the Kinetics weights)",
            "frames": "16 spread over the whole video: linspace(0, N-1) truncated toward zero",
            "resize": "antialiased bilinear to 224x224, no crop"}
    # config_overrides: VideoMAEConfig fields for random_init only (small models in tests)
    defaults = {**Encoder.defaults, "pooling": "max", "config_overrides": None}

    def _load(self, resolved: Resolved | None):
        from transformers import VideoMAEConfig, VideoMAEModel

        pooling = self.options["pooling"]
        if pooling not in POOLINGS:
            raise BadInput(f"videomae pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        overrides = self.options["config_overrides"] or {}
        if resolved is None:
            model = VideoMAEModel(VideoMAEConfig(**overrides))
        elif overrides:
            raise BadInput("videomae config_overrides apply to random_init only; a checkpoint brings its own config.json")
        else:
            model = _from_folder(resolved)
        cfg = model.config
        tokens = (cfg.num_frames // cfg.tubelet_size) * (cfg.image_size // cfg.patch_size) ** 2
        self.dim = int(cfg.hidden_size)
        self.spec.update(
            frames=int(cfg.num_frames),
            size=[int(cfg.image_size)] * 2,
            pooling=pooling,
            tokens=f"{tokens} = ({cfg.num_frames}/{cfg.tubelet_size}) x ({cfg.image_size}/{cfg.patch_size})^2",
        )
        return model

    @property
    def preparer(self) -> VideoMAEPreparer:
        return VideoMAEPreparer(self.spec["frames"], self.spec["size"][0])

    def _forward(self, batch):
        tokens = self.model(pixel_values=batch.float() / 255.0).last_hidden_state
        return tokens.amax(dim=1) if self.spec["pooling"] == "max" else tokens.mean(dim=1)


def _from_folder(resolved: Resolved):
    """VideoMAEModel from an HF folder, local files only; refuses partial loads (HF would random-init the rest)."""
    from transformers import VideoMAEModel

    try:
        model, info = VideoMAEModel.from_pretrained(str(resolved.path), local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        why = " ".join(str(exc).split())[:200]
        raise BadInput(f"{resolved.path}: not a VideoMAE checkpoint folder ({why})") from exc
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys") or [])
    if missing or mismatched:
        keys = (missing + mismatched)[:3]
        raise BadInput(
            f"{resolved.path}: VideoMAE checkpoint lacks or misshapes {len(missing) + len(mismatched)} weights"
            f" (e.g. {', '.join(keys)}); it does not match its config.json, refusing a partly random model"
        )
    return model
