"""DICOM cines against AVIs of the same frames: ingest and encode throughput, and what masking costs.

    .venv/bin/python bench/dicom.py [--videos 6] [--frames 60] [--workers 2]

The phantom writes each cine twice: a DICOM as a scanner exports it (480x640, JPEG baseline
YBR_FULL_422, Sequence of Ultrasound Regions) and an AVI (MJPEG) of the very same screen frames.
Ingest (decode + mask check + catalog) and encode (r3d, random init, paper preset: decode + mask +
prepare + model + write) run through the library on fresh stores with the mask on. Masking cost is
timed per video against decoding it: DICOM crops to its region, AVI computes the fan mask from the
pixels and blanks the rest, in place as the reader does (read_video(..., mask="on"): ingest, thumbnails)
and into a copy as the encoders' MaskedPreparer does. Prints a markdown table (medians).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from embedstore.datasets.ingest import ingest
from embedstore.datasets.phantom_dicom import make_dicom_phantom
from embedstore.encode import encode_store
from embedstore.encoders import get_encoder
from embedstore.store import open_store
from embedstore.video.read import read_video
from embedstore.video.regions import mask_video


def throughput(folder: Path, work: Path, workers: int) -> tuple[float, float, int]:
    """(ingest videos/s, encode videos/s, videos) for the files under `folder`, on a fresh store."""
    with open_store(work / f"s-{time.monotonic_ns()}", create=True) as store:
        start = time.perf_counter()
        summary = ingest(folder, store, workers=workers, progress=False)
        ingest_s = time.perf_counter() - start
        assert not summary.skipped, summary.skipped
        encoded = encode_store(store, get_encoder("r3d", random_init=True), workers=workers, progress=False)
        assert encoded.added == summary.added, encoded.failed
    return summary.added / ingest_s, encoded.added / encoded.seconds, summary.added


def mask_cost(paths: list[Path]) -> tuple[float, float, float, str]:
    """Median seconds to decode one video, to mask it in place and into a copy, and how it was masked."""
    decode, in_place, copy, source = [], [], [], ""
    for path in paths:
        start = time.perf_counter()
        video = read_video(path)
        decode.append(time.perf_counter() - start)
        start = time.perf_counter()
        mask_video(video, "on")
        copy.append(time.perf_counter() - start)
        start = time.perf_counter()
        source = mask_video(video, "on", in_place=True).meta["mask"]["source"]
        in_place.append(time.perf_counter() - start)
    return statistics.median(decode), statistics.median(in_place), statistics.median(copy), source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        info = make_dicom_phantom(work / "cohort", patients=args.videos, videos_per_patient=1, studies_per_patient=1,
                                  frames=args.frames, avi=True, reference=True)  # one preset, as in the earlier runs
        dicoms = [row["path"] for row in info["files"]]
        avis = [row["avi"] for row in info["files"]]
        mask_video(read_video(avis[0]), "on")  # imports and caches out of the timings
        rows = []
        for kind, folder, paths in (("DICOM JPEG baseline", info["dicom_dir"], dicoms), ("AVI MJPEG", work / "cohort" / "avi", avis)):
            ingest_rate, encode_rate, n = throughput(folder, work, args.workers)
            decode_s, in_place_s, copy_s, source = mask_cost(paths)
            size = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
            rows.append((kind, n, f"{size:.1f}", f"{ingest_rate:.2f}", f"{encode_rate:.2f}", f"{decode_s * 1e3:.0f}",
                         f"{in_place_s * 1e3:.0f} / {copy_s * 1e3:.0f} ({source})",
                         f"{in_place_s / decode_s:.0%} / {copy_s / decode_s:.0%}"))
    print(f"\n{args.videos} phantom cines, {args.frames} frames of 480x640, {args.workers} decode threads, "
          f"torch threads {torch.get_num_threads()}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}\n")
    print("| file | videos | MB/video | ingest videos/s | encode r3d videos/s | decode ms/video | mask ms/video (in place / copy) | mask/decode |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


if __name__ == "__main__":
    main()
