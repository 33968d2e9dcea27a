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
The size rule and factory strings are in index/factory.py, recall tuning in index/tuning.py, file
writing and reading in index/files.py (below this module and index/large.py, which builds the
memory-mapped kind). See indexes/README.md for the size rule.
"""
from __future__ import annotations

import json
import time

import faiss
import numpy as np

from embedstore.errors import BadInput, Conflict, NotFound
from embedstore.index import large, tuning
from embedstore.index.centring import centred, vector_mean
from embedstore.index.factory import METRIC, available_memory, choose_factory, is_large, new_index, reranked, train_index
from embedstore.index.files import build_command, index_paths, now, read_index, save_index, write_json_atomic
from embedstore.index.tuning import RECALL_TARGET, held_out_sample, setting_for, tune, tuning_knob
from embedstore.progress import bar
from embedstore.store import Store
from embedstore.store.store import TARGETS

EXACT_FALLBACK_SHARE = 0.25  # a reader with a stale index searches exactly while the vectors fit in this share of memory


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
    mappable = not center and rows[0] == 0 and rows[-1] == len(rows) - 1  # what the memory-mapped kind needs
    chosen, reason = ((factory, "given with --factory") if factory
                      else reranked(*choose_factory(len(rows), dim, available, mappable)))
    if is_large(chosen):  # IVF + exact re-ranking, memory-mapped
        if center:
            raise BadInput(f"--center is not available for the memory-mapped {chosen} index; "
                           f"give --factory HNSW32 (or Flat) to centre, or index without --center")
        return large.build_large(store, encoder, target, chosen, reason, rows, bool(factory), available,
                                 recall_target, progress)
    start = time.perf_counter()
    mean = _set_mean(store, encoder, target) if center else None
    index = new_index(chosen, dim)
    _train(index, store, encoder, target, rows, mean)
    # the rows tuning searches for join the index after tuning, so that they are searched as fresh queries
    held_out = held_out_sample(rows) if tuning_knob(index) is not None and len(rows) > 1 else rows[:0]
    with bar(total=len(rows), desc=f"index {encoder}.{target}", unit="vec", enabled=progress) as pbar:
        position = 0
        for _, vectors in store.iter_vectors(encoder, target, batch_size=tuning.BATCH):
            batch_rows = rows[position : position + len(vectors)]
            keep = ~np.isin(batch_rows, held_out)
            index.add_with_ids(centred(vectors[keep], mean), batch_rows[keep])
            position += len(vectors)
            pbar.update(len(vectors))
    params, recall, n_queries, curve = tune(index, store, encoder, target, rows, recall_target, mean,
                                            held_out if len(held_out) else None)
    if len(held_out):
        index.add_with_ids(centred(store.vectors.read_rows(encoder, target, held_out), mean), held_out)
    sidecar = {
        "encoder": encoder, "target": target, "factory": chosen, "factory_given": bool(factory), "choice": reason,
        "n": int(index.ntotal), "dim": dim, "metric": METRIC, "fingerprint": fingerprint,
        "last_row": int(rows.max()), "search_params": params, "recall_at_10": recall, "recall_queries": n_queries,
        "recall_target": recall_target, "curve": curve,
        "build_seconds": round(time.perf_counter() - start, 3), "memory_available_bytes": available,
        "faiss_version": faiss.__version__, "created": now(), "incremental_adds": 0,
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
    for _, vectors in store.iter_vectors(encoder, target, batch_size=tuning.BATCH):
        part = vector_mean(vectors).astype(np.float64) * len(vectors)
        total, n = (part if total is None else total + part), n + len(vectors)
    return (total / n).astype(np.float32)


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
    sample = np.sort(np.random.default_rng(tuning.SEED).choice(rows, size=min(want, len(rows)), replace=False))
    train_index(index, centred(store.vectors.read_rows(encoder, target, sample), mean))


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
        whole = read_index(index_path, sidecar).ntotal == sidecar["n"]
    except RuntimeError:
        whole = False
    if not whole:
        return None
    params, recall = setting_for(sidecar["curve"], recall_target)
    sidecar = {**sidecar, "search_params": params, "recall_at_10": recall, "recall_target": recall_target,
               "retuned": now()}
    write_json_atomic(sidecar_path, sidecar)
    return sidecar


# -- persistence and freshness ----------------------------------------------------------------------
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
        index = read_index(index_path, sidecar) if sidecar and index_path.exists() else None
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
        mapped = is_large(sidecar["factory"])  # read-only: rewritten with the new rows, then read again
        updated = (large.append_new_rows if mapped else _append_new_rows)(store, index, sidecar)
        if updated is not None:
            return (read_index(index_path, updated) if mapped else index), updated
    factory = sidecar.get("factory") if sidecar.get("factory_given") else None
    sidecar = build_index(store, encoder, target, factory=factory, progress=progress,
                          recall_target=sidecar.get("recall_target", RECALL_TARGET),
                          center=sidecar.get("centre") is not None)
    return read_index(index_path, sidecar), sidecar


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
    for _, vectors in store.iter_vectors(encoder, target, batch_size=tuning.BATCH):  # centred as the stale index was
        index.add_with_ids(centred(vectors, sidecar_centre(sidecar)), rows[position : position + len(vectors)])
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
    for start in range(0, len(new), tuning.BATCH):
        chunk = new[start : start + tuning.BATCH]
        index.add_with_ids(centred(store.vectors.read_rows(encoder, target, chunk), sidecar_centre(sidecar)), chunk)
    sidecar = {**sidecar, "n": int(index.ntotal), "fingerprint": fingerprint, "last_row": int(rows.max()),
               "incremental_adds": sidecar.get("incremental_adds", 0) + len(new), "updated": now()}
    return save_index(store, index, sidecar)


