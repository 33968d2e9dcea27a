"""Filtered queries keep their recall: a `where` keeping 1% (and 0.1%) of a 50,000-vector store answers with
recall@10 >= 0.95 against exact search over the rows it keeps, and exactly k results: at 1% on both
paths (the exact scan of the allowed rows, and the approximate index with an id selector), at 0.1% on
the exact scan the default EXACT_SUBSET_MAX sends it to.

50,000 x 64 embedding-like vectors written in bulk (bench/search.py's `bulk_store`, row i is video
'v{i:07d}'), the automatic index (approximate at this size); fresh queries from the same mixture.
"""
from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from bench.search import ENCODER, bulk_store
from bench.vectors import LatentMixture
from embedstore.index import Searcher, build_index
from embedstore.index import search as search_module
from embedstore.index.factory import FLAT_MAX
from embedstore.store import open_store

N, DIM, K, QUERIES = 50_000, 64, 10, 100
SPACE = LatentMixture(DIM, centres=500, latent=16, seed=0)


@pytest.fixture(scope="module")
def store_and_vectors(tmp_path_factory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("filtered") / "store"
    vectors, _ = SPACE.sample(N, seed=1)
    bulk_store(path, vectors).close()
    with open_store(path, read_only=True) as store:
        side = build_index(store, ENCODER, progress=False)
    assert side["factory"] != "Flat" and N >= FLAT_MAX  # the approximate index is what is under test
    return path, vectors


def filtered_answers(path: Path, vectors: np.ndarray, kept: int) -> tuple[float, list[int]]:
    """(recall@10 against the exact top 10 of rows < kept, the number of hits of each query)."""
    queries, _ = SPACE.sample(QUERIES, seed=2)
    truth = faiss.knn(queries, vectors[:kept], K, metric=faiss.METRIC_INNER_PRODUCT)[1]
    with open_store(path, read_only=True) as store:
        searcher = Searcher(store, ENCODER)
        hits = [searcher.search_vector(q, k=K, where=f"video_id < 'v{kept:07d}'").hits for q in queries]
    found = [[int(h.id[1:]) for h in hit] for hit in hits]
    recall = float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))
    return recall, [len(f) for f in found]


@pytest.mark.parametrize("path_taken", ["exact subset", "selector"])
def test_one_percent_filter_keeps_recall_and_returns_exactly_k(store_and_vectors, monkeypatch, path_taken):
    kept = N // 100
    # the default sends 500 rows to the exact scan; 0 forces the index with an id selector
    monkeypatch.setattr(search_module, "EXACT_SUBSET_MAX", N if path_taken == "exact subset" else 0)
    recall, counts = filtered_answers(*store_and_vectors, kept)
    assert recall >= 0.95, recall
    assert counts == [K] * QUERIES


def test_tenth_of_a_percent_filter_is_answered_exactly_with_k_results(store_and_vectors):
    """50 rows kept: the exact scan of them (a graph walk that must find 50 of 50,000 nodes is where the
    selector path loses recall, which is what EXACT_SUBSET_MAX is for)."""
    assert N // 1000 <= search_module.EXACT_SUBSET_MAX
    recall, counts = filtered_answers(*store_and_vectors, N // 1000)
    assert recall == 1.0
    assert counts == [K] * QUERIES
