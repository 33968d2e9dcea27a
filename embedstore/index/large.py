"""IVF re-ranked with exact vectors, read memory-mapped: the fastest kind from 100k vectors, and the one beyond RAM.

The automatic rule (factory.choose_factory) picks `IVF{K},RaBitQ,RFlat` from RABITQ_MIN vectors while
its file fits in the page cache, and `IVF{K},PQ{m},RFlat` when HNSW would not fit in memory:
- IVF{K},RaBitQ / IVF{K},PQ{m} scans nprobe of K lists of dim/8-byte 1-bit codes / m-byte PQ codes.
  Either alone at 512-d tops out far below recall@10 0.95 (PQ near 0.6, BENCHMARKING.md), so
- RFlat (faiss IndexRefineFlat) re-ranks its k x k_factor best candidates by exact inner product
  with the stored float32 vectors, which brings recall to the target.
- The file is read with IO_FLAG_MMAP_IFC: the IVF lists and the exact vectors stay in the file,
  paged in by the OS as queries touch them, so a process holds little more than the centroids.
  (IO_FLAG_MMAP maps only the IVF lists and reads the exact vectors, 4·dim bytes each and most of
  the file, into RAM; faiss 1.15 refuses both flags together.) A mapped index is read-only.
- Built without holding the vectors: the IVF-PQ part is trained on a seeded sample and filled batch
  by batch from Store.iter_vectors; a second pass streams the same batches into the file as the
  exact vectors (`write_refined`).
- nprobe and k_factor are tuned on RECALL_QUERIES stored vectors held out of the training sample,
  each query's own row left out of its neighbours (the recall a new query sees): the pair that
  reaches the target reading the fewest bytes a query (tuning.setting_for) is kept in the sidecar,
  beside the curve it was chosen from (`index --recall R` moves along it without a rebuild).
- New rows are added without retraining: the IVF lists get their codes, the exact vectors are
  copied into a new file with the new rows after them.
FAISS ids are catalog rows; the exact vectors sit at position = row, which holds because the store
numbers rows densely from 0 (checked).
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import faiss
import numpy as np

from embedstore.errors import Conflict
from embedstore.index import tuning
from embedstore.index.factory import METRIC, RERANK, new_index, train_index
from embedstore.index.files import index_paths, now, read_mapped, write_json_atomic
from embedstore.progress import bar
from embedstore.store import Store


# -- building ---------------------------------------------------------------------------------------
def build_large(store: Store, encoder: str, target: str, factory: str, reason: str, rows: np.ndarray,
                factory_given: bool, available: int | None, recall: float, progress: bool) -> dict:
    """Train, fill, write, tune and describe an IVF + exact re-ranking index; returns the sidecar."""
    start = time.perf_counter()
    _check_dense(rows)
    dim = int(store.encoder_info(encoder)["dim"])
    fingerprint = store.catalog.fingerprint(encoder, target)
    base = new_index(factory.removesuffix(RERANK), dim)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(base))
    if isinstance(ivf, faiss.IndexIVFPQ):
        ivf.do_polysemous_training = False  # serves Hamming-filtered search only, and is most of the training time
    queries, sample = _held_out_split(rows, max(64 * ivf.nlist, 65_536))
    train_index(base, store.vectors.read_rows(encoder, target, sample))
    with bar(total=2 * len(rows), desc=f"index {encoder}.{target}", unit="vec", enabled=progress) as pbar:
        for batch_rows, vectors in _row_batches(store, encoder, target, rows):
            base.add_with_ids(vectors, batch_rows)
            pbar.update(len(vectors))
        index_path, _ = index_paths(store, encoder, target)
        exact = (vectors for _, vectors in _row_batches(store, encoder, target, rows, pbar))
        write_refined(index_path, base, exact, len(rows))
    index = read_mapped(index_path)
    params, measured, curve = tuning.tune_reranked(index, store, encoder, target, rows, queries, recall)
    sidecar = {
        "encoder": encoder, "target": target, "factory": factory, "factory_given": factory_given, "choice": reason,
        "n": int(index.ntotal), "dim": dim, "metric": METRIC, "fingerprint": fingerprint,
        "last_row": int(rows.max()), "search_params": params, "recall_at_10": measured,
        "recall_queries": len(queries), "recall_target": recall, "curve": curve,
        "recall_method": "stored vectors held out of training, own row excluded from the neighbours",
        "train_vectors": len(sample), "io_flags": "IO_FLAG_MMAP_IFC",
        "rerank": "exact inner product of the k x k_factor best PQ candidates (IndexRefineFlat)",
        "build_seconds": round(time.perf_counter() - start, 3), "memory_available_bytes": available,
        "faiss_version": faiss.__version__, "created": now(), "incremental_adds": 0,
        "index_bytes": index_path.stat().st_size,
    }
    write_json_atomic(index_paths(store, encoder, target)[1], sidecar)
    return sidecar


def _check_dense(rows: np.ndarray) -> None:
    """The exact vectors are found by position, so rows must be 0..n-1 (the store writes them so)."""
    if len(rows) and (rows[0] != 0 or rows[-1] != len(rows) - 1):
        raise Conflict(f"vector rows are not numbered 0..{len(rows) - 1}; this index needs dense rows: "
                       "copy the vectors into a fresh store")


def _held_out_split(rows: np.ndarray, train_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(tuning query rows, training rows): disjoint seeded samples, each sorted."""
    shuffled = np.random.default_rng(tuning.SEED).permutation(rows)
    n_queries = min(tuning.RECALL_QUERIES, max(1, len(rows) // 10))
    return np.sort(shuffled[:n_queries]), np.sort(shuffled[n_queries : n_queries + train_size])


def _row_batches(store: Store, encoder: str, target: str, rows: np.ndarray, pbar=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, vectors) batches in row order from Store.iter_vectors, never the whole set at once."""
    position = 0
    for _, vectors in store.iter_vectors(encoder, target, batch_size=tuning.BATCH):
        yield rows[position : position + len(vectors)], vectors
        position += len(vectors)
        if pbar is not None:
            pbar.update(len(vectors))


def write_refined(path: Path, base: faiss.Index, exact: Iterable[np.ndarray], n: int) -> None:
    """Write IndexRefineFlat(base, the `exact` rows) in faiss's own format, streaming the rows.

    faiss writes this index as: headers, the base index, the flat index's header, its code count,
    the float32 rows, k_factor. The frame around the rows comes from faiss itself: serialise the
    index with a one-row flat part whose row is a marker, then put the real count and rows where
    the marker is. Written to a temporary name, checked by reading it back mapped, then moved.
    """
    dim = base.d
    marker = (np.pi * np.arange(1, dim + 1, dtype=np.float32))[None]
    flat = faiss.IndexFlat(dim, base.metric_type)
    flat.add(marker)
    flat.ntotal = n  # as in the file; only the marker row is in memory
    frame = faiss.IndexRefine(base, flat)
    blob = faiss.serialize_index(frame).tobytes()
    at = blob.find(marker.tobytes())
    count = int.from_bytes(blob[at - 8 : at], "little") if at >= 8 else -1
    if blob.count(marker.tobytes()) != 1 or count not in (dim, 4 * dim):
        raise RuntimeError(f"faiss {faiss.__version__} lays out IndexRefineFlat differently; cannot stream it")
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    written, first, last = 0, None, None
    with open(tmp, "wb") as fh:
        fh.write(blob[: at - 8])
        fh.write((n * count).to_bytes(8, "little"))
        for vectors in exact:
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            fh.write(vectors.tobytes())
            first = vectors[0].copy() if first is None else first
            written, last = written + len(vectors), vectors[-1].copy()
        fh.write(blob[at + marker.nbytes :])
        fh.flush()
        os.fsync(fh.fileno())
    check = read_mapped(tmp)
    if written != n or check.ntotal != n or not (np.array_equal(check.reconstruct(0), first)
                                                 and np.array_equal(check.reconstruct(n - 1), last)):
        tmp.unlink()
        raise RuntimeError(f"streamed index {path.name} does not read back ({written} of {n} rows written)")
    os.replace(tmp, path)


# -- tuning -----------------------------------------------------------------------------------------
# -- freshness --------------------------------------------------------------------------------------
def append_new_rows(store: Store, index: faiss.Index, sidecar: dict) -> dict | None:
    """Add the rows committed after the build without retraining; the new sidecar, None when older rows changed.

    The mapped index is read-only, so its IVF part is copied into RAM (m + 8 bytes a vector), the
    new rows added, and the file rewritten with the old exact vectors streamed from the map; read
    the file again to search the new rows.
    """
    encoder, target = sidecar["encoder"], sidecar["target"]
    rows = np.array([row for _, row in store.catalog.embedding_map(encoder, target)], dtype=np.int64)
    old = rows <= sidecar["last_row"]
    if int(old.sum()) != sidecar["n"] or (len(rows) and rows[-1] != len(rows) - 1):
        return None
    new = rows[~old]
    base = faiss.deserialize_index(faiss.serialize_index(faiss.downcast_index(index.base_index)))
    for start in range(0, len(new), tuning.BATCH):
        chunk = new[start : start + tuning.BATCH]
        base.add_with_ids(store.vectors.read_rows(encoder, target, chunk), chunk)
    index_path, sidecar_path = index_paths(store, encoder, target)
    write_refined(index_path, base, _old_then_new(index, sidecar["n"], store, encoder, target, new), len(rows))
    sidecar = {**sidecar, "n": len(rows), "fingerprint": store.catalog.fingerprint(encoder, target),
               "last_row": int(rows.max()), "incremental_adds": sidecar.get("incremental_adds", 0) + len(new),
               "updated": now(), "index_bytes": index_path.stat().st_size}
    write_json_atomic(sidecar_path, sidecar)
    return sidecar


def _old_then_new(index: faiss.Index, n_old: int, store: Store, encoder: str, target: str,
                  new: np.ndarray) -> Iterator[np.ndarray]:
    """The mapped index's exact vectors, then the new rows' from the store, in batches."""
    flat = faiss.downcast_index(index.refine_index)
    for start in range(0, n_old, tuning.BATCH):
        yield flat.reconstruct_n(start, min(tuning.BATCH, n_old - start))
    for start in range(0, len(new), tuning.BATCH):
        yield store.vectors.read_rows(encoder, target, new[start : start + tuning.BATCH])
