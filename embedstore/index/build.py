"""Choose, build, persist and refresh the FAISS index of one (encoder, target) vector set.

Why these rules:
- Cosine similarity is the inner product of L2-normalised vectors (the store only holds unit rows),
  so every index uses METRIC_INNER_PRODUCT.
- FAISS ids are the HDF5 row numbers from the catalog, never insertion positions: results map back
  to metadata through the catalog, and new rows can be appended to an old index without drift.
- The sidecar JSON records the store fingerprint the index was built from; `load_index` refuses to
  answer from a stale index: it appends the new rows (every index built here takes ids) or rebuilds.
- Files are written to a temporary name and moved into place, so a reader never sees half an index.
See indexes/README.md for the size rule.
"""
from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np

from embedstore.errors import BadInput, NotFound
from embedstore.index import large
from embedstore.index.centring import centre, vector_mean
from embedstore.progress import bar
from embedstore.store import Store
from embedstore.store.store import TARGETS

FLAT_MAX = 50_000  # below this, exact search is fast enough (~1 ms per 10k vectors per query at 512-d, one core)
HNSW_M = 32
HNSW_MEMORY_SHARE = 0.5  # HNSW while its estimated size is under this share of available memory
RECALL_TARGET = 0.95
RECALL_QUERIES = 1000
RECALL_K = 10
EF_SEARCH = (16, 32, 64, 128, 256, 512)
EF_FILTERED_MAX = 4096
NPROBE = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BATCH = 65_536
SEED = 0
METRIC = "inner_product (cosine on L2-normalised vectors)"


def index_paths(store: Store, encoder: str, target: str = "videos") -> tuple[Path, Path]:
    """(index file, sidecar file) of one vector set."""
    stem = f"{encoder}.{target}"
    return store.indexes_dir / f"{stem}.faiss", store.indexes_dir / f"{stem}.json"


def build_command(store: Store, encoder: str, target: str = "videos") -> str:
    """The command line that builds this index (quoted in errors)."""
    extra = f" --target {target}" if target != "videos" else ""
    return f"embedstore index --store {store.path} --encoder {encoder}{extra}"


# -- the choice rule --------------------------------------------------------------------------------
def available_memory() -> int | None:
    """Bytes of memory available to a new allocation ($EMBEDSTORE_INDEX_MEMORY if set, psutil if installed, else /proc/meminfo)."""
    setting = large.memory_setting()
    if setting is not None:
        return setting
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def hnsw_bytes(n: int, dim: int, m: int = HNSW_M) -> int:
    """Estimated HNSW size: full vectors, 2M level-0 links of 4 bytes, upper levels and the id map."""
    return int(n * (4 * dim + 2 * m * 4 * 1.1 + 64))


def ivf_pq_factory(n: int, dim: int) -> str:
    """IVF with ~4 sqrt(n) lists (a power of two) and 8-bit PQ codes of dim/8 sub-vectors (SQ8 if none fit)."""
    nlist = int(min(max(2 ** round(np.log2(4 * np.sqrt(n))), 1024), 262_144))
    m = next((m for m in range(dim // 8, 0, -1) if dim % m == 0), 1)
    return f"IVF{nlist},PQ{m}" if m >= 8 else f"IVF{nlist},SQ8"


def choose_factory(n: int, dim: int, available: int | None) -> tuple[str, str]:
    """(FAISS factory string, the reason) for n vectors of dimension dim."""
    if n < FLAT_MAX:
        return "Flat", f"{n} < {FLAT_MAX} vectors: exact search"
    need = hnsw_bytes(n, dim)
    if available is None or need <= HNSW_MEMORY_SHARE * available:
        room = "memory unknown" if available is None else f"{need / 1e9:.1f} GB <= {HNSW_MEMORY_SHARE:.0%} of {available / 1e9:.1f} GB available"
        return f"HNSW{HNSW_M}", f"{n} vectors, HNSW fits in memory ({room})"
    return ivf_pq_factory(n, dim), (f"HNSW would need {need / 1e9:.1f} GB > {HNSW_MEMORY_SHARE:.0%} of "
                                    f"{available / 1e9:.1f} GB available: compressed, memory-mappable IVF-PQ")


def new_index(factory: str, dim: int) -> faiss.Index:
    """An empty inner-product index that takes explicit ids (IVF does natively, others via IDMap2)."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        why = str(exc).strip().splitlines()[-1][:160]
        raise BadInput(f"--factory {factory!r} is not a FAISS factory string for dimension {dim}: {why}") from None
    if faiss.try_extract_index_ivf(index) is None and not isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        index = faiss.IndexIDMap2(index)
    return index


def inner_index(index: faiss.Index) -> faiss.Index:
    """The index under an IDMap wrapper (itself when there is none)."""
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return faiss.downcast_index(index.index)
    return index


def holds_exact_vectors(index: faiss.Index) -> bool:
    """True when `reconstruct` returns the stored vectors exactly (Flat and HNSW-Flat storage)."""
    inner = inner_index(index)
    return isinstance(inner, (faiss.IndexFlat, faiss.IndexHNSWFlat)) and isinstance(index, faiss.IndexIDMap2)


def tuning_knob(index: faiss.Index) -> tuple[str, tuple[int, ...]] | None:
    """The search-time speed/recall parameter of this index type and the values tried, if any."""
    inner = inner_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        return "efSearch", EF_SEARCH
    if faiss.try_extract_index_ivf(inner) is not None:
        return "nprobe", NPROBE
    return None


def search_parameters(params: dict, k: int, selector=None, share: float = 1.0) -> faiss.SearchParameters | None:
    """Per-query FAISS parameters (no global state): the sidecar's efSearch/nprobe plus an id selector.

    Under a filter that allows `share` of the rows, HNSW widens its beam by 1/share (up to
    EF_FILTERED_MAX) so that about as many allowed candidates are compared as without a filter.
    None when there is nothing to set (exact search, no filter).
    """
    if "efSearch" in params:
        ef = max(int(params["efSearch"]), k)
        return faiss.SearchParametersHNSW(sel=selector, efSearch=int(min(ef / share, max(EF_FILTERED_MAX, ef))))
    if "k_factor" in params:  # IVF-PQ re-ranked with exact vectors (index/large.py)
        return large.search_parameters(params, selector)
    if "nprobe" in params:
        return faiss.SearchParametersIVF(sel=selector, nprobe=int(params["nprobe"]))
    return None if selector is None else faiss.SearchParameters(sel=selector)


# -- building ---------------------------------------------------------------------------------------
def build_index(store: Store, encoder: str, target: str = "videos", factory: str | None = None,
                progress: bool = True, recall_target: float = RECALL_TARGET, center: bool = False) -> dict:
    """Build the index of (encoder, target) from the store, measure its recall@10, save it; returns the sidecar.

    center: the set's mean is removed from every vector (re-normalised) before indexing; the sidecar
    records it as "centre" and the Searcher removes it from every query (index/centring.py).
    """
    if target not in TARGETS:
        raise BadInput(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    dim = int(store.encoder_info(encoder)["dim"])
    fingerprint = store.catalog.fingerprint(encoder, target)
    rows = np.array([row for _, row in store.catalog.embedding_map(encoder, target)], dtype=np.int64)
    if len(rows) == 0:
        raise BadInput(f"store {store.path} has no {encoder} {target} vectors to index; "
                       f"run `embedstore encode --store {store.path} --encoder {encoder}` first")
    available = available_memory()
    chosen, reason = (factory, "given with --factory") if factory else large.reranked(*choose_factory(len(rows), dim, available))
    if large.is_large(chosen):  # beyond the in-RAM limit: IVF-PQ + exact re-ranking, memory-mapped
        if center:
            raise BadInput(f"--center is not available for the memory-mapped {chosen} index; "
                           f"give --factory HNSW32 (or Flat) to centre, or index without --center")
        return large.build_large(store, encoder, target, chosen, reason, rows, bool(factory), available,
                                 recall_target, progress)
    start = time.perf_counter()
    mean = _set_mean(store, encoder, target) if center else None
    index = new_index(chosen, dim)
    _train(index, store, encoder, target, rows, mean)
    with bar(total=len(rows), desc=f"index {encoder}.{target}", unit="vec", enabled=progress) as pbar:
        position = 0
        for _, vectors in store.iter_vectors(encoder, target, batch_size=BATCH):
            index.add_with_ids(_centred(vectors, mean), rows[position : position + len(vectors)])
            position += len(vectors)
            pbar.update(len(vectors))
    params, recall, n_queries = tune(index, store, encoder, target, rows, recall_target, mean)
    sidecar = {
        "encoder": encoder, "target": target, "factory": chosen, "factory_given": bool(factory), "choice": reason,
        "n": int(index.ntotal), "dim": dim, "metric": METRIC, "fingerprint": fingerprint,
        "last_row": int(rows.max()), "search_params": params, "recall_at_10": recall, "recall_queries": n_queries,
        "recall_target": recall_target,
        "build_seconds": round(time.perf_counter() - start, 3), "memory_available_bytes": available,
        "faiss_version": faiss.__version__, "created": _now(), "incremental_adds": 0,
        "centre": None if mean is None else [float(x) for x in mean],
    }
    return save_index(store, index, sidecar)


def _set_mean(store: Store, encoder: str, target: str) -> np.ndarray:
    """The mean stored vector, streamed in batches (float64 sums)."""
    total, n = None, 0
    for _, vectors in store.iter_vectors(encoder, target, batch_size=BATCH):
        part = vector_mean(vectors).astype(np.float64) * len(vectors)
        total, n = (part if total is None else total + part), n + len(vectors)
    return (total / n).astype(np.float32)


def _centred(vectors: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    return vectors if mean is None else centre(vectors, mean)


def sidecar_centre(sidecar: dict) -> np.ndarray | None:
    """The mean an index was centred with (None for a raw index)."""
    return None if sidecar.get("centre") is None else np.asarray(sidecar["centre"], dtype=np.float32)


def _train(index: faiss.Index, store: Store, encoder: str, target: str, rows: np.ndarray,
           mean: np.ndarray | None = None) -> None:
    """Train on a seeded sample of stored vectors (IVF and PQ need it; Flat and HNSW do not)."""
    if index.is_trained:
        return
    ivf = faiss.try_extract_index_ivf(index)
    want = max(64 * (ivf.nlist if ivf is not None else 256), 65_536)
    sample = np.sort(np.random.default_rng(SEED).choice(rows, size=min(want, len(rows)), replace=False))
    if ivf is not None and faiss.get_num_gpus() > 0:
        _cluster_on_gpu(ivf)
    index.train(_centred(store.vectors.read_rows(encoder, target, sample), mean))


def _cluster_on_gpu(ivf: faiss.IndexIVF) -> None:
    """Run the IVF k-means on the GPUs (the slow part of training); stay on CPU if that fails."""
    try:
        ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlat(ivf.d, ivf.metric_type))
    except (AttributeError, RuntimeError):
        pass


def tune(index: faiss.Index, store: Store, encoder: str, target: str, rows: np.ndarray,
         recall_target: float = RECALL_TARGET, mean: np.ndarray | None = None) -> tuple[dict, float, int]:
    """Smallest efSearch/nprobe reaching recall@10 >= recall_target on up to 1000 stored vectors as queries.

    Returns (search params, recall@10 at those params, number of queries). Ground truth is exact
    inner-product search, streamed over the stored vectors so memory stays bounded.
    """
    sample = np.sort(np.random.default_rng(SEED).choice(rows, size=min(RECALL_QUERIES, len(rows)), replace=False))
    queries = _centred(store.vectors.read_rows(encoder, target, sample), mean)
    k = min(RECALL_K, len(rows))
    truth = exact_neighbours(store, encoder, target, rows, queries, k, mean)
    knob = tuning_knob(index)
    values = knob[1] if knob else (None,)
    for value in values:
        params = {knob[0]: value} if knob else {}
        _, found = index.search(queries, k, params=search_parameters(params, k))
        recall = recall_at(found, truth)
        if recall >= recall_target:
            break
    return params, round(recall, 4), len(queries)


def exact_neighbours(store: Store, encoder: str, target: str, rows: np.ndarray, queries: np.ndarray, k: int,
                     mean: np.ndarray | None = None) -> np.ndarray:
    """Row ids of the exact top-k inner products of each query, one pass over the stored (centred) vectors."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    position = 0
    for _, raw in store.iter_vectors(encoder, target, batch_size=BATCH):
        vectors = _centred(raw, mean)
        scores, local = faiss.knn(queries, vectors, min(k, len(vectors)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, np.where(local >= 0, rows[position + np.maximum(local, 0)], -1))
        position += len(vectors)
    heap.finalize()
    return heap.I


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the true top-k ids that were found (both [Q, k])."""
    hits = sum(len(set(f[f >= 0]) & set(t[t >= 0])) for f, t in zip(found, truth))
    return hits / max(1, int((truth >= 0).sum()))


# -- persistence and freshness ----------------------------------------------------------------------
def save_index(store: Store, index: faiss.Index, sidecar: dict) -> dict:
    """Write index then sidecar, each atomically (a crash in between leaves a mismatch that load rebuilds); returns the sidecar."""
    index_path, sidecar_path = index_paths(store, sidecar["encoder"], sidecar["target"])
    index_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = index_path.with_name(f"{index_path.name}.tmp{os.getpid()}")
    faiss.write_index(index, str(tmp))
    _fsync(tmp)
    os.replace(tmp, index_path)
    sidecar = {**sidecar, "index_bytes": index_path.stat().st_size}
    write_json_atomic(sidecar_path, sidecar)
    return sidecar


def write_json_atomic(path: Path, data: dict) -> None:
    """Replace `path` with `data` as JSON in one step (temporary file + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{threading.get_ident()}")  # a name per writer: threads may race
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    _fsync(tmp)
    os.replace(tmp, path)


def _fsync(path: Path) -> None:
    """Flush a file to disk before it replaces another, so a power cut cannot leave an empty file."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def read_sidecar(store: Store, encoder: str, target: str = "videos") -> dict:
    """The sidecar of a built index; NotFound naming the command that builds it."""
    _, sidecar_path = index_paths(store, encoder, target)
    if not sidecar_path.exists():
        raise NotFound(f"no {target} index for encoder '{encoder}' in {store.path}; "
                       f"build it with `{build_command(store, encoder, target)}`")
    return json.loads(sidecar_path.read_text())


def load_index(store: Store, encoder: str, target: str = "videos", progress: bool = False) -> tuple[faiss.Index, dict]:
    """The index and its sidecar, brought up to date with the catalog first (never answers stale).

    Same fingerprint: as is. New rows after the indexed ones, old ones unchanged: appended and
    saved. Anything else (rows gone, a half-written file): rebuilt with the same factory rule.
    """
    store.encoder_info(encoder)
    sidecar = read_sidecar(store, encoder, target)
    index_path, _ = index_paths(store, encoder, target)
    index = large.read_index(index_path, sidecar) if index_path.exists() else None
    if index is not None and index.ntotal == sidecar["n"]:
        if sidecar["fingerprint"] == store.catalog.fingerprint(encoder, target):
            return index, sidecar
        mapped = large.is_large(sidecar["factory"])  # read-only: rewritten with the new rows, then read again
        updated = (large.append_new_rows if mapped else _append_new_rows)(store, index, sidecar)
        if updated is not None:
            return (large.read_index(index_path, updated) if mapped else index), updated
    factory = sidecar["factory"] if sidecar.get("factory_given") else None
    sidecar = build_index(store, encoder, target, factory=factory, progress=progress,
                          recall_target=sidecar.get("recall_target", RECALL_TARGET),
                          center=sidecar.get("centre") is not None)
    return large.read_index(index_path, sidecar), sidecar


def _append_new_rows(store: Store, index: faiss.Index, sidecar: dict) -> dict | None:
    """Add the rows committed after the index was built; None when older rows changed (rebuild)."""
    encoder, target = sidecar["encoder"], sidecar["target"]
    fingerprint = store.catalog.fingerprint(encoder, target)
    rows = np.array([row for _, row in store.catalog.embedding_map(encoder, target)], dtype=np.int64)
    old = rows <= sidecar["last_row"]
    if int(old.sum()) != sidecar["n"]:
        return None
    new = rows[~old]
    for start in range(0, len(new), BATCH):
        chunk = new[start : start + BATCH]
        index.add_with_ids(_centred(store.vectors.read_rows(encoder, target, chunk), sidecar_centre(sidecar)), chunk)
    sidecar = {**sidecar, "n": int(index.ntotal), "fingerprint": fingerprint, "last_row": int(rows.max()),
               "incremental_adds": sidecar.get("incremental_adds", 0) + len(new), "updated": _now()}
    return save_index(store, index, sidecar)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
