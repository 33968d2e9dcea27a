"""`embedstore train r3d`: fine-tune r3d_18 as a binary classifier of a store's label, the R3D paper's way.

TRAIN videos train (Adam, BCE-with-logits, gradients of the videos' losses summed over `accumulate`
batches, as the authors), VAL
picks the epoch (best AUC), TEST gets the final metrics of that epoch. Videos are decoded and
prepared ahead of the model in threads (encode.prepared_stream, with the `r3d` encoder's preparer).
On CUDA the forward runs under autocast (bf16, or fp16 with a gradient scaler); on CPU in float32.
"""
from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import embedstore
from embedstore.analysis.metrics import accuracy_threshold, youden_threshold
from embedstore.encode.reader import prepared_stream
from embedstore.video.regions import MaskedPreparer
from embedstore.hashing import sha256_file
from embedstore.progress import bar
from embedstore.store import Run, Store
from embedstore.training import checkpoint
from embedstore.training.config import TrainConfig
from embedstore.training.data import Cohort, Example, batches, check_cohort, clip, epoch_order, labelled_videos
from embedstore.training.metrics import THRESHOLD, binary_metrics
from embedstore.training.model import build


def train_r3d(store: Store, cfg: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train, select, test and save; returns the metrics also written beside `out`."""
    cfg.check()
    out = Path(out)
    cohort = labelled_videos(store, cfg.label)
    check_cohort(cohort)
    state = checkpoint.resume_state(out, cfg.recipe(), resume)
    trainer = Trainer(cfg, out, progress, state)
    trainer.preparer = MaskedPreparer(trainer.preparer, store.mask)  # trained on what the store's encoders see
    args = {**asdict(cfg), "out": str(out), "resume": resume, "init_weights_sha256": trainer.init["weights_sha256"],
            "mask": store.mask}
    with store.run("train", args) as run:
        trainer.run = run
        for epoch in range(trainer.epoch + 1, cfg.epochs + 1):
            trainer.fit_epoch(epoch, cohort)
        return trainer.finish(cohort)


class Trainer:
    """The model, its optimizer and the run's history, from scratch or from an epoch checkpoint."""

    def __init__(self, cfg: TrainConfig, out: Path, progress: bool, state: dict | None):
        self.cfg, self.out, self.progress = cfg, out, progress
        # A resumed run takes its weights from the checkpoint, so its init file need not exist any more.
        self.encoder, self.model, self.init = build("random" if state else cfg.init, cfg.device, cfg.seed)
        self.device = self.encoder.device
        self.preparer = replace(self.encoder.preparer, period=cfg.period)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        dtype = getattr(self.encoder.autocast(), "fast_dtype", None)  # the encoder's own CUDA autocast choice
        self.precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
        self.scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)  # fp16 gradients underflow
        self.epoch, self.best_epoch, self.best_auc, self.history = 0, 0, float("-inf"), []
        self.run: Run | None = None
        self._failed: set[str] = set()
        if state:
            self._restore(state)

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when saved without fp16 (e.g. a CPU run resumed on a GPU)
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.best_epoch, self.best_auc = state["epoch"], state["best_epoch"], state["best_auc"]
        self.history, self.init = list(state["history"]), state["init"]
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and state["rng"]["cuda"]:  # saved on a host with more or fewer GPUs: the ones both have
            for device, rng in enumerate(state["rng"]["cuda"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(rng, device)

    # -- one epoch ------------------------------------------------------------------------------
    def fit_epoch(self, epoch: int, cohort: Cohort) -> None:
        """Train on TRAIN, score VAL, keep the best epoch, save the epoch checkpoint."""
        start = time.perf_counter()
        loss = self._train(epoch, cohort.splits["TRAIN"])
        seconds_train = time.perf_counter() - start
        val = self._evaluate("VAL", cohort.splits["VAL"])
        auc = val["auc"] if val["auc"] is not None else float("-inf")  # None only if VAL videos failed to decode
        if self.best_epoch == 0 or auc > self.best_auc:
            self.best_epoch, self.best_auc = epoch, auc
        self.epoch = epoch
        self.history.append({"epoch": epoch, "train_loss": round(loss, 5), "val": val,
                             "seconds_train": round(seconds_train, 2),
                             "seconds": round(time.perf_counter() - start, 2)})
        checkpoint.save_epoch(self.out, self._state(), keep={self.best_epoch})

    def _train(self, epoch: int, examples: list[Example]) -> float:
        """Mean BCE over the epoch's videos; the optimizer steps every `accumulate` batches and at the end."""
        rng = np.random.default_rng([self.cfg.seed, epoch])  # order, balance draw and clips: fixed per epoch
        order = epoch_order(examples, self.cfg.balance, rng)
        self.model.train()
        total, seen, pending = 0.0, 0, 0
        with bar(total=len(order), desc=f"train epoch {epoch}/{self.cfg.epochs}", unit="video",
                 enabled=self.progress) as pbar:
            for batch in batches(self._inputs(order, rng), self.cfg.batch_size):
                total += self._backward(batch) * len(batch)
                seen += len(batch)
                pending += 1
                if pending == self.cfg.accumulate:
                    self._step()
                    pending = 0
                pbar.update(len(batch))
                pbar.set_postfix(loss=f"{total / seen:.4f}")
            if pending:
                self._step()
        return total / seen if seen else float("nan")

    def _backward(self, batch: list[tuple[Example, np.ndarray]]) -> float:
        x, y = self._tensors(batch)
        with self.encoder.autocast():
            logits = self.model(self.encoder.normalise(x))
        loss = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="sum")
        # Summed over the accumulation window, as the authors (each video's loss added, never divided by the
        # window: averaging would make Adam's coupled L2 weight decay `accumulate` times stronger).
        self.scaler.scale(loss).backward()
        return float(loss.detach()) / len(batch)

    def _step(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    # -- evaluation -----------------------------------------------------------------------------
    def _evaluate(self, split: str, examples: list[Example], threshold: float | None = None,
                  youden: float | None = None) -> dict | None:
        """Metrics of whole videos (no clip: what `encode` will see) at `threshold` (TEST: VAL's), or at the
        threshold that maximises this split's accuracy (VAL) with Youden's J beside it; None for an empty split."""
        if not examples:
            return None
        labels, probs = [], []
        self.model.eval()
        with bar(total=len(examples), desc=split, unit="video", enabled=self.progress) as pbar, torch.inference_mode():
            for batch in batches(self._inputs(examples, None), self.cfg.batch_size):
                x, y = self._tensors(batch)
                with self.encoder.autocast():
                    logits = self.model(self.encoder.normalise(x))
                probs.extend(torch.sigmoid(logits.float()).cpu().tolist())
                labels.extend(y.cpu().tolist())
                pbar.update(len(batch))
        labels, probs = np.array(labels), np.array(probs)
        both = 0 < labels.sum() < len(labels)
        if threshold is None and both:
            threshold, youden = accuracy_threshold(labels, probs), youden_threshold(labels, probs)
        metrics = binary_metrics(labels, probs, THRESHOLD if threshold is None else threshold)
        if youden is not None:
            at = binary_metrics(labels, probs, youden)
            metrics["at_youden_threshold"] = {k: at[k] for k in ("threshold", "accuracy", "recall", "specificity", "f1")}
        return metrics

    # -- inputs ---------------------------------------------------------------------------------
    def _inputs(self, examples: list[Example], rng: np.random.Generator | None):
        """(example, prepared input) in order, decoded ahead; unreadable videos are recorded once and skipped."""
        items = [(e.video_id, e.path) for e in examples]
        ahead = 2 * self.cfg.batch_size + self.cfg.workers
        stream = prepared_stream(items, self.preparer, self.cfg.workers, ahead=ahead)
        for example, (video_id, result) in zip(examples, stream):
            if isinstance(result, str):
                if video_id not in self._failed:
                    self._failed.add(video_id)
                    self.run.fail(video_id, result)
                continue
            yield example, clip(result, self.cfg.clip_length, rng)

    def _tensors(self, batch: list[tuple[Example, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.stack([a for _, a in batch])).to(self.device)
        y = torch.tensor([e.label for e, _ in batch], dtype=torch.float32, device=self.device)
        return x, y

    # -- the end --------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"epoch": self.epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "best_epoch": self.best_epoch, "best_auc": self.best_auc,
                "history": self.history, "init": self.init, "recipe": self.cfg.recipe(),
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}}

    def finish(self, cohort: Cohort) -> dict:
        """Reload the best epoch, score TEST, save the weights in the released layout and the metrics."""
        if self.best_epoch != self.epoch:
            self.model.load_state_dict(checkpoint.load(checkpoint.epoch_path(self.out, self.best_epoch))["model"])
        val = next(h["val"] for h in self.history if h["epoch"] == self.best_epoch)
        youden = (val or {}).get("at_youden_threshold", {}).get("threshold")
        test = self._evaluate("TEST", cohort.splits["TEST"], val["threshold"] if val else THRESHOLD, youden)
        checkpoint.save_weights(self.model, self.out, self.encoder.spec["input_scale"])
        metrics = {
            "model": "r3d", "label": cohort.label, "positive_class": f"videos where {cohort.label!r} is true",
            "threshold": "the sigmoid threshold that maximises accuracy on VAL (the paper's rule; "
                         f"{THRESHOLD} when VAL lacks a class), applied to TEST; Youden's J on VAL in test.at_youden_threshold",
            "counts": cohort.counts(), "recipe": self.cfg.recipe(), "epochs": self.cfg.epochs,
            "init": self.init, "device": self.device, "precision": self.precision,
            "best_epoch": self.best_epoch, "val": val,
            "test": test, "history": self.history, "checkpoint": str(self.out),
            "checkpoint_sha256": sha256_file(self.out), "metrics_file": str(checkpoint.metrics_path(self.out)),
            "failed": sorted(self._failed), "run_id": self.run.run_id, "package_version": embedstore.__version__,
        }
        checkpoint.save_metrics(self.out, metrics)
        return metrics
