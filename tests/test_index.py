"""Index building: the size rule, ids = catalog rows, measured recall, atomic files, stale detection."""
from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from bench.vectors import LatentMixture
from embedstore.errors import BadInput, NotFound
from embedstore.index import Searcher, build, build_index, factory, load_index, tuning
from embedstore.index.factory import choose_factory
from embedstore.index.files import index_paths
from embedstore.index.tuning import exact_neighbours, recall_at
from embedstore.store import open_store

DIM = 32
PROV = {"encoder": "toy", "dim": DIM, "weights": "random-init", "weights_sha256": "random-init",
        "preprocessing": {"frames": 4}, "package_version": "test", "modalities": ["video"]}
SPACE = LatentMixture(DIM, centres=60, latent=8, seed=0)


def make_store(path, n: int, seed: int = 1):
    """A store of n videos (patients of 3, EF, split) with embedding-like toy vectors."""
    store = open_store(path, create=True)
    vectors, _ = SPACE.sample(n, seed)
    ids = [f"v{i:05d}" for i in range(n)]
    store.add_videos([{"video_id": v, "patient_id": f"p{i // 3}", "ef": float(10 + i % 70),
                       "split": ("TRAIN", "VAL", "TEST")[i % 3]} for i, v in enumerate(ids)])
    store.add_vectors(PROV, ids, vectors)
    return store, ids, vectors


@pytest.fixture()
def small(tmp_path):
    store, ids, vectors = make_store(tmp_path / "s", 300)
    yield store, ids, vectors
    store.close()


def test_size_rule_flat_then_hnsw_then_rabitq_then_ivf_pq():
    assert choose_factory(10_030, 512, 16 * 2**30)[0] == "Flat"
    assert choose_factory(60_000, 512, 16 * 2**30)[0] == "HNSW32_SQfp16"
    # 1M x 512: 4 sqrt(1e6) = 4,000 lists -> 4,096; file 1e6 x (2,048 + 64 + 24) B = 2.1 GB <= half of 16 GiB
    factory, why = choose_factory(1_000_000, 512, 16 * 2**30)
    assert factory == "IVF4096,RaBitQ" and "RaBitQ" in why
    # rows with gaps, or a centred index, cannot be memory-mapped by position: HNSW
    assert choose_factory(1_000_000, 512, 16 * 2**30, mappable=False)[0] == "HNSW32_SQfp16"
    # 3 GB: the RaBitQ file (2.1 GB) is over half, HNSW (1e6 x (1,024 + 281.6 + 64) B = 1.37 GB) is not
    assert choose_factory(1_000_000, 512, 3 * 10**9)[0] == "HNSW32_SQfp16"
    factory, why = choose_factory(100_000_000, 512, 16 * 2**30)
    assert factory.startswith("IVF") and factory.endswith(",PQ64"), factory
    assert "GB" in why
    assert choose_factory(100_000_000, 400, 2**30)[0].endswith(",PQ50")


def test_build_writes_index_and_sidecar_with_catalog_rows_as_ids(small):
    store, ids, vectors = small
    side = build_index(store, "toy", progress=False)
    index_path, sidecar_path = index_paths(store, "toy")
    assert index_path.exists() and json.loads(sidecar_path.read_text()) == side
    assert not list(store.indexes_dir.glob("*.tmp*"))
    assert side["factory"] == "Flat" and side["n"] == 300 and side["dim"] == DIM
    assert side["fingerprint"] == store.catalog.fingerprint("toy", "videos")
    assert side["recall_at_10"] == 1.0 and side["recall_queries"] == 300
    assert side["metric"].startswith("inner_product") and side["faiss_version"] == faiss.__version__
    index = faiss.read_index(str(index_path))
    rows = dict(store.catalog.embedding_map("toy", "videos"))
    np.testing.assert_array_equal(index.reconstruct(rows["v00123"]), vectors[123])


def test_hnsw_recall_measured_against_exact_search(small):
    store, ids, vectors = small
    side = build_index(store, "toy", factory="HNSW32", progress=False)
    assert side["factory"] == "HNSW32" and "efSearch" in side["search_params"]
    assert side["recall_at_10"] >= 0.95, side
    # fresh queries from the same distribution: the Searcher agrees with exact search
    queries, _ = SPACE.sample(50, seed=7)
    searcher = Searcher(store, "toy")
    rows = np.array([r for _, r in store.catalog.embedding_map("toy", "videos")])
    truth = exact_neighbours(store, "toy", "videos", rows, queries, 10)
    found = np.array([[rows[ids.index(h.id)] for h in searcher.search_vector(q, k=10).hits] for q in queries])
    assert recall_at(found, truth) >= 0.95


def test_ivf_factory_tunes_nprobe(small):
    store, *_ = small
    side = build_index(store, "toy", factory="IVF8,Flat", progress=False)
    assert "nprobe" in side["search_params"] and side["recall_at_10"] >= 0.95, side


def test_stale_index_gets_new_rows_incrementally(small):
    store, ids, vectors = small
    first = build_index(store, "toy", factory="HNSW32", progress=False)
    new, _ = SPACE.sample(5, seed=99)
    store.add_videos([{"video_id": f"new{i}", "patient_id": "pnew"} for i in range(5)])
    store.add_vectors(PROV, [f"new{i}" for i in range(5)], new)
    assert store.catalog.fingerprint("toy", "videos") != first["fingerprint"]
    index, side = load_index(store, "toy")
    assert side["n"] == index.ntotal == 305 and side["incremental_adds"] == 5
    assert side["fingerprint"] == store.catalog.fingerprint("toy", "videos") and side["created"] == first["created"]
    hit = Searcher(store, "toy").search_vector(new[3], k=1).hits[0]
    assert hit.id == "new3" and hit.score == pytest.approx(1.0, abs=1e-5)


def test_index_file_not_matching_its_sidecar_is_rebuilt(small):
    store, *_ = small
    build_index(store, "toy", progress=False)
    index_path, sidecar_path = index_paths(store, "toy")
    side = json.loads(sidecar_path.read_text())
    sidecar_path.write_text(json.dumps({**side, "n": 299, "created": "then"}))  # as if the index write was cut short
    index, fresh = load_index(store, "toy")
    assert index.ntotal == fresh["n"] == 300 and fresh["created"] != "then"


def test_build_errors_are_one_line(small, tmp_path):
    store, *_ = small
    with pytest.raises(BadInput, match="not a FAISS factory string") as bad:
        build_index(store, "toy", factory="Nonsense42", progress=False)
    with pytest.raises(NotFound, match="embedstore encode") as unknown:
        build_index(store, "nope", progress=False)
    with pytest.raises(NotFound, match=f"embedstore index --store {store.path} --encoder toy") as missing:
        load_index(store, "toy")
    with pytest.raises(BadInput, match="target must be one of") as target:
        build_index(store, "toy", target="frames", progress=False)
    with pytest.raises(BadInput, match="no toy reports vectors") as empty:
        build_index(store, "toy", target="reports", progress=False)
    for exc in (bad, unknown, missing, target, empty):
        assert "\n" not in str(exc.value)


def test_tuning_picks_the_smallest_setting_that_reaches_the_target_on_held_out_vectors(tmp_path):
    """The curve is measured with each query's own vector left out; the chosen efSearch is the first
    point of the grid at the target, and its recall is what an independent count gives."""
    store, ids, vectors = make_store(tmp_path / "s", 3000)
    with store:
        side = build_index(store, "toy", factory="HNSW4", progress=False, recall_target=0.99)
        curve = side["curve"]
        assert [p["efSearch"] for p in curve] == list(tuning.EF_SEARCH[: len(curve)])
        first = next(i for i, p in enumerate(curve) if p["recall_at_10"] >= 0.99)
        assert first > 0 and side["search_params"] == {"efSearch": curve[first]["efSearch"]}
        assert all(p["recall_at_10"] < 0.99 for p in curve[:first])
        index, _ = load_index(store, "toy")
        rows = np.array([r for _, r in store.catalog.embedding_map("toy", "videos")])
        sample = np.sort(np.random.default_rng(tuning.SEED).choice(rows, size=1000, replace=False))
        queries = store.vectors.read_rows("toy", "videos", sample)
        everything = store.vectors.read_rows("toy", "videos", np.sort(rows))
        scores = queries @ everything.T
        scores[np.arange(len(sample)), np.searchsorted(np.sort(rows), sample)] = -np.inf  # leave itself out
        truth = np.sort(rows)[np.argsort(-scores, axis=1)[:, :10]]
        _, found = index.search(queries, 11, params=faiss.SearchParametersHNSW(efSearch=curve[first]["efSearch"]))
        found = np.stack([f[f != s][:10] for f, s in zip(found, sample)])
        assert abs(recall_at(found, truth) - curve[first]["recall_at_10"]) < 0.005  # float ties at the 10th place


def test_index_recall_moves_along_the_curve_without_a_rebuild(tmp_path):
    from typer.testing import CliRunner

    from embedstore.cli import app

    store, _, _ = make_store(tmp_path / "s", 3000)
    with store:
        first = build_index(store, "toy", factory="HNSW8", progress=False, recall_target=0.9)
        index_path, _ = index_paths(store, "toy")
    before = index_path.stat()
    result = CliRunner().invoke(app, ["index", "--store", str(tmp_path / "s"), "--encoder", "toy", "--factory", "HNSW8",
                                      "--recall", "0.99", "--json"])
    assert result.exit_code == 0, result.output
    side = json.loads(result.output)
    after = index_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # the index file was not rewritten
    expected = next(p for p in first["curve"] if p["recall_at_10"] >= 0.99)
    assert side["search_params"] == {"efSearch": expected["efSearch"]} and side["recall_at_10"] == expected["recall_at_10"]
    assert side["search_params"]["efSearch"] > first["search_params"]["efSearch"] and side["retuned"]


def test_automatic_hnsw_over_fp16_serves_tuning_retuning_batches_filters_and_appends(tmp_path, monkeypatch):
    """The automatic in-RAM choice (HNSW over fp16 copies) through every path an index goes through."""
    from embedstore.index import search as search_module

    store, ids, vectors = make_store(tmp_path / "s", 3000)
    with store:
        side = build_index(store, "toy", factory=factory.HNSW_FACTORY, progress=False)
        assert side["factory"] == "HNSW32_SQfp16" and "efSearch" in side["search_params"] and side["curve"]
        assert side["recall_at_10"] >= 0.95, side
        index_file = index_paths(store, "toy")[0].stat()
        retuned = build_index(store, "toy", factory=factory.HNSW_FACTORY, progress=False, recall_target=0.99)
        assert retuned["retuned"] and index_paths(store, "toy")[0].stat().st_mtime_ns == index_file.st_mtime_ns
        searcher = Searcher(store, "toy")
        rows = np.array([r for _, r in store.catalog.embedding_map("toy", "videos")])
        queries, _ = SPACE.sample(50, seed=7)
        loop = [searcher.search_vector(q, k=10).hits for q in queries]
        found = np.array([[rows[ids.index(h.id)] for h in hits] for hits in loop])
        assert recall_at(found, exact_neighbours(store, "toy", "videos", rows, queries, 10)) >= 0.95
        assert [[h.id for h in r.hits] for r in searcher.search_many(queries, k=10)] == [[h.id for h in hits] for hits in loop]
        test_rows = np.array([i for i in range(3000) if i % 3 == 2])  # split TEST, 1,000 rows
        truth = test_rows[np.argsort(-(queries @ vectors[test_rows].T), axis=1)[:, :10]]
        for subset_max in (3000, 0):  # the exact scan (from the fp16 copies), then the index with an id selector
            monkeypatch.setattr(search_module, "EXACT_SUBSET_MAX", subset_max)
            hits = [searcher.search_vector(q, k=10, where="split = 'TEST'").hits for q in queries]
            assert all(len(h) == 10 for h in hits)
            assert recall_at(np.array([[rows[ids.index(x.id)] for x in h] for h in hits]), truth) >= 0.95
        new, _ = SPACE.sample(5, seed=99)
        store.add_videos([{"video_id": f"new{i}", "patient_id": "pnew"} for i in range(5)])
        store.add_vectors(PROV, [f"new{i}" for i in range(5)], new)
        index, appended = load_index(store, "toy")
        assert appended["incremental_adds"] == 5 and index.ntotal == 3005 and appended["factory"] == "HNSW32_SQfp16"
        hit = Searcher(store, "toy").search_vector(new[3], k=1).hits[0]
        assert hit.id == "new3" and hit.score == pytest.approx(1.0, abs=1e-3)  # fp16 rounding: ~1e-4


def test_tuning_searches_vectors_the_index_does_not_hold_yet(tmp_path, monkeypatch):
    """The tuning queries are fresh to the index (a graph that holds a query links it to its neighbours, so
    stored vectors overstate recall): tune runs on all rows but its queries, which join the index after."""
    seen = {}
    real_tune = build.tune

    def spy(index, store, encoder, target, rows, recall_target, mean, held_out):
        seen["ntotal"], seen["held_out"] = index.ntotal, held_out
        return real_tune(index, store, encoder, target, rows, recall_target, mean, held_out)

    monkeypatch.setattr(build, "tune", spy)
    store, _, vectors = make_store(tmp_path / "s", 3000)
    with store:
        side = build_index(store, "toy", factory="HNSW8", progress=False)
        index, _ = load_index(store, "toy")
    assert len(seen["held_out"]) == 300 and seen["ntotal"] == 3000 - 300 and side["recall_queries"] == 300
    assert index.ntotal == side["n"] == 3000
    held = seen["held_out"]
    np.testing.assert_array_equal(index.search(vectors[held], 1)[1][:, 0], held)  # they are in the index now
