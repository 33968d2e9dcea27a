"""EchoNet-Dynamic's FileList.csv, VolumeTracings.csv and reports.csv, with their quirks.

FileList's FileName has no `.avi` (VolumeTracings' has); there are no patient ids, so each video is
its own patient unless a PatientID column is present (the phantom cohort and users' own lists).
FileList's frame rate, size and frame count are what the list *declares* (6 rows claim 768x1024 for
112-px files): ingest keeps the decoded values on the video and these beside them.
VolumeTracings: two traced frames per video (0-based); per frame the first row is the LV long axis,
the others the chords apex to mitral valve. End-diastole is the frame with the larger volume by the
method of disks, end-systole the other (the file's order is not relied on).
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
TRACINGS_REQUIRED = ["FileName", "X1", "Y1", "X2", "Y2", "Frame"]
DECLARED = ("fps", "n_frames", "height", "width")  # FileList columns the decoded file overrides


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


def read_volume_tracings(path: Path) -> tuple[list[dict], list[tuple[str, str]]]:
    """VolumeTracings.csv -> (one row per traced video: video_id, ed_frame, es_frame, ed and es outlines as
    [[x1, y1, x2, y2], ...] with the long axis first; [(video_id, why)] for videos that cannot be used)."""
    path = Path(path)
    frames: dict[str, dict[int, list[list[float]]]] = {}
    with _open_csv(path) as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in TRACINGS_REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise BadInput(f"{path}: missing column(s) {', '.join(missing)}; EchoNet's VolumeTracings.csv has "
                           f"{', '.join(TRACINGS_REQUIRED)}")
        for line, rec in enumerate(reader, start=2):
            where = f"{path} line {line}"
            if not (rec.get("FileName") or "").strip():
                raise BadInput(f"{where}: empty FileName")
            coords = [_number(float, rec.get(c), where, c) for c in ("X1", "Y1", "X2", "Y2")]
            frame = _number(int, rec.get("Frame"), where, "Frame")
            if frame is None or frame < 0 or any(c is None for c in coords):
                raise BadInput(f"{where}: a tracing row needs X1, Y1, X2, Y2 and a Frame >= 0")
            video = frames.setdefault(strip_avi(rec["FileName"].strip()), {})
            video.setdefault(frame, []).append(coords)
    rows, bad = [], []
    for video_id, traced in frames.items():
        if len(traced) != 2 or any(len(t) < 2 for t in traced.values()):
            bad.append((video_id, f"VolumeTracings.csv has {len(traced)} traced frame(s) for it; expected 2 (ED and ES),"
                                  " each with a long axis and chords"))
            continue
        ed, es = sorted(traced, key=lambda f: disk_volume(traced[f]), reverse=True)
        rows.append({"video_id": video_id, "ed_frame": ed, "es_frame": es, "ed": traced[ed], "es": traced[es]})
    return rows, bad


def disk_volume(trace: list[list[float]]) -> float:
    """Method of disks in pixel units: sum of pi (d/2)^2 x L / n over the n chords (row 0 is the long axis L)."""
    (x1, y1, x2, y2), chords = trace[0], trace[1:]
    length = math.hypot(x2 - x1, y2 - y1)
    return sum(math.pi * (math.hypot(c[2] - c[0], c[3] - c[1]) / 2) ** 2 for c in chords) * length / len(chords)
