"""`embedstore ingest`: register videos (an EchoNet folder, a folder of files, or one file) in a store.

Idempotent by content (sha256): a file already present is 'unchanged'. Each video is decoded once
to check it and read its size and timing (kept over FileList's declared values, which are stored
beside them); VolumeTracings.csv, when present, gives each video its ED/ES frames and traced LV
outlines. A bad file is skipped with its reason and the rest go on.
Rows are committed in batches, so an interrupted ingest keeps what it finished and resumes.

DICOM trees (PACS exports, often without file suffixes) and DICOMDIR media: cines group into studies
and patients by their keyed Study Instance UID and Patient ID hashes (video/deid.py; the Series Instance
UID is kept as a keyed hash too, videos.series_id), dates are the
patient's modified dates; stills and objects without pixels are listed as skipped with the reason.
Each file is also read through the store's mask setting (video/regions.py), so a cine whose image
cannot be cleaned is refused here, before it reaches the catalog; warnings are listed per file.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from embedstore.datasets.echonet import DECLARED, read_filelist, read_reports, read_volume_tracings
from embedstore.errors import BadInput, EmbedstoreError, NotFound
from embedstore.hashing import sha256_file
from embedstore.progress import bar
from embedstore.store import Store
from embedstore.video.read import VIDEO_SUFFIXES, read_video

BATCH = 128
DICOMDIR = "DICOMDIR"


@dataclass
class IngestSummary:
    added: int = 0
    unchanged: int = 0
    labelled: int = 0
    reports: int = 0
    traced: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    mask: str = "on"

    def as_dict(self) -> dict:
        return {"added": self.added, "unchanged": self.unchanged, "labelled": self.labelled,
                "reports": self.reports, "traced": self.traced, "skipped": [{"item": p, "reason": r} for p, r in self.skipped],
                "warnings": self.warnings, "mask": self.mask}


def find_videos(folder: Path) -> list[Path]:
    """Video files below `folder` in a stable order: by suffix, and suffix-less DICOM files (PACS trees)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.upper() != DICOMDIR
                  and (p.suffix.lower() in VIDEO_SUFFIXES or (not p.suffix and _is_dicom(p))))


def dicomdir_files(path: Path) -> list[Path]:
    """The files a DICOMDIR references, in its order (only those that exist)."""
    from pydicom.fileset import FileSet

    try:
        fileset = FileSet(pydicom.dcmread(path))
    except Exception as exc:  # a damaged DICOMDIR raises several types
        raise BadInput(f"{path}: unreadable DICOMDIR ({' '.join(str(exc).split())[:120]}); ingest its folder instead") from exc
    return [Path(instance.path) for instance in fileset if Path(instance.path).is_file()]


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def describe(path: Path, salt: str, mask: str | None = None) -> tuple[dict, list[str]]:
    """Catalog row of one file and its warnings: decoded (and masked) once to validate it; DICOM keys
    de-identified with the salt."""
    video = read_video(path, salt=salt, mask=mask)
    deid = video.meta.get("deid", {})
    return {
        "video_id": path.stem, "source_path": str(path.resolve()), "sha256": sha256_file(path),
        "patient_id": deid.get("patient_id"), "study_id": deid.get("study_id"), "series_id": deid.get("series_id"),
        "acquired_at": deid.get("acquired_at"), "view": deid.get("view"),
        "n_frames": video.n_frames, "fps": video.fps, "height": video.height, "width": video.width,
        "format": video.format,
        "image_region": json.dumps(video.meta["mask"]) if "mask" in video.meta else None,
    }, list(video.meta.get("warnings", []))


def ingest(source: str | Path, store: Store, reports: str | Path | None = None, workers: int = 2,
           progress: bool = True, mask: str | None = None) -> IngestSummary:
    """Add the videos under `source` (and optional reports) to `store`; see the module docstring.

    `mask` sets the store's mask setting ("off" only on purpose, e.g. EchoNet-Dynamic; refused once
    the store holds vectors); None keeps it.
    """
    source = Path(source)
    if not source.exists():
        raise NotFound(f"{source}: no such file or folder")
    if mask is not None:
        store.set_mask(mask)
    summary = IngestSummary(mask=store.mask)
    labels: dict[str, dict] = {}
    if source.is_dir() and (source / "FileList.csv").exists():
        labels = {row["video_id"]: row for row in read_filelist(source / "FileList.csv")}
        videos_dir = source / "Videos" if (source / "Videos").is_dir() else source
        paths = find_videos(videos_dir)
        on_disk = {p.stem for p in paths}
        for video_id in sorted(set(labels) - on_disk):
            summary.skipped.append((video_id, "listed in FileList.csv but no video file found"))
        paths = [p for p in paths if p.stem in labels] + [p for p in paths if p.stem not in labels]
    elif source.is_dir():
        paths = find_videos(source)
        summary.skipped.extend((str(p), f"{p}: a DICOMDIR (media directory, no image); its files are read from the folder")
                               for p in sorted(source.rglob("*")) if p.is_file() and p.name.upper() == DICOMDIR)
    elif source.name.upper() == DICOMDIR:
        paths = dicomdir_files(source)
    else:
        paths = [source]
    report_rows = read_reports(Path(reports)) if reports else []

    with store.run("ingest", {"source": str(source), "reports": str(reports) if reports else None,
                              "mask": store.mask}) as run:
        _add_paths(paths, labels, store, summary, workers, progress)
        if labels:
            known = store.catalog.video_ids()
            # the decoded frame rate, size and frame count stay on the video; FileList's are kept as declared
            summary.labelled = store.catalog.update_labels(
                [{k: v for k, v in labels[i].items() if k not in DECLARED} for i in labels if i in known])
            store.catalog.set_declared([labels[i] for i in labels if i in known])
        if source.is_dir() and (source / "VolumeTracings.csv").exists():
            tracings, bad = read_volume_tracings(source / "VolumeTracings.csv")
            known = store.catalog.video_ids()
            summary.traced = store.catalog.set_tracings([t for t in tracings if t["video_id"] in known])
            summary.skipped.extend(bad)
        if report_rows:
            summary.reports = store.add_reports(report_rows)
        run.added = summary.added
        run.failures = [{"item": p, "error": r} for p, r in summary.skipped]
    if summary.labelled:  # new patient labels make a kept same-patient calibration stale: the writer refits it
        from embedstore.index.similar import refresh_calibrations

        refresh_calibrations(store)
    return summary


def _add_paths(paths: list[Path], labels: dict, store: Store, summary: IngestSummary, workers: int,
               progress: bool) -> None:
    known = store.catalog.known_sha256()
    taken = store.catalog.video_ids()
    salt, mask = store.salt, store.mask
    pending: list[dict] = []

    def job(path: Path) -> tuple[dict, list[str]] | tuple[str, str]:
        try:
            digest = sha256_file(path)
            if digest in known:
                return ("unchanged", known[digest])
            return describe(path, salt, mask)
        except EmbedstoreError as exc:
            return (str(path), exc.message)
        except OSError as exc:
            return (str(path), f"{path}: cannot read ({exc.strerror})")

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, bar(total=len(paths), desc="ingest", unit="video",
                                                                       enabled=progress) as pbar:
        for path, result in zip(paths, pool.map(job, paths)):
            pbar.update(1)
            if isinstance(result[0], str):
                if result[0] == "unchanged":
                    summary.unchanged += 1
                else:
                    summary.skipped.append(result)
                continue
            row, warnings = result
            summary.warnings.extend(warnings)
            if row["sha256"] in known:  # the same bytes twice within this ingest
                summary.unchanged += 1
                continue
            if row["video_id"] in taken:
                row["video_id"] = f"{row['video_id']}-{row['sha256'][:8]}"
            label = labels.get(path.stem)
            if label:
                row.update({k: v for k, v in label.items() if v is not None and k not in ("height", "width", "n_frames", "fps")})
            known[row["sha256"]] = row["video_id"]
            taken.add(row["video_id"])
            pending.append(row)
            if len(pending) >= BATCH:
                summary.added += store.add_videos(pending)
                pending = []
    summary.added += store.add_videos(pending)
