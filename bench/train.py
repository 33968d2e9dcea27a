"""Fine-tuning benchmark: does `embedstore train r3d` give better r3d vectors than random init and than
the pixel baseline, and at what cost?

    .venv/bin/python bench/train.py [--patients 60] [--videos 2] [--studies 2] [--frames 32] [--fps 25]
                                    [--cohort-seed 1] [--epochs 3] [--clip-length 4] [--lr 1e-3] [--accumulate 1]
                                    [--init random] [--bootstrap 1000]

The defaults are scaled down from the issue's 60 x 3 x 64 frames to run in about 12 minutes on two
idle cores (r3d_18 costs ~2 s per training step on a CPU): 60 patients x 2 videos of 32 frames at
25 fps (one whole beat, 8 model frames at period 4), training clips of 4 model frames, lr 1e-3
(the paper's 1e-5 fine-tunes a Kinetics start; here the start is random), one optimizer step per video.

On that phantom cohort (label: EF < 50; splits by patient, stratified by EF class, as make_phantom draws them;
2 studies per patient, so a patient's videos differ in probe pose and settings):
- TEST AUC of the trained classifier (its own head, best VAL epoch);
- the leaderboard (analysis/leaderboard.py) of each store: r3d random init, r3d trained and the pixel
  baseline (no weights) on the same videos, split and bootstrap resamples: EF probe TEST AUC, kNN EF
  MAE, neighbours' EF class, same-patient AUC across studies, each with its 95% interval and its
  paired difference from the pixel baseline;
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

import torch

from embedstore.analysis.leaderboard import leaderboard
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


BOARD_COLUMNS = ("ef_probe_auc", "knn_ef_mae", "neighbour_ef_class", "same_patient_other_study_auc")


def board_rows(path: Path, bootstrap: int) -> tuple[dict, dict]:
    """{row label: leaderboard row} for the pixel baseline and the store's r3d (raw and centred), and the board."""
    with open_store(path, read_only=True) as st:
        board = leaderboard(st, bootstrap=bootstrap)
    return {r["name"] + (" centred" if r["centred"] else ""): r for r in board["rows"]}, board


def cell(row: dict, key: str) -> str:
    c = row["metrics"].get(key)
    if c is None:
        return "-"
    text = f"{c['value']:.3f}" + (f" [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]" if c.get("ci95") else "")
    if "delta" in c:
        text += f"; Δ {c['delta']:+.3f}" + (f" [{c['delta_ci95'][0]:+.3f}, {c['delta_ci95'][1]:+.3f}]"
                                             if c.get("delta_ci95") else "")
    return text


def report(args: argparse.Namespace, metrics: dict, rows: dict[str, dict], board: dict, times: dict[str, float]) -> None:
    counts, history = metrics["counts"], metrics["history"]
    period, train_videos = metrics["recipe"]["period"], counts["TRAIN"]["n"]
    print(f"machine: {cpu_model()}, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"phantom cohort: {args.patients} patients x {args.videos} videos ({args.studies} studies) x {args.frames} "
          f"frames at {args.fps:g} fps (period {period}: {-(-args.frames // period)} model frames), TRAIN {train_videos} / "
          f"VAL {counts['VAL']['n']} / TEST {counts['TEST']['n']} videos")
    print(f"training: init {args.init}, {args.epochs} epochs, lr {args.lr:g}, accumulate {args.accumulate}, "
          f"clip {args.clip_length or 'whole video'} frames, batch 1, best VAL epoch {metrics['best_epoch']} "
          f"(VAL AUC {metrics['val']['auc']})")
    print()
    titles = {c["key"]: c["title"] for c in board["columns"]}
    print(f"values [95% CI]; Δ: minus the pixel baseline [paired 95% CI]; {board['bootstrap']['resamples']} resamples")
    print()
    print("| vectors | classifier TEST AUC | " + " | ".join(titles[k] for k in BOARD_COLUMNS) + " |")
    print("|---" * (len(BOARD_COLUMNS) + 2) + "|")
    head = metrics["test"]["auc"] if metrics["test"] else float("nan")
    for name, r in rows.items():
        classifier = f"{head:.3f}" if name == "r3d trained" else "-"
        print(f"| {name} | {classifier} | " + " | ".join(cell(r, k) for k in BOARD_COLUMNS) + " |")
    chance = next((r["neighbour_ef_class_chance"] for r in rows.values() if r["neighbour_ef_class_chance"]), None)
    print(f"\nneighbours' EF class: chance {chance:.3f}" if chance is not None else "")
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
    print(f"| encode {board['n_videos']} whole videos, random-init / trained | "
          f"{times['encode_random']:.1f} / {times['encode_trained']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=60)
    ap.add_argument("--videos", type=int, default=2, help="videos per patient")
    ap.add_argument("--studies", type=int, default=2, help="studies per patient (the videos are spread over them)")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the intervals")
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
                 studies_per_patient=args.studies, frames=args.frames, fps=args.fps)
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
    random_rows, _ = board_rows(work / "random", args.bootstrap)
    trained_rows, board = board_rows(work / "trained", args.bootstrap)
    rows = {"pixels (baseline)": random_rows["pixels"], "pixels centred": random_rows["pixels centred"],
            "r3d random init": random_rows["r3d"], "r3d random init centred": random_rows["r3d centred"],
            "r3d trained": trained_rows["r3d"], "r3d trained centred": trained_rows["r3d centred"]}
    report(args, metrics, rows, board, times)
    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
