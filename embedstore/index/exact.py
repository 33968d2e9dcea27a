"""Exact inner-product top-k on arrays: on the GPUs when FAISS sees any, else FAISS's CPU scan.

Exact search is where a GPU pays (batches of queries against many vectors: tuning's ground truth,
batch search, audits, evaluation); a single interactive query stays on the CPU index. The GPU path
works in chunks of the base so any number of vectors fits in GPU memory, and its resources live
only for the call (a long-lived process must not keep scratch memory per call).
"""
from __future__ import annotations

import faiss
import numpy as np

from embedstore.devices import faiss_gpus

GPU_CHUNK_BYTES = 1 << 30  # base vectors copied to the GPU per pass (float32)


def knn(queries: np.ndarray, base: np.ndarray, k: int, use_gpu: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions) of the k largest inner products of each query with the rows of `base`.

    Positions index `base`; -1 pads rows when base has fewer than k rows. `use_gpu` None: the GPUs
    when FAISS sees one.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    base = np.ascontiguousarray(base, dtype=np.float32)
    k = int(k)
    if use_gpu is None:
        use_gpu = faiss_gpus() > 0
    if not use_gpu:
        return _padded(*faiss.knn(queries, base, min(k, len(base)), metric=faiss.METRIC_INNER_PRODUCT), k)
    res = faiss.StandardGpuResources()
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    step = max(1, GPU_CHUNK_BYTES // (4 * max(1, base.shape[1])))
    for start in range(0, len(base), step):
        chunk = base[start : start + step]
        scores, local = faiss.knn_gpu(res, queries, chunk, min(k, len(chunk)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(np.ascontiguousarray(scores), np.where(local >= 0, local + start, -1))
    heap.finalize()
    return heap.D, heap.I


def _padded(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad a [Q, n] result to [Q, k] with -inf scores and -1 ids."""
    pad = k - scores.shape[1]
    if pad == 0:
        return scores, ids
    return (np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf),
            np.pad(ids, ((0, 0), (0, pad)), constant_values=-1))
