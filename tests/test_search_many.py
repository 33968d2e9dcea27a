"""Searcher.search_many: one FAISS call per batch, the same answers as a loop over search_vector / search_id."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedstore.errors import BadInput, NotFound
from embedstore.index import Searcher, build_index
from embedstore.index import search as search_module
from embedstore.store import open_store
from tests.test_index import PROV, SPACE, make_store

N = 900


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """900 toy videos: 'toy' with a Flat index, 'toy2' (same vectors) with HNSW32."""
    path = tmp_path_factory.mktemp("many") / "store"
    store, ids, vectors = make_store(path, N)
    store.add_vectors({**PROV, "encoder": "toy2"}, ids, vectors)
    build_index(store, "toy", progress=False)
    build_index(store, "toy2", factory="HNSW32", progress=False)
    store.close()
    return path


@pytest.fixture()
def ro(toy):
    with open_store(toy, read_only=True) as store:
        yield store


def same(batch, loop) -> None:
    assert len(batch) == len(loop)
    for b, s in zip(batch, loop):
        assert [h.id for h in b.hits] == [h.id for h in s.hits]
        assert [h.metadata for h in b.hits] == [h.metadata for h in s.hits]
        np.testing.assert_allclose([h.score for h in b.hits], [h.score for h in s.hits], atol=1e-5)
        assert b.filtered_out == s.filtered_out and b.ef_estimate is None  # the estimate needs a wider search: search
        assert b.query == s.query


@pytest.mark.parametrize("encoder", ["toy", "toy2"])
@pytest.mark.parametrize("where", [None, "split = 'TEST' AND ef < 40"])
def test_ids_equal_a_loop_over_search_id(ro, encoder, where):
    searcher = Searcher(ro, encoder)
    ids = [f"v{i:05d}" for i in range(0, N, 37)]
    for exclude_self in (True, False):
        batch = searcher.search_many(ids=ids, k=7, where=where, exclude_self=exclude_self)
        same(batch, [searcher.search_id(i, k=7, where=where, exclude_self=exclude_self) for i in ids])
    assert all(i not in [h.id for h in r.hits] for i, r in zip(ids, searcher.search_many(ids=ids, k=7)))


@pytest.mark.parametrize("encoder", ["toy", "toy2"])
def test_vectors_equal_a_loop_over_search_vector(ro, encoder):
    searcher = Searcher(ro, encoder)
    queries, _ = SPACE.sample(25, seed=9)
    raw = queries * 3.0  # not unit: normalised like a single query
    same(searcher.search_many(vectors=raw, k=12), [searcher.search_vector(q, k=12) for q in raw])
    where = "ef >= 50"
    same(searcher.search_many(vectors=raw, k=12, where=where), [searcher.search_vector(q, k=12, where=where) for q in raw])


def test_filter_through_the_faiss_selector_equals_the_loop(ro, monkeypatch):
    monkeypatch.setattr(search_module, "EXACT_SUBSET_MAX", 0)  # force the id-selector path of both
    searcher = Searcher(ro, "toy")
    ids = [f"v{i:05d}" for i in range(1, N, 53)]
    where = "split = 'VAL'"
    same(searcher.search_many(ids=ids, k=9, where=where), [searcher.search_id(i, k=9, where=where) for i in ids])


def test_one_faiss_call_per_batch(ro, monkeypatch):
    searcher = Searcher(ro, "toy")
    calls = []
    real = searcher.index.search
    monkeypatch.setattr(searcher, "index", type("Spy", (), {
        "search": lambda self, x, n, params=None: calls.append(len(x)) or real(x, n, params=params),
        "__getattr__": lambda self, name: getattr(real.__self__, name)})())
    searcher.search_many(ids=[f"v{i:05d}" for i in range(64)], k=5)
    assert calls == [64]


def test_arrays_form_pads_and_excludes(ro):
    searcher = Searcher(ro, "toy")
    vectors, rows = searcher.vectors_of(["v00003", "v00004"])
    scores, found = searcher.neighbours_many(vectors, 4, exclude_rows=np.array([rows[0], -1]))
    assert found.shape == (2, 4) and rows[0] not in found[0] and found[1, 0] == rows[1]
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_bad_batches_are_refused(ro):
    searcher = Searcher(ro, "toy")
    with pytest.raises(BadInput, match="either query vectors or stored ids"):
        searcher.search_many(k=3)
    with pytest.raises(NotFound, match="nope"):
        searcher.search_many(ids=["v00001", "nope"], k=3)
    with pytest.raises(BadInput, match="dimension"):
        searcher.search_many(vectors=np.ones((2, 3)), k=3)
    with pytest.raises(BadInput, match="k must be a positive integer"):
        searcher.search_many(ids=["v00001"], k=0)
    assert searcher.search_many(ids=[], k=3) == []


def test_rest_batch_agrees_with_the_cli_and_is_bounded(toy, tmp_path):
    import httpx
    from typer.testing import CliRunner

    from embedstore.cli import app as cli
    from embedstore.service.app import create_app
    from embedstore.service.schemas import SearchResponse
    from embedstore.service.settings import Settings
    from tests.servers import serving

    ids = ["v00001", "v00400", "v00777"]
    with serving(create_app(toy, Settings(max_batch=3))) as url, httpx.Client(base_url=url, timeout=60) as client:
        body = {"encoder": "toy", "k": 4, "where": "split != 'TEST'", "queries": {"video_ids": ids}}
        rest = client.post("/search/batch", json=body)
        assert rest.status_code == 200, rest.text
        searches = rest.json()["searches"]
        vectors = [[0.1] * 32, [0.2] * 16 + [0.0] * 16]
        by_vector = client.post("/search/batch", json={"encoder": "toy", "k": 2, "queries": {"vectors": vectors}}).json()
        over = client.post("/search/batch", json={**body, "queries": {"video_ids": ids + ["v00002"]}})
        both = client.post("/search/batch", json={**body, "queries": {"video_ids": ids, "vectors": vectors}})
        unknown = client.post("/search/batch", json={**body, "queries": {"video_ids": ["nope"]}})
    out = CliRunner().invoke(cli, ["search-batch", "--store", str(toy), "-e", "toy", "--ids", ",".join(ids), "-k", "4",
                                   "--where", "split != 'TEST'", "--json"])
    assert out.exit_code == 0, out.output
    from_cli = [SearchResponse.body(r) for r in json.loads(out.stdout)]
    assert [[h["id"] for h in s["results"]] for s in searches] == [[h["id"] for h in s["results"]] for s in from_cli]
    assert [s["query"]["id"] for s in searches] == ids and all(len(s["results"]) == 4 for s in searches)
    assert [len(s["results"]) for s in by_vector["searches"]] == [2, 2]
    assert over.status_code == 400 and "limit of 3" in over.json()["error"]["message"]
    assert both.status_code == 422 and unknown.status_code == 404
