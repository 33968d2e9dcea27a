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
    # a batch and a single query ask for 10 with the sidecar's re-rank: the raw index's answers, as ids
    batch = [result.ids for result in searcher.search_many(vectors=queries[:20], k=10)]
    single = [searcher.search_vector(q, k=10).ids for q in queries[:20]]
    assert batch == single == [[f"v{r:07d}" for r in row] for row in found[:20].tolist()]
    # a Searcher whose results carry the EF estimate serves it from the hits' search: 50 neighbours, the base
    # handing over max(10 x k_factor, 50) candidates to re-rank
    k_factor = side["search_params"]["k_factor"]
    wide = factory.search_parameters({**side["search_params"], "k_factor": max(1.0, 10 * k_factor / 50)}, 50)
    eager = Searcher(store, ENCODER, with_estimate=True)
    rows = [[int(h.id[1:]) for h in eager.search_vector(q, k=10).hits] for q in queries[:20]]
    np.testing.assert_array_equal(rows, mapped.search(queries[:20], 50, params=wide)[1][:, :10])
    assert recall_at(np.array(rows), truth[:20]) >= recall_at(found[:20], truth[:20])  # more candidates, never fewer
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


@pytest.fixture(scope="module")
def rabitq(built, tmp_path_factory) -> tuple[Path, np.ndarray, dict]:
    """The same 50,000 vectors indexed by the automatic rule with RaBitQ's threshold lowered below them."""
    path, vectors, *_ = built
    copy = tmp_path_factory.mktemp("rabitq") / "store"
    shutil.copytree(path, copy)
    shutil.rmtree(copy / "indexes")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMBEDSTORE_INDEX_MEMORY", "1G")
        mp.setattr(factory, "RABITQ_MIN", 40_000)
        result = CliRunner().invoke(app, ["index", "--store", str(copy), "--encoder", ENCODER, "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    return copy, vectors, json.loads(result.output)


def test_automatic_rabitq_is_tuned_to_its_fewest_bytes_and_retuned_without_a_rebuild(rabitq):
    path, _, side = rabitq
    assert side["factory"] == "IVF1024,RaBitQ,RFlat" and "RaBitQ" in side["choice"]  # 4 sqrt(50,000) = 894 -> 1,024
    assert side["recall_at_10"] >= 0.95 and side["io_flags"] == "IO_FLAG_MMAP_IFC"
    curve = side["curve"]
    assert {p["k_factor"] for p in curve} == set(tuning.K_FACTORS) and all(p["nprobe"] in tuning.NPROBE for p in curve)
    # bytes a query reads: nprobe lists of 50,000 / 1,024 codes of 16 B (64 bits + two float factors), then
    # max(10 x k_factor, 50) exact rows of 64 x 4 B (a single search also finds the EF estimate's 50);
    # the point reading the fewest while reaching 0.95 is kept
    for p in curve:
        assert p["bytes_per_query"] == int(p["nprobe"] * 50_000 / 1024 * 16 + max(10 * p["k_factor"], 50) * 256)
    cheapest = min((p for p in curve if p["recall_at_10"] >= 0.95), key=lambda p: p["bytes_per_query"])
    assert side["search_params"] == {"nprobe": cheapest["nprobe"], "k_factor": cheapest["k_factor"]}
    with open_store(path, read_only=True, write_derived=True) as store:
        index_path, _ = index_paths(store, ENCODER)
        before = index_path.stat()
    result = CliRunner().invoke(app, ["index", "--store", str(path), "--encoder", ENCODER, "--recall", "0.99",
                                      "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    retuned = json.loads(result.output)
    after = index_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns) and "retuned" in retuned
    assert retuned["recall_at_10"] >= 0.99 and retuned["search_params"] != side["search_params"]


def test_rabitq_searcher_reads_ids_from_the_file_and_keeps_filtered_recall(rabitq, monkeypatch):
    from embedstore.index import search as search_module

    path, vectors, _ = rabitq
    store = open_store(path, read_only=True)
    searcher = Searcher(store, ENCODER)
    monkeypatch.setattr(store.vectors, "read_rows", lambda *a, **k: pytest.fail("an id query must not read vectors.h5"))
    assert searcher.search_id("v0000007", k=1, exclude_self=False).hits[0].id == "v0000007"
    monkeypatch.undo()
    test_rows = np.array(sorted(int(r[0][1:]) for r in store.catalog.query("SELECT video_id FROM videos WHERE split = 'TEST'")))
    queries, _ = SPACE.sample(100, seed=11)
    truth = faiss.knn(queries, vectors[test_rows], 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    for subset_max in (search_module.EXACT_SUBSET_MAX, 1000):  # the exact scan of the rows, then the selector
        monkeypatch.setattr(search_module, "EXACT_SUBSET_MAX", subset_max)
        found = [[int(h.id[1:]) for h in searcher.search_vector(q, k=10, where="split = 'TEST'").hits] for q in queries]
        assert all(len(f) == 10 for f in found)
        assert recall_at(np.array(found), test_rows[truth]) >= (1.0 if subset_max > len(test_rows) else 0.95)
    store.close()


def test_rabitq_hits_and_ef_estimate_come_from_one_search(rabitq):
    from tests.test_search import CountingIndex

    path, vectors, side = rabitq
    with open_store(path, read_only=True) as store:
        searcher = Searcher(store, ENCODER, with_estimate=True)
        searcher.index = counting = CountingIndex(searcher.index)
        result = searcher.search_vector(vectors[123] * 2, k=10)
        estimate = result.ef_estimate
        assert counting.searches == 1 and estimate["n"] == 50 and estimate["k"] == 50
        # the 50 neighbours of one search for 50 whose base hands over max(10 x k_factor, 50) candidates
        params = {**side["search_params"], "k_factor": max(1.0, 10 * side["search_params"]["k_factor"] / 50)}
        rows = counting.inner.search(vectors[123:124], 50, params=factory.search_parameters(params, 50))[1][0]
        efs = [v["ef"] for v in store.videos([f"v{r:07d}" for r in rows])]
        assert estimate["mean"] == round(float(np.mean(efs)), 2)
