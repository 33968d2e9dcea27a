"""Fine-tuning benchmark: does `embedstore train r3d` give better r3d vectors than random init, and at what cost?

    .venv/bin/python bench/train.py [--patients 40] [--videos 2] [--frames 32] [--fps 25] [--cohort-seed 1]
                                    [--epochs 3] [--clip-length 4] [--lr 1e-4] [--accumulate 1] [--init random]

The defaults are scaled down from the paper's setting to run in about a quarter of an hour on two idle
cores (r3d_18 costs seconds per training step on a CPU): 40 patients x 2 videos of 32 frames at
25 fps (one whole beat, 8 model frames at period 4), training clips of 4 model frames, lr 1e-4
(the paper's 1e-5 fine-tunes a Kinetics start; here the start is random), one optimizer step per video.

On that phantom cohort (label: EF < 50, splits by patient as make_phantom draws them):
- TEST AUC of the trained classifier (its own head, best VAL epoch) vs a logistic-regression probe
  on the random-init encoder's vectors (fit on TRAIN, same splits), and the same probe on the
  trained vectors;
- neighbour EF-class agreement: for each video, the share of its k=5 cosine neighbours (self left
  out) in the same EF < 50 class, averaged; and the same for TEST queries with the query's own
  patient left out (what the vectors do for unseen patients);
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

from embedstore.datasets.ingest import ingest
from embedstore.datasets.phantom import make_phantom
from embedstore.encode import encode_store
from embedstore.encoders import get_encoder
from embedstore.store import open_store
from embedstore.training.config import TrainConfig
from embedstore.training.loop import train_r3d
from embedstore.training.model import build

K = 5


def agreement(vectors: np.ndarray, low: np.ndarray, patients: np.ndarray, queries: np.ndarray,
              exclude_patient: bool) -> float:
    """Mean share of each query's k cosine neighbours (self, or its whole patient, left out) in its EF class."""
    scores = vectors[queries] @ vectors.T
    scores[np.arange(len(queries)), queries] = -np.inf
    if exclude_patient:
        scores[patients[queries][:, None] == patients[None, :]] = -np.inf
    neighbours = np.argsort(-scores, axis=1)[:, :K]
    return float((low[neighbours] == low[queries][:, None]).mean())


def probe_auc(vectors: np.ndarray, low: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    """Linear probe: standardised logistic regression fit on TRAIN, AUC on TEST."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(vectors[train], low[train])
    return float(roc_auc_score(low[test], probe.predict_proba(vectors[test])[:, 1]))


def store_vectors(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The store's r3d vectors with their rows' EF class, patient and split, in one order."""
    with open_store(path, read_only=True) as st:
        ids, vectors = st.all_vectors("r3d")
        rows = st.videos(ids)
    meta = {"low": np.array([r["ef"] < 50 for r in rows]), "patient": np.array([r["patient_id"] for r in rows]),
            "split": np.array([r["split"] for r in rows])}
    return vectors, meta


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=40)
    ap.add_argument("--videos", type=int, default=2, help="videos per patient")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--fps", type=float, default=25.0, help="32 frames at 25 fps span 1.28 s: a whole beat from 47 bpm")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--clip-length", type=int, default=4, help="training clip in model frames; 0: whole videos")
    ap.add_argument("--lr", type=float, default=1e-4)
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
    encode_random_s = encode(work / "random", get_encoder("r3d", random_init=True, device="cpu"))
    wall, cpu = time.perf_counter(), time.process_time()
    with open_store(work / "trained") as st:
        metrics = train_r3d(st, cfg, work / "r3d-trained.pt")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    encode_trained_s = encode(work / "trained", get_encoder("r3d", weights=work / "r3d-trained.pt", device="cpu"))

    rows = []
    for name in ("random", "trained"):
        vectors, meta = store_vectors(work / name)
        train, test = np.flatnonzero(meta["split"] == "TRAIN"), np.flatnonzero(meta["split"] == "TEST")
        everyone = np.arange(len(vectors))
        rows.append((name, probe_auc(vectors, meta["low"], train, test),
                     agreement(vectors, meta["low"], meta["patient"], everyone, exclude_patient=False),
                     agreement(vectors, meta["low"], meta["patient"], test, exclude_patient=True)))
    base_rate, n_videos = float(np.mean(meta["low"])), len(meta["low"])

    counts = metrics["counts"]
    epochs = metrics["history"]
    model_frames = -(-args.frames // cfg.period)
    bare = bare_step_seconds(cfg, min(args.clip_length or model_frames, model_frames))
    train_videos = counts["TRAIN"]["n"]
    print(f"machine: {cpu_model()}, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"phantom cohort: {args.patients} patients x {args.videos} videos x {args.frames} frames at {args.fps:g} fps (period 4: "
          f"{model_frames} model frames), TRAIN {train_videos} / VAL {counts['VAL']['n']} / "
          f"TEST {counts['TEST']['n']} videos, EF < 50 share {base_rate:.2f}")
    print(f"training: init {args.init}, {args.epochs} epochs, lr {args.lr:g}, accumulate {args.accumulate}, "
          f"clip {args.clip_length} frames, batch 1, best VAL epoch {metrics['best_epoch']} "
          f"(VAL AUC {metrics['val']['auc']})")
    print()
    print(f"| vectors | classifier TEST AUC | probe TEST AUC | kNN EF-class agreement, all (k={K}, self out) "
          f"| kNN agreement, TEST queries (own patient out) |")
    print("|---|---|---|---|---|")
    head = metrics["test"]["auc"] if metrics["test"] else float("nan")
    for name, probe, everyone_rate, test_rate in rows:
        classifier = f"{head:.3f}" if name == "trained" else "-"
        print(f"| r3d {name}{' (random-init)' if name == 'random' else ''} | {classifier} | {probe:.3f} | "
              f"{everyone_rate:.3f} | {test_rate:.3f} |")
    print()
    epoch_s = statistics.median(e["seconds"] for e in epochs)
    train_s = statistics.median(e["seconds_train"] for e in epochs)
    print("| timing (CPU) | seconds |")
    print("|---|---|")
    print(f"| epoch, train + VAL (median of {len(epochs)}) | {epoch_s:.1f} |")
    print(f"| epoch, train only | {train_s:.1f} ({train_s / train_videos:.2f} s/video) |")
    print(f"| bare train step on an in-memory clip x {train_videos} steps | {bare * train_videos:.1f} "
          f"({bare:.2f} s/step; pipeline / bare {train_s / (bare * train_videos):.2f}) |")
    print(f"| whole training run, wall / CPU time of all threads (CPU / threads: the wall time on an idle machine) | "
          f"{wall:.1f} / {cpu:.1f} ({cpu / torch.get_num_threads():.1f}) |")
    print(f"| encode {n_videos} whole videos, random-init / "
          f"trained | {encode_random_s:.1f} / {encode_trained_s:.1f} |")
    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
