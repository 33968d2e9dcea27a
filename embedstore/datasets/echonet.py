"""EchoNet-Dynamic's FileList.csv and reports.csv, with their quirks.

FileList's FileName has no `.avi` (VolumeTracings' has); there are no patient ids, so each video is
its own patient unless a PatientID column is present (the phantom cohort and users' own lists).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from embedstore.errors import BadInput

FILELIST_REQUIRED = ["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split"]
NUMERIC = {"EF": float, "ESV": float, "EDV": float, "FrameHeight": int, "FrameWidth": int, "FPS": float,
           "NumberOfFrames": int}
SPLITS = {"TRAIN", "VAL", "TEST"}


def strip_avi(name: str) -> str:
    return name[:-4] if name.lower().endswith(".avi") else name


def _number(kind, text: str, where: str, column: str):
    if text is None or text.strip() == "":
        return None
    try:
        value = kind(float(text)) if kind is int else kind(text)
    except ValueError:
        raise BadInput(f"{where}: column {column} has {text!r}, not a number; fix the row or drop it") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise BadInput(f"{where}: column {column} is {text!r}; use a finite number or leave it empty")
    return value


def _open_csv(path: Path):
    """Open a CSV as text (BOM tolerated), with a one-line error when it cannot be opened."""
    try:
        return open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise BadInput(f"{path}: cannot open ({exc.strerror})") from exc


def read_filelist(path: Path) -> list[dict]:
    """FileList.csv -> catalog label rows keyed by video_id (FileName without .avi)."""
    path = Path(path)
    with _open_csv(path) as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in FILELIST_REQUIRED if c not in header]
        if missing:
            raise BadInput(f"{path}: missing column(s) {', '.join(missing)}; EchoNet's FileList.csv has {', '.join(FILELIST_REQUIRED)}")
        rows = []
        for line, rec in enumerate(reader, start=2):
            where = f"{path} line {line}"
            if not rec.get("FileName"):
                raise BadInput(f"{where}: empty FileName")
            values = {c: _number(kind, rec.get(c), where, c) for c, kind in NUMERIC.items()}
            split = (rec.get("Split") or "").strip().upper() or None
            if split is not None and split not in SPLITS:
                raise BadInput(f"{where}: Split is {rec['Split']!r}; use TRAIN, VAL or TEST")
            video_id = strip_avi(rec["FileName"].strip())
            rows.append({
                "video_id": video_id,
                "ef": values["EF"], "esv": values["ESV"], "edv": values["EDV"],
                "height": values["FrameHeight"], "width": values["FrameWidth"], "fps": values["FPS"],
                "n_frames": values["NumberOfFrames"], "split": split,
                "patient_id": (rec.get("PatientID") or "").strip() or video_id,
                "study_id": (rec.get("StudyID") or "").strip() or None,
            })
    return rows


def read_reports(path: Path) -> list[dict]:
    """reports.csv with columns report_id, text and at least one of study_id / video_id."""
    path = Path(path)
    with _open_csv(path) as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        if "text" not in header or not ({"study_id", "video_id"} & set(header)):
            raise BadInput(f"{path}: a reports file needs columns report_id (optional), text, and study_id or video_id")
        rows = []
        for line, rec in enumerate(reader, start=2):
            text = (rec.get("text") or "").strip()
            if not text:
                raise BadInput(f"{path} line {line}: empty report text")
            key = rec.get("study_id") or rec.get("video_id")
            rows.append({
                "report_id": (rec.get("report_id") or "").strip() or f"r_{key}",
                "study_id": (rec.get("study_id") or "").strip() or None,
                "video_id": (rec.get("video_id") or "").strip() or None,
                "patient_id": (rec.get("patient_id") or "").strip() or None,
                "text": text,
            })
    return rows
