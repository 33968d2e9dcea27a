"""The model the R3D paper fine-tuned, in the layout of its released checkpoint.

`preloaded_model` is torchvision's r3d_18 with its Kinetics `fc` (512->400) kept: its output is the
400-d embedding. `new_layer1` is the Linear(400, 1) head whose logit feeds BCE-with-logits. The
backbone is the `r3d` encoder's own module, fed raw 0-255 floats as the authors trained; the saved
checkpoint records that scale, so `encode` feeds it the same.
"""
from __future__ import annotations

from pathlib import Path

import torch

from embedstore.config import weights_dir
from embedstore.encoders import get_encoder
from embedstore.encoders.r3d import R3D, RAW
from embedstore.encoders.weights import KINETICS_FETCH, WEIGHTS, torch_hub_checkpoints
from embedstore.errors import WeightsNotFound


class R3DClassifier(torch.nn.Module):
    """r3d_18 (400-d Kinetics fc output) + a 400->1 logit head; attribute names are the released keys."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.preloaded_model = backbone
        self.new_layer1 = torch.nn.Linear(400, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.new_layer1(self.preloaded_model(x)).squeeze(-1)


def kinetics_weights() -> Path:
    """torchvision's Kinetics-400 r3d_18 file, from $EMBEDSTORE_WEIGHTS/r3d/ or torch hub's cache.

    Looked up by its own file name, not by `weights.find("r3d")`, which prefers a fine-tuned
    checkpoint when one is installed: a run that says it started from Kinetics must have.
    """
    name = WEIGHTS["r3d"].torch_hub_file
    root = weights_dir()
    places = ([root / "r3d" / name] if root else []) + [torch_hub_checkpoints() / name]
    for place in places:
        if place.is_file():
            return place
    raise WeightsNotFound(f"--init kinetics needs {name} in {' or '.join(map(str, places))}; on a machine with "
                          f"internet fetch it with: {KINETICS_FETCH}; or pass --init random (recorded with the run)")


def build(init: str, device: str, seed: int) -> tuple[R3D, R3DClassifier, dict]:
    """The `r3d` encoder, the classifier around its module, and what the backbone started from.

    `init` is kinetics, random (seeded) or a checkpoint path in either r3d layout (its head, if any,
    is not reused: the new head is always freshly initialised from `seed`).
    """
    torch.manual_seed(seed)
    # raw 0-255 input whatever the init, as the authors trained (also from Kinetics): the checkpoint records it
    if init == "random":
        encoder = get_encoder("r3d", random_init=True, device=device, seed=seed, scale=RAW)
    else:
        encoder = get_encoder("r3d", weights=kinetics_weights() if init == "kinetics" else Path(init), device=device,
                              scale=RAW)
    prov = encoder.provenance()
    model = R3DClassifier(encoder.model).to(encoder.device)
    return encoder, model, {"init": init, "weights": prov["weights"], "weights_sha256": prov["weights_sha256"]}
