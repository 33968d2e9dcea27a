"""Measuring an index against exact search and choosing its search-time setting (efSearch, nprobe, k_factor).

Below both index/py and index/large.py. Queries are stored vectors with their own row left out of
their results and of the exact ground truth (a stored vector finds itself at once, which inflated recall);
the chosen setting is the smallest (or fastest) that reaches the recall target.
"""
from __future__ import annotations

import time

import faiss
import numpy as np

from embedstore.index import exact
from embedstore.index.centring import centred
from embedstore.index.factory import inner_index, search_parameters
from embedstore.store import Store

RECALL_TARGET = 0.95
RECALL_QUERIES = 1000
RECALL_K = 10
# search-time settings measured when tuning, finer than powers of two so the chosen one lands close to
# the target (a power-of-two grid landed on efSearch 256 where ~130 reached 0.95: twice the work)
EF_SEARCH = (10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768, 1024)
NPROBE = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
K_FACTORS = (2, 4, 8, 16, 32, 64)  # re-ranking factors tried for IVF + exact re-ranking (index/large.py)
CURVE_TOP = 0.999  # the recorded curve goes on past the target up to this recall, for `index --recall` later
# a single search of the CLI and REST re-ranks at least this many candidates: their Searchers (made
# with_estimate) find the hits and the EF estimate's 50 neighbours in one search (index/search.py, EF_ESTIMATE_K)
SEARCH_CANDIDATES_MIN = 50
PLATEAU = 3  # a re-ranked sweep stops when recall rose by < 0.001 over this many more lists probed
BATCH = 65_536  # stored vectors read at a time
SEED = 0


def tuning_knob(index: faiss.Index) -> tuple[str, tuple[int, ...]] | None:
    """The search-time speed/recall parameter of this index type and the values tried, if any."""
    inner = inner_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        return "efSearch", EF_SEARCH
    if faiss.try_extract_index_ivf(inner) is not None:
        return "nprobe", NPROBE
    return None


def held_out_sample(rows: np.ndarray) -> np.ndarray:
    """The seeded, sorted sample of stored rows that build_index leaves out of an index until it is tuned,
    for tuning to search for: RECALL_QUERIES, at most a tenth of the rows."""
    size = min(RECALL_QUERIES, max(1, len(rows) // 10))
    return np.sort(np.random.default_rng(SEED).choice(rows, size=size, replace=False))


def tune(index: faiss.Index, store: Store, encoder: str, target: str, rows: np.ndarray,
         recall_target: float = RECALL_TARGET, mean: np.ndarray | None = None,
         held_out: np.ndarray | None = None) -> tuple[dict, float, int, list[dict]]:
    """Measure recall@10 and latency along the index's efSearch/nprobe grid; pick the smallest setting
    that reaches `recall_target`.

    Queries are the stored vectors of the rows `held_out` of the index while it is tuned (build_index
    adds them afterwards), so they are searched as fresh queries, with the ground truth among the rows
    the index holds; without `held_out`, up to RECALL_QUERIES stored vectors, each left out of its
    results and of the exact ground truth. Held out, because a graph that holds the query links it to
    its neighbours: HNSW's recall on stored vectors ran 0.01-0.04 above fresh queries' (efSearch 20:
    0.954 on stored vectors, 0.915 on fresh ones, 200k x 512, 400 centres). The curve goes on to
    CURVE_TOP so a later `embedstore index --recall R` can move along it without a rebuild.
    Returns (search params, their recall@10, number of queries, curve [{knob, recall_at_10, ms_per_query}]).
    """
    sample = held_out if held_out is not None else np.sort(
        np.random.default_rng(SEED).choice(rows, size=min(RECALL_QUERIES, len(rows)), replace=False))
    k = min(RECALL_K, len(rows) - 1)
    knob = tuning_knob(index)
    if knob is None or k < 1:
        return {}, 1.0, len(sample), []  # exact search (or a single vector): nothing to tune
    queries = centred(store.vectors.read_rows(encoder, target, sample), mean)
    truth = without_own(exact_neighbours(store, encoder, target, rows, queries, k + 1, mean, held_out), sample, k)
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


def tune_reranked(index: faiss.Index, store: Store, encoder: str, target: str, rows: np.ndarray,
                  query_rows: np.ndarray, recall: float) -> tuple[dict, float, list[dict]]:
    """(setting, its recall@10, the curve) for IVF + exact re-ranking: recall@10 on the held-out queries
    and ms per query over nprobe for each k_factor; the setting is chosen by `setting_for`.

    Each k_factor's nprobe sweep stops at CURVE_TOP or when recall stops rising (the re-rank's
    candidates, not the lists probed, limit it then), so `index --recall R` can move along the curve.
    """
    k = min(RECALL_K, len(rows) - 1)
    queries = store.vectors.read_rows(encoder, target, query_rows)
    truth = without_own(exact_neighbours(store, encoder, target, rows, queries, k + 1), query_rows, k)
    ivf = faiss.extract_index_ivf(index)
    list_bytes = index.ntotal / ivf.nlist * ivf.code_size  # codes a probed list holds, on average
    row_bytes = 4 * index.d  # an exact float32 row the re-rank reads
    curve: list[dict] = []
    for k_factor in K_FACTORS:
        measured: list[float] = []
        for nprobe in NPROBE:
            params = {"nprobe": nprobe, "k_factor": k_factor}
            started = time.perf_counter()
            _, found = index.search(queries, k + 1, params=search_parameters(params, k + 1))
            seconds = time.perf_counter() - started
            measured.append(round(recall_at(without_own(found, query_rows, k), truth), 4))
            curve.append({**params, "recall_at_10": measured[-1], "ms_per_query": round(1000 * seconds / len(queries), 4),
                          "bytes_per_query": int(nprobe * list_bytes
                                                 + max(RECALL_K * k_factor, SEARCH_CANDIDATES_MIN) * row_bytes)})
            if measured[-1] >= CURVE_TOP or (len(measured) > PLATEAU and measured[-1] - measured[-1 - PLATEAU] < 0.001):
                break
    params, reached = setting_for(curve, recall)
    return params, reached, curve


def setting_for(curve: list[dict], recall_target: float) -> tuple[dict, float]:
    """The setting of a tuning curve for the target: the first (smallest) point reaching it along one knob; on a
    two-knob curve (nprobe x k_factor) the point reading the fewest bytes a query; else the highest-recall point.

    Bytes, not the measured time: batch timings of neighbouring points differ by less than their noise
    (at 1M the first points also paged the memory-mapped rows in: nprobe 3 timed 0.042 ms a query,
    nprobe 2 0.065). nprobe lists of n / nlist codes, plus the exact rows re-ranked: max(k x k_factor,
    SEARCH_CANDIDATES_MIN), as the single queries of the CLI and REST re-rank (a Searcher without
    with_estimate re-ranks k x k_factor: at 1M the two settings below differ by less than the noise there). At 1M x 512 (244 codes of 72 B a
    list, 2 KB rows) nprobe 2 / k_factor 4 reads 137 KB, nprobe 3 / k_factor 2 155 KB; through the
    Searcher they ran 0.198 and 0.209 ms p50 (raw faiss at k=10, 40 vs 20 rows: 0.160 and 0.159 ms;
    bench/search.py, 2026-11-29).
    """
    reaching = [p for p in curve if p["recall_at_10"] >= recall_target]
    if not reaching:
        point = max(curve, key=lambda p: p["recall_at_10"])
    elif "k_factor" in curve[0]:
        point = min(reaching, key=lambda p: (p.get("bytes_per_query", 0), p["nprobe"], p["k_factor"]))
    else:
        point = reaching[0]
    return {k: v for k, v in point.items() if k not in ("recall_at_10", "ms_per_query", "bytes_per_query")}, point["recall_at_10"]


def without_own(found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """The first k results of each query other than the query's own row."""
    return np.stack([f[f != o][:k] for f, o in zip(found, own)])


def exact_neighbours(store: Store, encoder: str, target: str, rows: np.ndarray, queries: np.ndarray, k: int,
                     mean: np.ndarray | None = None, leave_out: np.ndarray | None = None) -> np.ndarray:
    """Row ids of the exact top-k inner products of each query, one pass over the stored (centred) vectors
    (those of the rows in `leave_out` skipped)."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    position = 0
    for _, raw in store.iter_vectors(encoder, target, batch_size=BATCH):
        batch_rows = rows[position : position + len(raw)]
        position += len(raw)
        if leave_out is not None:
            keep = ~np.isin(batch_rows, leave_out)
            raw, batch_rows = raw[keep], batch_rows[keep]
        if not len(raw):
            continue
        scores, local = exact.knn(queries, centred(raw, mean), min(k, len(raw)))
        heap.add_result(scores, np.where(local >= 0, batch_rows[np.maximum(local, 0)], -1))
    heap.finalize()
    return heap.I


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the true top-k ids that were found (both [Q, k])."""
    hits = sum(len(set(f[f >= 0]) & set(t[t >= 0])) for f, t in zip(found, truth))
    return hits / max(1, int((truth >= 0).sum()))
