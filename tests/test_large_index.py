"""Indexes beyond the in-RAM limit: IVF-PQ + exact re-ranking, built in batches, read memory-mapped.

50,000 x 64 embedding-like vectors; a 16 MB in-RAM limit ($EMBEDSTORE_INDEX_MEMORY) makes the
automatic choice skip HNSW. Built once for the module, through `embedstore index --recall 0.95`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
from typer.testing import CliRunner

from bench.search import ENCODER, bulk_store
from bench.vectors import LatentMixture
from embedstore.cli import app
from embedstore.index import Searcher, factory, load_index, tuning
from embedstore.index.files import index_paths
from embedstore.index.tuning import recall_at
from embedstore.store import Store, open_store

N, DIM, BATCH = 50_000, 64, 8192
SPACE = LatentMixture(DIM, centres=500, latent=16, seed=0)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, np.ndarray, dict, list[int]]:
    """(store path, its vectors, the CLI's sidecar, the sizes of the batches read while building)."""
    path = tmp_path_factory.mktemp("large") / "store"
    vectors, _ = SPACE.sample(N, seed=1)
    bulk_store(path, vectors).close()
    batches: list[int] = []
    iter_vectors = Store.iter_vectors

    def spy(self, *args, **kwargs):
        for ids, chunk in iter_vectors(self, *args, **kwargs):
            batches.append(len(chunk))
            yield ids, chunk

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMBEDSTORE_INDEX_MEMORY", "16M")
        mp.setattr(tuning, "BATCH", BATCH)
        mp.setattr(Store, "iter_vectors", spy)
        mp.setattr(Store, "all_vectors", lambda *a, **k: pytest.fail("the index must not load all vectors"))
        result = CliRunner().invoke(app, ["index", "--store", str(path), "--encoder", ENCODER, "--recall", "0.95",
                                          "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    return path, vectors, json.loads(result.output), batches


def test_automatic_choice_beyond_the_limit_is_reranked_ivf_pq_tuned_on_held_out_queries(built):
    path, _, side, _ = built
    assert side["factory"] == "IVF1024,PQ8,RFlat" and not side["factory_given"]
    assert "HNSW would need" in side["choice"] and "re-ranked" in side["choice"]
    assert side["recall_target"] == 0.95 and side["recall_at_10"] >= 0.95, side
    assert set(side["search_params"]) == {"nprobe", "k_factor"}
    assert side["recall_queries"] == 1000 and side["train_vectors"] == N - 1000  # queries held out of training
    assert side["io_flags"] == "IO_FLAG_MMAP_IFC" and side["n"] == N
    with open_store(path, read_only=True) as store:
        assert json.loads(index_paths(store, ENCODER)[1].read_text()) == side


def test_built_in_batches_never_all_vectors_at_once(built):
    *_, batches = built
    # three passes: IVF-PQ codes, exact vectors into the file, exact ground truth for tuning
    assert max(batches) <= BATCH and sum(batches) == 3 * N


def test_memory_mapped_file_answers_as_the_searcher_does(built):
    path, vectors, side, _ = built
    store = open_store(path, read_only=True)
    index_path, _ = index_paths(store, ENCODER)
    mapped = faiss.read_index(str(index_path), faiss.IO_FLAG_MMAP_IFC)
    assert not faiss.downcast_index(mapped.refine_index).codes.is_owned  # exact vectors stay in the file
    queries, _ = SPACE.sample(200, seed=7)
    truth = faiss.knn(queries, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    params = factory.search_parameters(side["search_params"], 10)
    found = mapped.search(queries, 10, params=params)[1]
    assert recall_at(found, truth) >= 0.93  # fresh queries, not the tuning sample
    # the IVF lists alone can be mapped too (IO_FLAG_MMAP): same answers
    lists_mapped = faiss.read_index(str(index_path), faiss.IO_FLAG_MMAP)
    np.testing.assert_array_equal(lists_mapped.search(queries, 10, params=params)[1], found)
    searcher = Searcher(store, ENCODER)
    assert not faiss.downcast_index(searcher.index.refine_index).codes.is_owned
    rows = [[int(h.id[1:]) for h in searcher.search_vector(q, k=10).hits] for q in queries[:20]]
    np.testing.assert_array_equal(rows, found[:20])
    filtered = searcher.search_vector(queries[0], k=10, where="split = 'TEST'")
    assert len(filtered.hits) == 10 and {h.metadata["split"] for h in filtered.hits} == {"TEST"}
    store.close()


def test_new_rows_are_added_without_retraining_and_stay_mapped(built, tmp_path):
    path, *_ = built
    shutil.copytree(path, tmp_path / "s")
    new, _ = SPACE.sample(5, seed=99)
    with open_store(tmp_path / "s") as store:
        prov = store.encoder_info(ENCODER)
        prov = {"encoder": ENCODER, "dim": DIM, "weights": prov["weights"], "weights_sha256": prov["weights_sha256"]}
        store.add_videos([{"video_id": f"new{i}"} for i in range(5)])
        store.add_vectors(prov, [f"new{i}" for i in range(5)], new)
    with open_store(tmp_path / "s", read_only=True, write_derived=True) as store:  # as `embedstore index` refreshes
        index, side = load_index(store, ENCODER)
        assert index.ntotal == side["n"] == N + 5 and side["incremental_adds"] == 5
        assert not faiss.downcast_index(index.refine_index).codes.is_owned
        hit = Searcher(store, ENCODER).search_vector(new[2], k=1).hits[0]
    assert hit.id == "new2" and hit.score == pytest.approx(1.0, abs=1e-5)
