"""Fine-tuning benchmark: does `embedstore train r3d` give better r3d vectors than random init, and at what cost?

    .venv/bin/python bench/train.py [--patients 60] [--videos 2] [--frames 32] [--fps 25] [--cohort-seed 1]
                                    [--epochs 3] [--clip-length 4] [--lr 1e-3] [--accumulate 1] [--init random]

The defaults are scaled down from the issue's 60 x 3 x 64 frames to run in about 12 minutes on two
idle cores (r3d_18 costs ~2 s per training step on a CPU): 60 patients x 2 videos of 32 frames at
25 fps (one whole beat, 8 model frames at period 4), training clips of 4 model frames, lr 1e-3
(the paper's 1e-5 fine-tunes a Kinetics start; here the start is random), one optimizer step per video.

On that phantom cohort (label: EF < 50; splits by patient, stratified by EF class, as make_phantom draws them):
- TEST AUC of the trained classifier (its own head, best VAL epoch) vs the `embedstore eval` linear
  probe (standardised logistic regression fit on TRAIN) on the random-init encoder's vectors, and the
  same probe on the trained vectors;
- neighbours' EF class (`embedstore eval` task neighbour_ef_class): for each video, the share of its
  k=5 cosine neighbours in its EF < 50 class, its own patient's videos left out, averaged over all
  videos, TRAIN queries (patients the model was fit on) and TEST queries (patients it never saw),
  beside the share chance gives;
- time: seconds per epoch (train + VAL) through the pipeline vs the bare train step (forward,
  backward, Adam) on a clip already in memory, times the number of steps; encode seconds.
Random-init and trained vectors go into two copies of one store (a store holds one r3d weights set).
Kinetics weights are not on this machine, so the default is --init random (say which in the README).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from embedstore.analysis import evaluate
from embedstore.analysis.evaluate import NEIGHBOUR_K
from embedstore.analysis.metrics import neighbour_agreement
from embedstore.datasets.ingest import ingest
from embedstore.datasets.phantom import make_phantom
from embedstore.encode import encode_store
from embedstore.encoders import get_encoder
from embedstore.store import open_store
from embedstore.training.config import TrainConfig
from embedstore.training.loop import train_r3d
from embedstore.training.model import build


def encode(path: Path, encoder) -> float:
    with open_store(path) as st:
        return encode_store(st, encoder, batch_size=1, progress=False).seconds


def bare_step_seconds(cfg: TrainConfig, frames: int, steps: int = 4) -> float:
    """Median seconds of one train step (forward, BCE, backward, Adam) on one in-memory clip."""
    encoder, model, _ = build("random", "cpu", cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x = torch.randint(0, 256, (1, 3, frames, 112, 112), dtype=torch.uint8)
    y = torch.ones(1)
    times = []
    for _ in range(steps + 1):  # the first is warm-up
        start = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(encoder.normalise(x)), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def cpu_model() -> str:
    """The CPU's model name (platform.processor() is empty on Linux)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def vector_row(path: Path) -> dict:
    """The library's EF probe (TEST AUC) and neighbours' EF class per query (own patient out), by split."""
    with open_store(path, read_only=True) as st:
        probe = evaluate(st, "r3d", bootstrap=0, tasks=["ef_probe"])["tasks"]["ef_probe"]["metrics"]["auc"]
        ids, vectors = st.all_vectors("r3d")
        rows = st.videos(ids)
    low, split = np.array([r["ef"] < 50 for r in rows]), np.array([r["split"] for r in rows])
    agree, chance = neighbour_agreement(vectors, low, np.array([r["patient_id"] for r in rows]), NEIGHBOUR_K)
    return {"probe": probe, "all": agree.mean(), "train": agree[split == "TRAIN"].mean(),
            "test": agree[split == "TEST"].mean(), "chance": chance.mean(), "n": len(vectors), "low_share": float(low.mean())}


def report(args: argparse.Namespace, metrics: dict, rows: dict[str, dict], times: dict[str, float]) -> None:
    counts, history = metrics["counts"], metrics["history"]
    period, train_videos = metrics["recipe"]["period"], counts["TRAIN"]["n"]
    print(f"machine: {cpu_model()}, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"phantom cohort: {args.patients} patients x {args.videos} videos x {args.frames} frames at {args.fps:g} fps "
          f"(period {period}: {-(-args.frames // period)} model frames), TRAIN {train_videos} / "
          f"VAL {counts['VAL']['n']} / TEST {counts['TEST']['n']} videos, "
          f"EF < 50 share {rows['random']['low_share']:.2f}")
    print(f"training: init {args.init}, {args.epochs} epochs, lr {args.lr:g}, accumulate {args.accumulate}, "
          f"clip {args.clip_length or 'whole video'} frames, batch 1, best VAL epoch {metrics['best_epoch']} "
          f"(VAL AUC {metrics['val']['auc']})")
    print()
    print(f"| vectors | classifier TEST AUC | probe TEST AUC | neighbours in the query's EF class, all queries "
          f"(k={NEIGHBOUR_K}, own patient out) | TRAIN queries | TEST queries | chance |")
    print("|---|---|---|---|---|---|---|")
    head = metrics["test"]["auc"] if metrics["test"] else float("nan")
    for name, r in rows.items():
        classifier = f"{head:.3f}" if name == "trained" else "-"
        print(f"| r3d {name} | {classifier} | {r['probe']:.3f} | {r['all']:.3f} | {r['train']:.3f} | {r['test']:.3f} "
              f"| {r['chance']:.3f} |")
    print()
    epoch_s = statistics.median(e["seconds"] for e in history)
    train_s = statistics.median(e["seconds_train"] for e in history)
    bare = times["bare_step"]
    print("| timing (CPU) | seconds |")
    print("|---|---|")
    print(f"| epoch, train + VAL (median of {len(history)}) | {epoch_s:.1f} |")
    print(f"| epoch, train only | {train_s:.1f} ({train_s / train_videos:.2f} s/video) |")
    print(f"| bare train step on an in-memory clip x {train_videos} steps | {bare * train_videos:.1f} "
          f"({bare:.2f} s/step; pipeline / bare {train_s / (bare * train_videos):.2f}) |")
    print("| whole training run, wall / CPU time of all threads (CPU / threads: the wall time on an idle machine) | "
          f"{times['train_wall']:.1f} / {times['train_cpu']:.1f} "
          f"({times['train_cpu'] / torch.get_num_threads():.1f}) |")
    print(f"| encode {rows['random']['n']} whole videos, random-init / trained | "
          f"{times['encode_random']:.1f} / {times['encode_trained']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=60)
    ap.add_argument("--videos", type=int, default=2, help="videos per patient")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--fps", type=float, default=25.0, help="32 frames at 25 fps span 1.28 s: a whole beat from 47 bpm")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--clip-length", type=int, default=4, help="training clip in model frames; 0: whole videos")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--accumulate", type=int, default=1)
    ap.add_argument("--init", default="random")
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--cohort-seed", type=int, default=1, help="phantom seed (VAL and TEST need both EF classes)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-train-"))
    make_phantom(work / "cohort", patients=args.patients, videos_per_patient=args.videos, seed=args.cohort_seed,
                 frames=args.frames, fps=args.fps)
    with open_store(work / "random", create=True) as st:
        ingest(work / "cohort", st, progress=False)
    shutil.copytree(work / "random", work / "trained")

    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, accumulate=args.accumulate, init=args.init,
                      clip_length=args.clip_length or None, seed=args.seed, device="cpu")
    times = {"encode_random": encode(work / "random", get_encoder("r3d", random_init=True, device="cpu"))}
    wall, cpu = time.perf_counter(), time.process_time()
    with open_store(work / "trained") as st:
        metrics = train_r3d(st, cfg, work / "r3d-trained.pt")
    times.update(train_wall=time.perf_counter() - wall, train_cpu=time.process_time() - cpu)
    tuned = get_encoder("r3d", weights=work / "r3d-trained.pt", device="cpu")
    times["encode_trained"] = encode(work / "trained", tuned)
    model_frames = -(-args.frames // cfg.period)
    times["bare_step"] = bare_step_seconds(cfg, min(args.clip_length or model_frames, model_frames))
    report(args, metrics, {name: vector_row(work / name) for name in ("random", "trained")}, times)
    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
