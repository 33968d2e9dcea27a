"""The local engine of `embedstore encode`: reader threads (decode + prepare, ahead) -> encoder -> store writer.

Only videos without a vector for this encoder are read, and each batch is committed on its own,
so a killed run resumes where it stopped. A video that cannot be read is reported, not fatal.
"""
from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from embedstore.encode.job import EncodeSummary, pending_videos, run_args, store_encoding, write_batch
from embedstore.encode.reader import decode_workers, prepared_stream
from embedstore.errors import BadInput
from embedstore.progress import bar
from embedstore.store import Store


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
