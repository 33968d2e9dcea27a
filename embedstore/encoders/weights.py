"""Where each encoder's checkpoint comes from: named weights as data, resolution (hashing: embedstore/hashing.py).

Resolution order (first hit wins, nothing is downloaded):
  1. an explicit path (a checkpoint file, or a folder holding one);
  2. `$EMBEDSTORE_WEIGHTS/<encoder>/`;
  3. the offline caches: torch hub's checkpoints folder (torchvision files) or the Hugging Face
     hub cache (hub ids), looked up local-only, as with HF_HUB_OFFLINE=1;
  4. otherwise WeightsNotFound: one line naming the files, the places and a fetch command.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from embedstore.config import weights_dir
from embedstore.errors import WeightsNotFound

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
_R3D_RAW = "https://media.githubusercontent.com/media/Team-Echo-MIT/r3d-v0-embeddings/main"
_ECHOPRIME_FETCH = ("download model_data.zip of release v1.0.0 from https://github.com/echonet/EchoPrime/releases"
                    " and unzip it into $EMBEDSTORE_WEIGHTS/echoprime/ (weights/ inside it), or pass its folder")
_ECHOPRIME_LICENCE = ("EchoPrime (echonet/EchoPrime): Cedars-Sinai academic licence, research use only; no"
                      " redistribution of the weights, candidate files or derived embeddings")
# The authors' released checkpoint (Team-Echo-MIT/r3d-v0-embeddings, embedder/); r3d_o_sp4.pt was a deleted
# oversampling experiment and is never looked for.
RELEASED_R3D = "r3d_binary_111723.pt"
KINETICS_FETCH = "python -c \"import torchvision; torchvision.models.video.r3d_18(weights='KINETICS400_V1')\""


def _hf_fetch(repo: str, encoder: str) -> str:
    return (f"hf download {repo} --local-dir $EMBEDSTORE_WEIGHTS/{encoder}"
            f" (huggingface_hub < 1.0: huggingface-cli download {repo} --local-dir $EMBEDSTORE_WEIGHTS/{encoder})")


@dataclass(frozen=True)
class NamedWeights:
    """One encoder's known weights; `files` are looked for in this order inside a folder."""

    encoder: str
    files: tuple[str, ...]
    config: str | None = None  # a folder-format checkpoint (HF, open_clip) needs this file beside the weights
    hf_repo: str | None = None
    torch_hub_file: str | None = None
    fetch: str = ""
    licence: str = ""
    folder: str = ""  # the folder under $EMBEDSTORE_WEIGHTS when it is not the encoder's name (a shared model_data)

    @property
    def dirname(self) -> str:
        return self.folder or self.encoder

    @property
    def is_folder(self) -> bool:
        return self.config is not None


WEIGHTS: dict[str, NamedWeights] = {
    w.encoder: w
    for w in (
        NamedWeights(
            "r3d",
            files=(RELEASED_R3D, "r3d_18-b3b3357e.pth"),
            torch_hub_file="r3d_18-b3b3357e.pth",
            fetch=f"curl -L --create-dirs -o $EMBEDSTORE_WEIGHTS/r3d/{RELEASED_R3D} {_R3D_RAW}/embedder/{RELEASED_R3D}"
            f" (or the Kinetics-400 init: {KINETICS_FETCH})",
            licence="MIT (Team-Echo-MIT/r3d-v0-embeddings; Kinetics-400 init from torchvision, BSD-3-Clause);"
            " vectors of EchoNet-Dynamic videos carry its research-use agreement",
        ),
        NamedWeights(
            "r3d-v0",
            files=(RELEASED_R3D, "r3d_18-b3b3357e.pth"),
            torch_hub_file="r3d_18-b3b3357e.pth",
            fetch=f"curl -L --create-dirs -o $EMBEDSTORE_WEIGHTS/r3d-v0/{RELEASED_R3D} {_R3D_RAW}/embedder/{RELEASED_R3D}",
            licence="MIT (Team-Echo-MIT/r3d-v0-embeddings); vectors of EchoNet-Dynamic videos carry its"
            " research-use agreement",
        ),
        NamedWeights(
            "videomae",
            files=("model.safetensors", "pytorch_model.bin"),
            config="config.json",
            hf_repo="MCG-NJU/videomae-base",
            fetch=_hf_fetch("MCG-NJU/videomae-base", "videomae"),
            licence="CC-BY-NC-4.0 (MCG-NJU/videomae-base weights): non-commercial use",
        ),
        NamedWeights(
            "echoclip",
            files=("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
            config="open_clip_config.json",
            hf_repo="mkaichristensen/echo-clip",
            fetch=_hf_fetch("mkaichristensen/echo-clip", "echoclip"),
            licence="EchoCLIP (echonet/echo_CLIP): academic, non-commercial licence; no redistribution of"
            " weights or derived embeddings without the authors' permission",
        ),
        NamedWeights(
            "echoclip-r",
            files=("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
            config="open_clip_config.json",
            hf_repo="mkaichristensen/echo-clip-r",
            fetch=_hf_fetch("mkaichristensen/echo-clip-r", "echoclip-r"),
            licence="EchoCLIP-R (echonet/echo_CLIP): academic, non-commercial licence; the template vocabulary"
            " is not shipped (load it from your own copy); no redistribution of weights or derived embeddings",
        ),
        NamedWeights(
            "echoprime",
            files=("weights/echo_prime_encoder.pt", "echo_prime_encoder.pt"),
            fetch=_ECHOPRIME_FETCH,
            licence=_ECHOPRIME_LICENCE,
        ),
        NamedWeights(
            "echoprime-text",
            files=("weights/echo_prime_text_encoder.pt", "echo_prime_text_encoder.pt"),
            fetch=_ECHOPRIME_FETCH,
            licence=_ECHOPRIME_LICENCE,
            folder="echoprime",
        ),
        NamedWeights(
            "echoprime-views",  # the view classifier (not an encoder): found in the same model_data folder
            files=("weights/view_classifier.pt", "view_classifier.pt", "weights/view_classifier.ckpt", "view_classifier.ckpt"),
            fetch=_ECHOPRIME_FETCH,
            licence=_ECHOPRIME_LICENCE,
            folder="echoprime",
        ),
        NamedWeights(
            "panecho",
            files=("panecho.pt",),
            fetch="curl -L --create-dirs -o $EMBEDSTORE_WEIGHTS/panecho/panecho.pt"
            " https://github.com/gholste/PanEcho/releases/download/v1.0/panecho.pt",
            licence="PanEcho (CarDS-Yale/PanEcho): weights CC BY-NC-SA 4.0, code AGPLv3; non-commercial, no"
            " redistribution of the weights; derived embeddings share alike under CC BY-NC-SA 4.0",
        ),
        NamedWeights(
            "pixels",
            files=(),
            fetch="nothing to fetch: the pixel baseline has no weights",
            licence="no weights (embedstore's pixel baseline); vectors carry the licence of the videos",
        ),
    )
}
# Licences whose terms forbid passing the weights' vectors on without the authors' permission (export's gate).
NO_REDISTRIBUTION = frozenset({"echoclip", "echoclip-r", "echoprime", "echoprime-text", "panecho"})


@dataclass(frozen=True)
class Resolved:
    """A found checkpoint: `path` is what the loader opens (file, or folder for HF/open_clip)."""

    path: Path
    file: Path  # the weights file itself, hashed for provenance
    source: str  # explicit | EMBEDSTORE_WEIGHTS | torch-hub-cache | hf-hub-cache


def resolve(encoder: str, explicit: str | Path | None = None) -> Resolved:
    """Find `encoder`'s checkpoint offline, or raise a one-line WeightsNotFound."""
    entry = WEIGHTS[encoder]
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise WeightsNotFound(f"weights path {path} does not exist; pass an existing {_expected(entry)}")
        found = _in_folder(entry, path.parent if path.is_file() and entry.is_folder else path)
        if found is None:
            raise WeightsNotFound(f"{path} holds no {_expected(entry)}; fetch with: {entry.fetch}")
        return Resolved(*found, "explicit")
    found = find(encoder)
    if found is None:
        raise WeightsNotFound(_not_found_message(entry))
    return found


def find(encoder: str) -> Resolved | None:
    """The checkpoint the default resolution would use (steps 2-3), or None; never raises for absence."""
    entry = WEIGHTS[encoder]
    root = weights_dir()
    if root is not None and (root / entry.dirname).is_dir():
        found = _in_folder(entry, root / entry.dirname)
        if found is not None:
            return Resolved(*found, "EMBEDSTORE_WEIGHTS")
    if entry.torch_hub_file:
        candidate = torch_hub_checkpoints() / entry.torch_hub_file
        if candidate.is_file():
            return Resolved(candidate, candidate, "torch-hub-cache")
    if entry.hf_repo:
        found = _in_hf_cache(entry)
        if found is not None:
            return Resolved(*found, "hf-hub-cache")
    return None


def torch_hub_checkpoints() -> Path:
    """torch.hub's checkpoint folder, read from $TORCH_HOME at call time (as torch.hub does)."""
    torch_home = os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "torch"
    return Path(torch_home).expanduser() / "hub" / "checkpoints"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (huggingface_hub reads it at import)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    hf_home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    return Path(hf_home).expanduser() / "hub"


def _in_folder(entry: NamedWeights, folder: Path) -> tuple[Path, Path] | None:
    """(path to load, weights file) when `folder` (or a file) holds a usable checkpoint."""
    if folder.is_file():
        return (folder, folder) if not entry.is_folder else None
    if entry.is_folder and not (folder / entry.config).is_file():
        return None
    for name in entry.files:
        if (folder / name).is_file():
            return (folder if entry.is_folder else folder / name), folder / name
    if entry.is_folder:
        return None
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    return (candidates[0], candidates[0]) if len(candidates) == 1 else None


def _in_hf_cache(entry: NamedWeights) -> tuple[Path, Path] | None:
    from huggingface_hub import try_to_load_from_cache

    cache = str(hf_hub_cache())
    config = try_to_load_from_cache(entry.hf_repo, entry.config, cache_dir=cache)
    if not isinstance(config, str):
        return None
    snapshot = Path(config).parent
    for name in entry.files:
        weights = try_to_load_from_cache(entry.hf_repo, name, cache_dir=cache)
        if isinstance(weights, str) and Path(weights).parent == snapshot:
            return snapshot, Path(weights)
    return None


def _expected(entry: NamedWeights) -> str:
    files = " or ".join(entry.files)
    return f"folder with {entry.config} and {files}" if entry.is_folder else f"checkpoint file ({files})"


def _not_found_message(entry: NamedWeights) -> str:
    root = weights_dir()
    places = [f"{root / entry.dirname}/" if root else f"$EMBEDSTORE_WEIGHTS/{entry.dirname}/ (EMBEDSTORE_WEIGHTS is unset)"]
    if entry.torch_hub_file:
        places.append(str(torch_hub_checkpoints() / entry.torch_hub_file))
    if entry.hf_repo:
        places.append(f"the Hugging Face cache {hf_hub_cache()} (hub id {entry.hf_repo})")
    return (
        f"no weights for encoder '{entry.encoder}': expected a {_expected(entry)} in {' or '.join(places)};"
        f" on a machine with internet fetch them with: {entry.fetch}; or pass weights=PATH"
    )
