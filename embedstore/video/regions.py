"""Only the ultrasound image leaves video/: the 2D region from the DICOM header, else the moving fan.

Why: burned-in text (the patient's name, the date), toolbars and the ECG trace sit around the
sector on real cines. Sent to an encoder they make vectors cluster by screen layout; sent to a web
page they show PHI. DICOM PS3.15's "clean pixel data" rule keeps only the Sequence of Ultrasound
Regions' 2D areas (FACTS.md); files without regions (AVI/MP4, some vendors) fall back to the fan
found in the pixels (`prepare.sector_mask`). The mask is computed once per video.

Setting "on" (a store's default) or "off" (only by an explicit flag, e.g. for EchoNet-Dynamic whose
text was removed before release). Bad headers are refused per file with a one-line VideoError.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from pydicom.dataset import Dataset

from embedstore.errors import BadInput, VideoError
from embedstore.video.prepare import apply_mask, sector_mask
from embedstore.video.frames import Video

MASK_SETTINGS = ("on", "off")
MASK_KEY = "mask"  # in Video.meta (what was done) and in a vector set's preprocessing (the store's setting)
SPATIAL_2D, TISSUE = 1, 1
_BOX = ("RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1", "RegionLocationMaxY1")


@dataclass(frozen=True)
class Region:
    """One item of (0018,6011): an inclusive pixel box and what it shows."""

    index: int  # 0-based position in the sequence
    x0: int
    y0: int
    x1: int
    y1: int
    spatial_format: int  # 1 = 2D, 2 = M-mode, 3 = spectral, 4 = waveform
    data_type: int  # 1 = tissue, 2 = colour flow, 3 = PW, 4 = CW

    def contains(self, other: "Region") -> bool:
        return self.x0 <= other.x0 and self.y0 <= other.y0 and self.x1 >= other.x1 and self.y1 >= other.y1

    def as_dict(self) -> dict:
        return {"index": self.index, "x0": self.x0, "y0": self.y0, "x1": self.x1, "y1": self.y1,
                "spatial_format": self.spatial_format, "data_type": self.data_type}


def header_regions(ds: Dataset) -> list[dict]:
    """The raw region items of a header (integers or None), read before decoding; [] when there are none."""
    out = []
    for item in ds.get("SequenceOfUltrasoundRegions") or []:
        row = {}
        for key in (*_BOX, "RegionSpatialFormat", "RegionDataType"):
            try:
                row[key] = int(item.get(key)) if item.get(key) is not None else None
            except (TypeError, ValueError):
                row[key] = None
        out.append(row)
    return out


def choose_region(raw: list[dict], height: int, width: int, name: str) -> Region | None:
    """The one 2D region to keep (tissue first; one nested inside another counts once), or None without regions.

    Refuses: a region with missing or inverted coordinates, of zero size, outside the image; no 2D
    region at all (a spectral-only cine); several separate 2D regions (a dual or split screen).
    """
    if not raw:
        return None
    regions = []
    for i, row in enumerate(raw):
        box = [row.get(k) for k in _BOX]
        if any(v is None for v in box):
            raise VideoError(f"{name}: ultrasound region {i + 1} has no complete location (0018,6018-601E); "
                             "re-export the cine, or ingest with --no-mask if it has no burned-in text")
        x0, y0, x1, y1 = box
        if x1 <= x0 or y1 <= y0:
            raise VideoError(f"{name}: ultrasound region {i + 1} ({x0},{y0})-({x1},{y1}) has zero size; re-export the cine")
        if x0 < 0 or y0 < 0 or x1 >= width or y1 >= height:
            raise VideoError(f"{name}: ultrasound region {i + 1} ({x0},{y0})-({x1},{y1}) lies outside the "
                             f"{width}x{height} image; re-export the cine")
        regions.append(Region(i, x0, y0, x1, y1, row.get("RegionSpatialFormat") or 0, row.get("RegionDataType") or 0))
    flat = [r for r in regions if r.spatial_format == SPATIAL_2D]
    if not flat:
        raise VideoError(f"{name}: the header's {len(regions)} ultrasound region(s) hold no 2D image "
                         "(spectral or M-mode only); embedstore embeds 2D cines")
    tissue = [r for r in flat if r.data_type == TISSUE] or flat
    outer = [r for r in tissue if not any(o is not r and o.contains(r) for o in tissue)]
    if len(outer) > 1:
        raise VideoError(f"{name}: {len(outer)} separate 2D regions (a dual or split screen); "
                         "export one view per cine")
    return outer[0]


def check_setting(setting: str) -> str:
    if setting not in MASK_SETTINGS:
        raise BadInput(f"mask must be 'on' or 'off', got {setting!r}")
    return setting


def mask_video(video: Video, setting: str, in_place: bool = False) -> Video:
    """`video` with only its ultrasound image kept; what was done goes to meta["mask"] (and meta["warnings"]).

    A DICOM with regions is cropped to its 2D region (the region is the image: same pixels whatever
    the vendor's screen layout); otherwise everything outside the moving fan is set to zero, in
    `video`'s own frames when `in_place` (a reader that just decoded them; saves a copy of the video).
    A video masked already is returned as it is; masked with the other setting, refused.
    """
    check_setting(setting)
    done = video.meta.get(MASK_KEY)
    if done is not None:
        if done["setting"] != setting:
            raise BadInput(f"video already prepared with mask {done['setting']}, cannot prepare it with mask {setting}")
        return video
    name = str(video.path) if video.path else "video"
    if setting == "off":
        return replace(video, meta={**video.meta, MASK_KEY: {"setting": "off"}})
    warnings = list(video.meta.get("warnings", []))
    region = choose_region(video.meta.get("us_regions") or [], video.height, video.width, name)
    if region is not None:
        frames = np.ascontiguousarray(video.frames[:, region.y0:region.y1 + 1, region.x0:region.x1 + 1])
        done = {"setting": "on", "source": "region", "region": region.as_dict()}
    else:
        if video.meta.get("burned_in_annotation") == "YES":
            warnings.append(f"{name}: Burned In Annotation is YES and the header has no ultrasound regions; "
                            "kept only the moving fan found in the pixels")
        if video.n_frames < 2:
            raise VideoError(f"{name}: a single frame without ultrasound regions; the fan cannot be found "
                             "from motion, so the image cannot be cleaned")
        mask = sector_mask(video.frames)
        if not mask.any():
            raise VideoError(f"{name}: nothing moves in this video, so no ultrasound fan was found; "
                             "ingest with --no-mask if it has no burned-in text")
        frames = apply_mask(video.frames, mask, in_place=in_place)
        done = {"setting": "on", "source": "fan", "kept": round(float(mask.mean()), 4)}
    return replace(video, frames=frames, meta={**video.meta, MASK_KEY: done, "warnings": warnings})


class MaskedPreparer:
    """An encoder's preparer behind the store's mask setting: picklable, so reader threads and Ray tasks share it."""

    def __init__(self, preparer, setting: str):
        self.preparer, self.setting = preparer, check_setting(setting)

    def __call__(self, video: Video) -> np.ndarray:
        return self.preparer(mask_video(video, self.setting))
