"""`embedstore encode`: reader (decode + prepare, ahead in threads) -> encoder -> store writer.

Only videos without a vector for this encoder are read, and each batch is committed on its own,
so a killed run resumes where it stopped. A video that cannot be read is reported, not fatal.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from embedstore.encoders.provenance import check_compatible
from embedstore.errors import BadInput, EmbedstoreError
from embedstore.progress import bar
from embedstore.store import Run, Store
from embedstore.video.read import read_video
from embedstore.video.regions import MASK_KEY, MaskedPreparer


@dataclass
class EncodeSummary:
    encoder: str
    target: str
    added: int = 0
    already: int = 0
    failed: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    provenance: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.added / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {"encoder": self.encoder, "target": self.target, "added": self.added, "already": self.already,
                "failed": self.failed, "seconds": round(self.seconds, 3), "per_second": round(self.per_second, 3),
                "provenance": self.provenance, "warnings": self.warnings}


def store_encoding(store: Store, encoder) -> tuple[dict, MaskedPreparer | None]:
    """The provenance (with the mask setting) and the preparer behind that mask, for every engine.

    A vector set keeps the mask it was started with (sets from before masking: off), so it is never
    a mix; a new set takes the store's setting.
    """
    existing = store.catalog.encoder(encoder.name)
    mask = existing["preprocessing"].get(MASK_KEY, "off") if existing else store.mask
    prov = encoder.provenance()
    prov["preprocessing"][MASK_KEY] = mask
    return prov, MaskedPreparer(encoder.preparer, mask) if "video" in encoder.modalities else None  # text-only: none


def pending_videos(store: Store, encoder: str) -> tuple[list[tuple[str, str]], int]:
    """(video_id, path) of videos with a file and no vector yet for `encoder`, and how many have one."""
    rows = store.catalog.pending_videos(encoder)
    done = len(store.catalog.embedded_ids(encoder, "videos"))
    return rows, done


def run_args(store: Store, prov: dict, summary: EncodeSummary, **args) -> dict:
    """The run record of an encode: its arguments and numerics (device, precision, TF32, torch); refuses vectors
    not comparable with the set already stored under this name, and notes a precision change in summary.warnings."""
    info = store.catalog.encoder(prov["encoder"])
    if info is not None:
        summary.warnings.extend(check_compatible(info, prov, what=f"encoder {prov['encoder']}"))
    return {**args, "weights_sha256": prov["weights_sha256"], "numerics": prov["preprocessing"].get("numerics")}


def prepare_one(item: tuple[str, str], preparer) -> tuple[str, np.ndarray | str]:
    """(id, model input) or (id, one-line error) for one (video_id, path): the reader job of every engine."""
    video_id, path = item
    try:
        return video_id, preparer(read_video(path))
    except EmbedstoreError as exc:
        return video_id, exc.message
    except Exception as exc:  # a decoder bug in one file must not stop a long run
        return video_id, f"{path}: {type(exc).__name__}: {exc}"


def prepared_stream(items: list[tuple[str, str]], preparer, workers: int, ahead: int) -> Iterator[tuple[str, np.ndarray | str]]:
    """Yield (id, model input) or (id, error message) in order, decoding up to `ahead` videos early."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(prepare_one, item, preparer) for item in items[:ahead]]
        for i in range(len(items)):
            result = futures[i].result()
            futures[i] = None  # free the decoded frames as soon as they are consumed
            if i + ahead < len(items):
                futures.append(pool.submit(prepare_one, items[i + ahead], preparer))
            yield result


def write_batch(write, run: Run | None, ids: list[str], vectors: np.ndarray) -> int:
    """Commit a batch; a video whose vector is all zeros or not finite fails on its own, named, and the rest
    are written. (A fully masked, all-black clip through a model without biases gives a zero vector, which
    has no direction: it used to fail the whole batch.)"""
    ok = np.isfinite(vectors).all(axis=1) & (np.abs(vectors).sum(axis=1) > 0)
    for i in np.flatnonzero(~ok).tolist():
        if run is not None:
            run.fail(ids[i], f"{ids[i]}: the model gave an all-zero or non-finite vector (a blank video after masking?); "
                             "check the file")
    keep = np.flatnonzero(ok).tolist()
    return write([ids[i] for i in keep], vectors[ok]) if keep else 0


def decode_workers() -> int:
    """Decode threads that keep a model fed: one per core but one (the model's), at least 2, at most 8
    (PyAV decodes outside the GIL; past 8 threads the GIL-bound prepare steps stop scaling)."""
    return max(2, min(8, (os.cpu_count() or 2) - 1))


class ShapeBuckets:
    """Group prepared inputs by shape so each model call gets a full batch of equal shapes.

    Real cines differ in length; batching only neighbours of equal shape ran them one per forward,
    which starves a GPU. A bucket is handed out when it holds `batch_size` inputs; when `4 x batch_size`
    inputs wait in all buckets together, the fullest goes out anyway, so memory stays bounded. Vectors
    land in the store out of id order, which the catalog's id -> row map makes harmless.
    """

    def __init__(self, batch_size: int, hold: int = 4):
        self.batch_size, self.limit = batch_size, hold * batch_size
        self.buckets: dict[tuple, tuple[list[str], list[np.ndarray]]] = {}
        self.waiting = 0

    def add(self, item: str, array: np.ndarray) -> Iterator[tuple[list[str], list[np.ndarray]]]:
        """Add one input; yield the (ids, inputs) batches that are ready to run."""
        ids, inputs = self.buckets.setdefault(array.shape, ([], []))
        ids.append(item)
        inputs.append(array)
        self.waiting += 1
        if len(ids) >= self.batch_size:
            yield self._pop(array.shape)
        elif self.waiting >= self.limit:
            yield self._pop(max(self.buckets, key=lambda shape: len(self.buckets[shape][0])))

    def drain(self) -> Iterator[tuple[list[str], list[np.ndarray]]]:
        """Yield what is left, fullest bucket first."""
        while self.buckets:
            yield self._pop(max(self.buckets, key=lambda shape: len(self.buckets[shape][0])))

    def _pop(self, shape: tuple) -> tuple[list[str], list[np.ndarray]]:
        batch = self.buckets.pop(shape)
        self.waiting -= len(batch[0])
        return batch


def encode_store(store: Store, encoder, batch_size: int = 8, workers: int | None = None, target: str = "videos",
                 progress: bool = True, command_args: dict | None = None) -> EncodeSummary:
    """Embed every video (or report) of `store` that `encoder` has not embedded yet (workers None: decode_workers())."""
    workers = workers or decode_workers()
    if batch_size < 1:
        raise BadInput(f"--batch-size must be >= 1, got {batch_size}")
    prov, preparer = store_encoding(store, encoder)
    summary = EncodeSummary(encoder.name, target, provenance=prov)
    args = run_args(store, prov, summary, encoder=encoder.name, target=target, batch_size=batch_size, workers=workers,
                    **(command_args or {}))
    start = time.perf_counter()
    with store.run("encode", args) as run, store.writer(prov, target, run) as write:
        if target == "reports":
            _encode_reports(store, encoder, write, batch_size, summary, progress)
        else:
            items, summary.already = pending_videos(store, encoder.name)
            batches = ShapeBuckets(batch_size)
            with bar(total=len(items), desc=f"encode {encoder.name}", unit="video", enabled=progress) as pbar:
                for video_id, result in prepared_stream(items, preparer, workers, ahead=2 * batch_size):
                    if isinstance(result, str):
                        run.fail(video_id, result)
                        pbar.update(1)
                        continue
                    for ids, inputs in batches.add(video_id, result):
                        write_batch(write, run, ids, encoder.embed_prepared(inputs))
                        pbar.update(len(ids))
                for ids, inputs in batches.drain():
                    write_batch(write, run, ids, encoder.embed_prepared(inputs))
                    pbar.update(len(ids))
        summary.added = run.added
        summary.failed = list(run.failures)
    summary.seconds = time.perf_counter() - start
    return summary


def _encode_reports(store: Store, encoder, write, batch_size: int, summary: EncodeSummary, progress: bool) -> None:
    if "text" not in encoder.modalities:
        raise BadInput(f"encoder {encoder.name} has no text tower; embed reports with echoclip or echoclip-r")
    done = store.catalog.embedded_ids(encoder.name, "reports")
    rows = [r for r in store.catalog.report_texts() if r[0] not in done]
    summary.already = len(done)
    for start in bar(range(0, len(rows), batch_size), total=-(-len(rows) // batch_size), desc=f"encode {encoder.name} reports",
                     unit="batch", enabled=progress):
        chunk = rows[start : start + batch_size]
        write([r[0] for r in chunk], encoder.embed_texts([r[1] for r in chunk]))
