"""R3D-18 video embeddings (JACC Advances 2024): the 400-d output of torchvision r3d_18's Kinetics `fc`.

Input scale: each checkpoint is fed the scale it was trained with (FACTS.md, R3D). The authors
trained and extracted on raw 0-255 floats with no mean/std, so the released checkpoint (wrapper
layout), checkpoints `embedstore train r3d` writes (they record `input_scale`) and a seeded random
init get raw 0-255; only torchvision's own Kinetics-400 weights (torchvision layout, no record) get
Kinetics mean/std on the 0-1 scale. Option scale="0-255"|"kinetics" overrides (training uses it).

Two presets, because the paper and the released extraction script differ:
- `r3d`    paper-faithful: 112x112, one frame in 4.
- `r3d-v0` released-script-compatible (reproduces the published vectors): every frame, fp32. The script does
  no resize because EchoNet-Dynamic frames are already 112x112; here frames of another size are
  centre-cropped square and resized to 112 (option resize=False feeds them at native size, as the
  script would), so vectors of other videos stay comparable with the released ones and memory
  stays bounded on full-resolution cines.
Both run each whole video at once, input (1, C, T, H, W); videos of equal length are batched.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedstore.encoders.base import Encoder, register
from embedstore.encoders.weights import Resolved
from embedstore.errors import BadInput
from embedstore.video.prepare import center_crop_square, resize_uint8, sample_period
from embedstore.video.read import Video

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)  # torchvision's Kinetics-400 video transforms
KINETICS_STD = (0.22803, 0.22145, 0.216989)
SIZE = 112
WRAPPER, HEAD = "preloaded_model.", "new_layer1."  # released checkpoint: the r3d_18 + the 400->1 EF head
RAW, KINETICS = "0-255", "kinetics"  # input scales: raw 0-255 floats, or Kinetics mean/std on 0-1
SCALES = (RAW, KINETICS)
SCALE_KEY = "input_scale"  # recorded in checkpoints embedstore writes: {"state_dict": ..., "input_scale": ...}


@dataclass(frozen=True)
class R3DPreparer:
    """Video -> uint8 [3, T, H, W]: every `period`-th frame, square-cropped and resized when not size x size."""

    period: int
    size: int | None

    def __call__(self, video: Video) -> np.ndarray:
        frames = sample_period(video.frames, self.period)
        if self.size and frames.shape[1:3] != (self.size, self.size):
            x = resize_uint8(center_crop_square(frames), self.size)
        else:
            x = frames.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x.transpose(1, 0, 2, 3))


@register("r3d")
class R3D(Encoder):
    """Paper-faithful preset."""

    dim = 400
    spec = {
        "sampling": "period",
        "period": 4,
        "frames": "all (no fixed clip length)",
        "size": [SIZE, SIZE],
        "resize": "centre square crop + bilinear, only when frames are not 112x112",
        "scale": "0-255",  # set at load time from the weights: see the module docstring
        "mean": None,
        "std": None,
        "layout": "B,C,T,H,W",
        "pooling": "r3d_18 global average pool + Kinetics fc (512->400)",
    }

    defaults = {**Encoder.defaults, "scale": "auto"}
    card = {"input_scale": "raw 0-255 floats (released and embedstore-trained checkpoints, random init); Kinetics"
                           " mean/std on 0-1 only for torchvision's Kinetics-400 file",
            "frames": "1 in 4 (period 4), the whole video, (1, C, T, H, W)",
            "resize": "none for 112x112 frames; else centre square crop + antialiased bilinear to 112"}

    def _load(self, resolved: Resolved | None):
        from torchvision.models.video import r3d_18

        model = r3d_18(weights=None)
        trained_on = RAW
        if resolved is not None:
            state, trained_on = r3d_checkpoint(resolved.file, model.state_dict())
            model.load_state_dict(state)
        scale = self.options["scale"]
        if scale not in ("auto", *SCALES):
            raise BadInput(f"{self.name} scale must be auto, {' or '.join(SCALES)}, got {scale!r}")
        self.set_scale(trained_on if scale == "auto" else scale)
        return model

    def set_scale(self, scale: str) -> None:
        """Record (in spec, hence provenance) the input scale this model is fed."""
        kinetics = scale == KINETICS
        self.spec.update(scale="0-1" if kinetics else "0-255", mean=list(KINETICS_MEAN) if kinetics else None,
                         std=list(KINETICS_STD) if kinetics else None, input_scale=scale)

    @property
    def preparer(self) -> R3DPreparer:
        return R3DPreparer(self.spec["period"], self.spec["size"][0] if self.spec["size"] else None)

    def normalise(self, batch):
        """Prepared 0-255 input [B, 3, T, H, W] -> the float input of the model; training uses it too, so
        a fine-tuned checkpoint sees exactly what `encode` will feed it."""
        import torch

        x = batch.float()
        if self.spec["mean"] is not None:
            mean = torch.tensor(self.spec["mean"], device=x.device).view(1, 3, 1, 1, 1)
            std = torch.tensor(self.spec["std"], device=x.device).view(1, 3, 1, 1, 1)
            x = (x / 255.0 - mean) / std
        return x

    def _forward(self, batch):
        return self.model(self.normalise(batch))


@register("r3d-v0")
class R3DV0(R3D):
    """Released-extraction-script preset."""

    # batch_size 1: every frame of a long cine is already a large input, as in the released script
    # precision fp32: the published vectors were extracted in fp32
    defaults = {**R3D.defaults, "batch_size": 1, "resize": True, "precision": "fp32"}
    card = {**R3D.card, "frames": "every frame, the whole video, (1, C, T, H, W) (the released script)",
            "resize": "none for 112x112 frames (the script); else centre square crop + antialiased bilinear to 112"
                      " (resize=False: native size)"}
    spec = {**R3D.spec, "sampling": "all", "period": 1}

    def _load(self, resolved: Resolved | None):
        if not self.options["resize"]:
            self.spec.update(size=None, resize="none (native frame size, as the released script)")
        return super()._load(resolved)


def r3d_checkpoint(path: Path, expected: dict) -> tuple[dict, str]:
    """(torchvision r3d_18 state dict, the input scale it was trained with) from `path`; one-line BadInput otherwise.

    Layouts, told apart by their keys: torchvision's (stem.*, layer1-4.*, fc.*) or the released
    wrapper (preloaded_model.* + new_layer1.*, whose 400->1 head is dropped), either one optionally
    under {"state_dict": ...} or {"model": ...}. Scale: an `input_scale` recorded beside the state
    dict, else raw 0-255 for the wrapper layout (the authors' training) and Kinetics for torchvision's.
    """
    state = _load_file(path)
    recorded = state.get(SCALE_KEY) if isinstance(state, dict) and isinstance(state.get(SCALE_KEY), str) else None
    if recorded is not None and recorded not in SCALES:
        raise BadInput(f"{path}: input_scale {recorded!r} is not one of {', '.join(SCALES)}")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise BadInput(f"{path}: not a state dict; expected an r3d_18 checkpoint ({_LAYOUTS})")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    wrapper = any(k.startswith(WRAPPER) for k in state)
    if wrapper:
        stray = sorted(k for k in state if not k.startswith((WRAPPER, HEAD)))
        if stray:
            raise BadInput(f"{path}: wrapper checkpoint with unexpected keys {_few(stray)}; expected {_LAYOUTS}")
        state = {k.removeprefix(WRAPPER): v for k, v in state.items() if k.startswith(WRAPPER)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        problems = [f"{label} {_few(keys)}" for label, keys in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if keys]
        raise BadInput(f"{path}: not an r3d_18 checkpoint ({'; '.join(problems)}); expected {_LAYOUTS}")
    return state, recorded or (RAW if wrapper else KINETICS)


_LAYOUTS = "torchvision r3d_18 keys stem.*, layer1-4.*, fc.* or the released wrapper preloaded_model.* + new_layer1.*"


def _load_file(path: Path):
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and safetensors errors have no common base
        why = " ".join(str(exc).split())[:160]
        raise BadInput(f"{path}: not a loadable checkpoint ({type(exc).__name__}: {why}); expected {_LAYOUTS}") from exc


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")
