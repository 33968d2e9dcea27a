"""Encoder throughput: the whole `encode` pipeline vs the bare model forward, side by side.

    .venv/bin/python bench/encode.py [--encoders r3d,r3d-v0,videomae,echoclip,echoprime,panecho] [--videos 16] [--frames 64]
    .venv/bin/python bench/encode.py --device cuda --videos 64     # on a GPU (bench/gpu_smoke.py runs it)

Pipeline = read + decode + prepare (threads running ahead) + model + HDF5/DuckDB write, through
`encode_store`. Bare = `embed_prepared` on inputs already decoded and prepared in memory, same
batch size and threads. Random-init weights (no checkpoints on this machine): the architecture,
and so the cost, is the published one. Prints a markdown table; medians over --repeats runs.
"""
from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from embedstore.datasets.ingest import ingest
from embedstore.datasets.phantom import make_phantom
from embedstore.encode import encode_store
from embedstore.encoders import get_encoder
from embedstore.store import open_store
from embedstore.video.read import read_video

HEAVY = {"videomae": 4, "echoclip": 4, "echoclip-r": 4, "echoprime": 4, "panecho": 4}  # videos for the slow models on a CPU


def bare(enc, paths: list[Path], batch_size: int) -> float:
    inputs = [enc.preparer(read_video(p)) for p in paths]
    start = time.perf_counter()
    for i in range(0, len(inputs), batch_size):
        enc.embed_prepared(inputs[i : i + batch_size])
    return len(inputs) / (time.perf_counter() - start)


def pipeline(enc, base_store: Path, work: Path, ids: list[str], batch_size: int, workers: int) -> float:
    store = work / f"s-{time.monotonic_ns()}"
    shutil.copytree(base_store, store)
    with open_store(store) as st:
        keep = set(ids)
        st.catalog.con.execute("DELETE FROM videos WHERE video_id NOT IN (SELECT unnest(?))", [sorted(keep)])
        summary = encode_store(st, enc, batch_size=batch_size, workers=workers, progress=False)
    shutil.rmtree(store)
    assert summary.added == len(ids), summary.failed
    return summary.added / summary.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoders", default="r3d,r3d-v0,videomae,echoclip")
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-encode-"))
    make_phantom(work / "cohort", patients=args.videos, videos_per_patient=1, seed=3, frames=args.frames)
    with open_store(work / "base", create=True) as st:
        ingest(work / "cohort", st, progress=False)
        rows = st.catalog.query("SELECT video_id, source_path FROM videos ORDER BY video_id")

    gpu = f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""
    print(f"machine: {platform.processor() or platform.machine()}{gpu}, torch threads {torch.get_num_threads()}, "
          f"{args.videos} phantom videos x {args.frames} frames 112x112, batch {args.batch_size}, "
          f"{args.workers} decode threads, median of {args.repeats}")
    print("| encoder | videos | pipeline videos/s | bare model videos/s | pipeline / bare |")
    print("|---|---|---|---|---|")
    for name in args.encoders.split(","):
        n = min(args.videos, HEAVY.get(name, args.videos)) if args.device == "cpu" else args.videos
        subset = rows[:n]
        enc = get_encoder(name, random_init=True, device=args.device)
        bs = min(args.batch_size, int(enc.options["batch_size"])) if name == "r3d-v0" else args.batch_size
        bare(enc, [Path(p) for _, p in subset[:1]], bs)  # warm-up
        bares, pipes = [], []
        for _ in range(args.repeats):  # interleaved, so drifting load on a shared machine hits both alike
            bares.append(bare(enc, [Path(p) for _, p in subset], bs))
            pipes.append(pipeline(enc, work / "base", work, [i for i, _ in subset], bs, args.workers))
        b, p = statistics.median(bares), statistics.median(pipes)
        print(f"| {name} | {n} | {p:.2f} | {b:.2f} | {p / b:.2f} |", flush=True)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
