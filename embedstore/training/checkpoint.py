"""Files a training run leaves beside OUT: epoch checkpoints (to resume), the final weights, the metrics.

- `OUT.epoch<N>`: after epoch N: model, optimizer, grad scaler, history, best VAL AUC and epoch,
  torch RNG states and the recipe. Only the latest and the best epoch are kept (each is about three
  times the model's size, with Adam's moments).
- `OUT`: the best epoch's weights in the released wrapper layout (`preloaded_model.*`, `new_layer1.*`)
  under {"state_dict": ..., "input_scale": "0-255"}, so `encode --encoder r3d --weights OUT` loads it
  and feeds it the scale it was trained with.
- `<OUT without suffix>.metrics.json`: what the run measured and how it was set up.
Every file is written to a temporary name and renamed, so a killed run never leaves half a file.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from embedstore.encoders.r3d import SCALE_KEY
from embedstore.errors import BadInput, Conflict, NotFound

FORMAT = "embedstore-train-r3d/1"


def epoch_path(out: Path, epoch: int) -> Path:
    return out.with_name(f"{out.name}.epoch{epoch}")


def metrics_path(out: Path) -> Path:
    return out.with_suffix(".metrics.json")


def epoch_files(out: Path) -> dict[int, Path]:
    pattern = re.compile(re.escape(out.name) + r"\.epoch(\d+)$")
    found = (pattern.match(p.name) for p in out.parent.glob(f"{out.name}.epoch*")) if out.parent.is_dir() else ()
    return {int(m.group(1)): out.with_name(m.group(0)) for m in found if m}


def resume_state(out: Path, recipe: dict, resume: bool) -> dict | None:
    """The latest epoch checkpoint when resuming (its recipe must match); None for a fresh run,
    which refuses to overwrite the epoch files of another."""
    files = epoch_files(out)
    if not resume:
        if files:
            raise Conflict(f"{files[max(files)]} exists from an earlier run; pass --resume to continue it, "
                           f"or remove {out.name}.epoch* to start over")
        return None
    if not files:
        raise NotFound(f"--resume: no epoch checkpoint {out.name}.epoch<N> in {out.parent}; run without --resume")
    state = load(files[max(files)])
    changed = [f"{k} {state['recipe'].get(k)!r} -> {v!r}" for k, v in recipe.items() if state["recipe"].get(k) != v]
    if changed:
        raise BadInput(f"--resume: {files[max(files)].name} was trained with other settings ({'; '.join(changed)}); "
                       "rerun with its settings, or without --resume into another --out")
    return state


def load(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise BadInput(f"{path} is not an embedstore training checkpoint ({FORMAT})")
    return state


def save_epoch(out: Path, state: dict, keep: set[int]) -> Path:
    """Write epoch `state['epoch']`, then drop the other epoch files not in `keep`."""
    path = epoch_path(out, state["epoch"])
    _atomic(lambda tmp: torch.save({"format": FORMAT, **state}, tmp), path)
    for epoch, old in epoch_files(out).items():
        if epoch not in keep | {state["epoch"]}:
            old.unlink(missing_ok=True)
    return path


def save_weights(model: torch.nn.Module, out: Path, input_scale: str) -> None:
    """The released wrapper layout, float32 on the CPU, with the input scale it was trained on."""
    state = {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu() for k, v in model.state_dict().items()}
    _atomic(lambda tmp: torch.save({"state_dict": state, SCALE_KEY: input_scale}, tmp), out)


def save_metrics(out: Path, metrics: dict) -> Path:
    path = metrics_path(out)
    _atomic(lambda tmp: tmp.write_text(json.dumps(metrics, indent=2, default=str) + "\n"), path)
    return path


def _atomic(write, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
