"""Choose, build, persist and refresh the FAISS index of one (encoder, target) vector set.

Why these rules:
- Cosine similarity is the inner product of L2-normalised vectors (the store only holds unit rows),
  so every index uses METRIC_INNER_PRODUCT.
- FAISS ids are the HDF5 row numbers from the catalog, never insertion positions: results map back
  to metadata through the catalog, and new rows can be appended to an old index without drift.
- The sidecar JSON records the store fingerprint the index was built from; `load_index` never answers
  from a stale index: writers append the new rows (every index built here takes ids) or rebuild;
  readers, which write nothing, search the stored vectors exactly instead (or say which command refreshes).
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

from embedstore.devices import faiss_gpus
from embedstore.errors import BadInput, Conflict, NotFound
from embedstore.index import exact, large
from embedstore.index.centring import centre, vector_mean
from embedstore.progress import bar
from embedstore.store import Store
from embedstore.store.atomic import whole_or_absent
from embedstore.store.store import TARGETS

FLAT_MAX = 50_000  # below this, exact search is fast enough (~1 ms per 10k vectors per query at 512-d, one core)
HNSW_M = 32
# The graph over fp16 copies of the vectors: half the bytes a distance reads, the same recall (see choose_factory)
HNSW_FACTORY = f"HNSW{HNSW_M}_SQfp16"
HNSW_CODE_BYTES = 2  # per dimension (fp16)
HNSW_MEMORY_SHARE = 0.5  # HNSW while its estimated size is under this share of available memory
RECALL_TARGET = 0.95
RECALL_QUERIES = 1000
RECALL_K = 10
# search-time settings measured when tuning, finer than powers of two so the chosen one lands close to
# the target (a power-of-two grid landed on efSearch 256 where ~130 reached 0.95: twice the work)
EF_SEARCH = (10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768, 1024)
EF_FILTERED_MAX = 4096
NPROBE = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
CURVE_TOP = 0.999  # the recorded curve goes on past the target up to this recall, for `index --recall` later
BATCH = 65_536
SEED = 0
METRIC = "inner_product (cosine on L2-normalised vectors)"
EXACT_FALLBACK_SHARE = 0.25  # a reader with a stale index searches exactly while the vectors fit in this share of memory


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


def hnsw_bytes(n: int, dim: int, m: int = HNSW_M, code_bytes: int = HNSW_CODE_BYTES) -> int:
    """Estimated HNSW size: the vectors' codes, 2M level-0 links of 4 bytes, upper levels and the id map."""
    return int(n * (code_bytes * dim + 2 * m * 4 * 1.1 + 64))


def ivf_pq_factory(n: int, dim: int) -> str:
    """IVF with ~4 sqrt(n) lists (a power of two) and 8-bit PQ codes of dim/8 sub-vectors (SQ8 if none fit)."""
    nlist = int(min(max(2 ** round(np.log2(4 * np.sqrt(n))), 1024), 262_144))
    m = next((m for m in range(dim // 8, 0, -1) if dim % m == 0), 1)
    return f"IVF{nlist},PQ{m}" if m >= 8 else f"IVF{nlist},SQ8"


def choose_factory(n: int, dim: int, available: int | None) -> tuple[str, str]:
    """(FAISS factory string, the reason) for n vectors of dimension dim.

    Above FLAT_MAX, while it fits: HNSW32 over fp16 copies of the vectors (HNSW_FACTORY). Measured with
    bench/search.py (512-d embedding-like vectors, fresh queries, one thread, each index at the smallest
    setting reaching recall@10 0.95; 2 shared cores at load 5-7, 2026-11-29), p50 ms / index MB / build s:
      100k, 200 centres:  HNSW32-Flat 0.143 / 232 / 29  HNSW32_SQfp16 0.098 / 130 / 33  hnswlib 0.168 / 232 / 30
                          HNSW32_SQ8,RFlat 0.137 / 283 / 30  IVF1024,PQ64x4fs,RFlat 0.177 / 211 / 26
                          IVF1024,RaBitQ,RFlat 0.075 / 215 / 19
      200k, 400 centres:  see docs/scaling.md
    fp16 keeps HNSW-Flat's recall at the same efSearch (its rounding, ~2e-5 on a cosine, is far below
    the gaps between neighbours) while each distance reads half the bytes; it halves the memory and
    builds as fast as hnswlib. IVF-RaBitQ + re-rank was faster at 100k but its coarse quantizer scans
    4 sqrt(n) centroids per query (8 MB at 1M x 512), it needs dense rows, memory-mapping and no
    centring (index/large.py), so it is not the in-RAM choice.
    """
    if n < FLAT_MAX:
        return "Flat", f"{n} < {FLAT_MAX} vectors: exact search"
    need = hnsw_bytes(n, dim)
    if available is None or need <= HNSW_MEMORY_SHARE * available:
        room = "memory unknown" if available is None else f"{need / 1e9:.1f} GB <= {HNSW_MEMORY_SHARE:.0%} of {available / 1e9:.1f} GB available"
        return HNSW_FACTORY, f"{n} vectors, HNSW over fp16 vectors fits in memory ({room})"
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


def holds_close_vectors(index: faiss.Index) -> bool:
    """True when `reconstruct` returns the stored vectors exactly or rounded to fp16 (cosines within ~1e-4):
    close enough to score a filter's allowed rows exactly from the index instead of the vector file."""
    if holds_exact_vectors(index):
        return True
    inner = inner_index(index)
    if not (isinstance(inner, faiss.IndexHNSW) and isinstance(index, faiss.IndexIDMap2)):
        return False
    storage = faiss.downcast_index(inner.storage)
    return isinstance(storage, faiss.IndexScalarQuantizer) and storage.sq.qtype == faiss.ScalarQuantizer.QT_fp16


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
    retuned = retune(store, encoder, target, factory, recall_target, center)
    if retuned is not None:  # same vectors, same factory: only the search setting moves, no rebuild
        return retuned
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
    params, recall, n_queries, curve = tune(index, store, encoder, target, rows, recall_target, mean)
    sidecar = {
        "encoder": encoder, "target": target, "factory": chosen, "factory_given": bool(factory), "choice": reason,
        "n": int(index.ntotal), "dim": dim, "metric": METRIC, "fingerprint": fingerprint,
        "last_row": int(rows.max()), "search_params": params, "recall_at_10": recall, "recall_queries": n_queries,
        "recall_target": recall_target, "curve": curve,
        "build_seconds": round(time.perf_counter() - start, 3), "memory_available_bytes": available,
        "faiss_version": faiss.__version__, "created": _now(), "incremental_adds": 0,
        "centre": None if mean is None else [float(x) for x in mean],
    }
    return save_index(store, index, sidecar)


def index_store(store: Store, encoder: str, target: str = "videos", factory: str | None = None,
                progress: bool = True, recall_target: float = RECALL_TARGET, center: bool = False) -> dict:
    """`embedstore index`: build the index and, for videos, refit the same-patient calibration readers use."""
    sidecar = build_index(store, encoder, target, factory=factory, progress=progress, recall_target=recall_target,
                          center=center)
    if target == "videos":
        from embedstore.index.similar import calibration

        calibration(store, encoder)
    return sidecar


def refresh(store: Store, encoder: str, target: str = "videos") -> None:
    """After a writer changed the vectors: bring an existing index and calibration up to date, so readers need not."""
    if index_paths(store, encoder, target)[1].exists():
        load_index(store, encoder, target)
        if target == "videos":
            from embedstore.index.similar import calibration

            calibration(store, encoder)


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
    train_index(index, _centred(store.vectors.read_rows(encoder, target, sample), mean))


def train_index(index: faiss.Index, vectors: np.ndarray) -> None:
    """index.train, with an IVF's k-means (the slow part) on the GPUs when FAISS sees any.

    The GPU index is detached after training so its memory is freed with this call (left attached,
    every build in a long-lived process kept one); a GPU failure trains on the CPU instead.
    """
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None or faiss_gpus() == 0:
        index.train(vectors)
        return
    try:
        on_gpus = faiss.index_cpu_to_all_gpus(faiss.IndexFlat(ivf.d, ivf.metric_type))
    except (AttributeError, RuntimeError):
        index.train(vectors)
        return
    ivf.clustering_index = on_gpus  # a plain pointer: `on_gpus` keeps the GPU index alive meanwhile
    try:
        index.train(vectors)
    finally:
        ivf.clustering_index = None
        del on_gpus


def tune(index: faiss.Index, store: Store, encoder: str, target: str, rows: np.ndarray,
         recall_target: float = RECALL_TARGET, mean: np.ndarray | None = None) -> tuple[dict, float, int, list[dict]]:
    """Measure recall@10 and latency along the index's efSearch/nprobe grid; pick the smallest setting
    that reaches `recall_target`.

    Queries are up to 1000 stored vectors with themselves left out of both the results and the exact
    ground truth: a stored vector finds itself at once, which inflated recall and made tuning stop
    early on a setting that fresh queries miss, or, counted the other way, overshoot. The curve goes on
    to CURVE_TOP so a later `embedstore index --recall R` can move along it without a rebuild.
    Returns (search params, their recall@10, number of queries, curve [{knob, recall_at_10, ms_per_query}]).
    """
    sample = np.sort(np.random.default_rng(SEED).choice(rows, size=min(RECALL_QUERIES, len(rows)), replace=False))
    k = min(RECALL_K, len(rows) - 1)
    knob = tuning_knob(index)
    if knob is None or k < 1:
        return {}, 1.0, len(sample), []  # exact search (or a single vector): nothing to tune
    queries = _centred(store.vectors.read_rows(encoder, target, sample), mean)
    truth = without_own(exact_neighbours(store, encoder, target, rows, queries, k + 1, mean), sample, k)
    curve = []
    for value in knob[1]:
        params = {knob[0]: value}
        started = time.perf_counter()
        _, found = index.search(queries, k + 1, params=search_parameters(params, k + 1))
        seconds = time.perf_counter() - started
        curve.append({knob[0]: value, "recall_at_10": round(recall_at(without_own(found, sample, k), truth), 4),
                      "ms_per_query": round(1000 * seconds / len(queries), 4)})
        if curve[-1]["recall_at_10"] >= CURVE_TOP:
            break
    params, recall = setting_for(curve, recall_target)
    return params, recall, len(queries), curve


def setting_for(curve: list[dict], recall_target: float) -> tuple[dict, float]:
    """The first (smallest) point of a tuning curve reaching the target, else its highest-recall point."""
    point = next((p for p in curve if p["recall_at_10"] >= recall_target), max(curve, key=lambda p: p["recall_at_10"]))
    return {k: v for k, v in point.items() if k not in ("recall_at_10", "ms_per_query")}, point["recall_at_10"]


def without_own(found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """The first k results of each query other than the query's own row."""
    return np.stack([f[f != o][:k] for f, o in zip(found, own)])


def retune(store: Store, encoder: str, target: str, factory: str | None, recall_target: float,
           center: bool = False) -> dict | None:
    """Move an up-to-date index along its recorded tuning curve to `recall_target`: the new sidecar, or
    None when a build is needed (no index, stale, another factory or centring asked for, no curve recorded)."""
    index_path, sidecar_path = index_paths(store, encoder, target)
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except (OSError, ValueError):
        return None
    wanted = factory if factory is not None else (None if sidecar.get("factory_given") else sidecar.get("factory"))
    if (not sidecar.get("curve") or not index_path.exists() or wanted != sidecar.get("factory")
            or center != (sidecar.get("centre") is not None)
            or sidecar.get("fingerprint") != store.catalog.fingerprint(encoder, target)):
        return None
    try:  # a damaged file (a partial copy, a full disk) is rebuilt, not retuned
        whole = large.read_index(index_path, sidecar).ntotal == sidecar["n"]
    except RuntimeError:
        whole = False
    if not whole:
        return None
    params, recall = setting_for(sidecar["curve"], recall_target)
    sidecar = {**sidecar, "search_params": params, "recall_at_10": recall, "recall_target": recall_target,
               "retuned": _now()}
    write_json_atomic(sidecar_path, sidecar)
    return sidecar


def exact_neighbours(store: Store, encoder: str, target: str, rows: np.ndarray, queries: np.ndarray, k: int,
                     mean: np.ndarray | None = None) -> np.ndarray:
    """Row ids of the exact top-k inner products of each query, one pass over the stored (centred) vectors."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    position = 0
    for _, raw in store.iter_vectors(encoder, target, batch_size=BATCH):
        vectors = _centred(raw, mean)
        scores, local = exact.knn(queries, vectors, min(k, len(vectors)))
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
    with whole_or_absent(tmp, f"the index {index_path.name}"):
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
    with whole_or_absent(tmp, path.name):
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        _fsync(tmp)
    os.replace(tmp, path)


def _fsync(path: Path) -> None:
    """Flush a file to disk before it replaces another, so a power cut cannot leave an empty file."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def read_sidecar(store: Store, encoder: str, target: str = "videos") -> dict:
    """The sidecar of a built index; NotFound naming the command that builds it, Conflict when it is damaged."""
    _, sidecar_path = index_paths(store, encoder, target)
    if not sidecar_path.exists():
        raise NotFound(f"no {target} index for encoder '{encoder}' in {store.path}; "
                       f"build it with `{build_command(store, encoder, target)}`")
    try:
        sidecar = json.loads(sidecar_path.read_text())
        for key in ("n", "fingerprint", "factory"):
            sidecar[key]
    except (ValueError, KeyError, TypeError) as exc:
        raise damaged(store, encoder, target, exc) from None
    return sidecar


def load_index(store: Store, encoder: str, target: str = "videos", progress: bool = False) -> tuple[faiss.Index, dict]:
    """The index and its sidecar, never answering from a stale one; only writers write.

    Same fingerprint: as is. A store that may write derived files (`store.writes_derived`) brings a
    stale index up to date (new rows appended, anything else rebuilt) and rebuilds a damaged one.
    A reader writes nothing: a stale index (or one whose file an erasure removed) is replaced, in
    memory, by exact search over the stored vectors (the same answers, slower), up to
    EXACT_FALLBACK_SHARE of available memory; beyond that, and for a damaged index, Conflict names
    the command that refreshes it.
    """
    store.encoder_info(encoder)
    index_path, _ = index_paths(store, encoder, target)
    try:
        sidecar = read_sidecar(store, encoder, target)
    except Conflict:  # a damaged sidecar: writers rebuild by the size rule, readers say so
        if not store.writes_derived:
            raise
        sidecar = {}
    try:
        index = large.read_index(index_path, sidecar) if sidecar and index_path.exists() else None
        if index is not None and index.ntotal != sidecar["n"]:
            raise ValueError(f"the file holds {index.ntotal} vectors, its sidecar says {sidecar['n']}")
    except (RuntimeError, ValueError, KeyError) as exc:
        if not store.writes_derived:
            raise damaged(store, encoder, target, exc) from None
        index = None
    if index is not None and sidecar["fingerprint"] == store.catalog.fingerprint(encoder, target):
        return index, sidecar
    if not store.writes_derived:
        return exact_in_memory(store, encoder, target, sidecar)
    if index is not None:
        mapped = large.is_large(sidecar["factory"])  # read-only: rewritten with the new rows, then read again
        updated = (large.append_new_rows if mapped else _append_new_rows)(store, index, sidecar)
        if updated is not None:
            return (large.read_index(index_path, updated) if mapped else index), updated
    factory = sidecar.get("factory") if sidecar.get("factory_given") else None
    sidecar = build_index(store, encoder, target, factory=factory, progress=progress,
                          recall_target=sidecar.get("recall_target", RECALL_TARGET),
                          center=sidecar.get("centre") is not None)
    return large.read_index(index_path, sidecar), sidecar


def damaged(store: Store, encoder: str, target: str, exc: Exception) -> Conflict:
    """The one-line error for an index file or sidecar that cannot be read (a partial copy, a full disk)."""
    why = ("FAISS cannot read the .faiss file" if isinstance(exc, RuntimeError)
           else "the sidecar lacks " + str(exc) if isinstance(exc, KeyError)
           else " ".join(str(exc).split())[:120] or type(exc).__name__)
    return Conflict(f"the {target} index of {encoder} in {store.path} is damaged ({why}); "
                    f"rebuild it with `{build_command(store, encoder, target)}`")


def exact_in_memory(store: Store, encoder: str, target: str, sidecar: dict) -> tuple[faiss.Index, dict]:
    """Exact search over the store's current vectors, built in memory for a reader whose index is stale."""
    dim = int(store.encoder_info(encoder)["dim"])
    n = len(store.catalog.embedding_map(encoder, target))
    available = available_memory()
    if available is not None and n * dim * 4 > EXACT_FALLBACK_SHARE * available:
        raise Conflict(f"the {target} index of {encoder} in {store.path} is older than the store's vectors and too big "
                       f"to replace by exact search here; refresh it with `{build_command(store, encoder, target)}`")
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    position = 0
    rows = np.array([row for _, row in store.catalog.embedding_map(encoder, target)], dtype=np.int64)
    for _, vectors in store.iter_vectors(encoder, target, batch_size=BATCH):  # centred as the stale index was
        index.add_with_ids(_centred(vectors, sidecar_centre(sidecar)), rows[position : position + len(vectors)])
        position += len(vectors)
    return index, {**sidecar, "factory": "Flat", "search_params": {}, "n": int(index.ntotal),
                   "fingerprint": store.catalog.fingerprint(encoder, target), "recall_at_10": 1.0,
                   "stale_index": f"answered by exact search; refresh the index with `{build_command(store, encoder, target)}`"}


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
