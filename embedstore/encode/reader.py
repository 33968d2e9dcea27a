"""The reader every consumer of prepared model inputs shares (both engines, training, the view classifier, the
leaderboard's on-the-fly baseline): decode + prepare in threads, ahead of the model, one error line per bad file.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from embedstore.errors import EmbedstoreError
from embedstore.video.read import read_video


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


def decode_workers() -> int:
    """Decode threads that keep a model fed: one per core but one (the model's), at least 2, at most 8
    (PyAV decodes outside the GIL; past 8 threads the GIL-bound prepare steps stop scaling)."""
    return max(2, min(8, (os.cpu_count() or 2) - 1))
