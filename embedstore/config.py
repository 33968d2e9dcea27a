"""Settings read from the environment, in one place."""
from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """Default store folder: $EMBEDSTORE_HOME, else ~/.embedstore/store."""
    return Path(os.environ.get("EMBEDSTORE_HOME", Path.home() / ".embedstore" / "store"))


def weights_dir() -> Path | None:
    """Folder of local checkpoints, one sub-folder per encoder ($EMBEDSTORE_WEIGHTS)."""
    value = os.environ.get("EMBEDSTORE_WEIGHTS")
    return Path(value) if value else None


def requested_device(requested: str = "auto") -> str:
    """'auto' becomes $EMBEDSTORE_DEVICE when set (the test suite pins cpu); anything else stays."""
    return os.environ.get("EMBEDSTORE_DEVICE", requested) if requested == "auto" else requested


def device(requested: str = "auto") -> str:
    """Resolve 'auto' to 'cuda' when a GPU is visible, else 'cpu'."""
    requested = requested_device(requested)
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
