"""What an encode run is, whichever engine runs it: the vector set's provenance and masked preparer, the
videos still to embed, the run record, the batch commit and the summary. The local engine (local.py)
and the Ray engine (ray.py) both build on these, so they write the same vectors the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from embedstore.encoders.provenance import check_compatible
from embedstore.store import Run, Store
from embedstore.video.regions import MASK_KEY, MaskedPreparer


@dataclass
class EncodeSummary:
    encoder: str
    target: str
    added: int = 0
    already: int = 0
    failed: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    provenance: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.added / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {"encoder": self.encoder, "target": self.target, "added": self.added, "already": self.already,
                "failed": self.failed, "seconds": round(self.seconds, 3), "per_second": round(self.per_second, 3),
                "provenance": self.provenance, "warnings": self.warnings}


def store_encoding(store: Store, encoder) -> tuple[dict, MaskedPreparer | None]:
    """The provenance (with the mask setting) and the preparer behind that mask, for every engine.

    A vector set keeps the mask it was started with (sets from before masking: off), so it is never
    a mix; a new set takes the store's setting.
    """
    existing = store.catalog.encoder(encoder.name)
    mask = existing["preprocessing"].get(MASK_KEY, "off") if existing else store.mask
    prov = encoder.provenance()
    prov["preprocessing"][MASK_KEY] = mask
    return prov, MaskedPreparer(encoder.preparer, mask) if "video" in encoder.modalities else None  # text-only: none


def pending_videos(store: Store, encoder: str) -> tuple[list[tuple[str, str]], int]:
    """(video_id, path) of videos with a file and no vector yet for `encoder`, and how many have one."""
    rows = store.catalog.pending_videos(encoder)
    done = len(store.catalog.embedded_ids(encoder, "videos"))
    return rows, done


def run_args(store: Store, prov: dict, summary: EncodeSummary, **args) -> dict:
    """The run record of an encode: its arguments and numerics (device, precision, TF32, torch); refuses vectors
    not comparable with the set already stored under this name, and notes a precision change in summary.warnings."""
    info = store.catalog.encoder(prov["encoder"])
    if info is not None:
        summary.warnings.extend(check_compatible(info, prov, what=f"encoder {prov['encoder']}"))
    return {**args, "weights_sha256": prov["weights_sha256"], "numerics": prov["preprocessing"].get("numerics")}


def write_batch(write, run: Run | None, ids: list[str], vectors: np.ndarray) -> int:
    """Commit a batch; a video whose vector is all zeros or not finite fails on its own, named, and the rest
    are written. (A fully masked, all-black clip through a model without biases gives a zero vector, which
    has no direction: it used to fail the whole batch.)"""
    ok = np.isfinite(vectors).all(axis=1) & (np.abs(vectors).sum(axis=1) > 0)
    for i in np.flatnonzero(~ok).tolist():
        if run is not None:
            run.fail(ids[i], f"{ids[i]}: the model gave an all-zero or non-finite vector (a blank video after masking?); "
                             "check the file")
    keep = np.flatnonzero(ok).tolist()
    return write([ids[i] for i in keep], vectors[ok]) if keep else 0
