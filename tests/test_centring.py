"""`embedstore index --center`: the set's mean removed before indexing and from every query.

Vectors here share one large common component (as raw R3D outputs do), so raw cosine ranks by
tiny residuals and the centred ranking differs; every answer is checked by brute force.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from embedstore.cli import app
from embedstore.index.build import build_index, read_sidecar
from embedstore.index.search import Searcher
from embedstore.store import open_store

DIM = 16
PROV = {"encoder": "synth", "dim": DIM, "weights": "random-init", "weights_sha256": "random-init",
        "preprocessing": {}, "package_version": "test", "modalities": ["video"]}


def vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    common = np.random.default_rng(0).normal(size=DIM)
    x = 20 * common + rng.normal(size=(n, DIM)) * rng.uniform(0.2, 3.0, size=(n, 1))  # residual size varies
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute(stored: np.ndarray, mean: np.ndarray, query: np.ndarray, k: int, skip: int | None = None) -> list[int]:
    c = stored - mean
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    q = (query - mean) / np.linalg.norm(query - mean)
    order = [int(i) for i in np.argsort(-(c @ q), kind="stable") if i != skip]
    return order[:k]


@pytest.fixture()
def store(tmp_path):
    path = tmp_path / "store"
    with open_store(path, create=True) as st:
        st.add_videos([{"video_id": f"v{i:03d}", "patient_id": f"p{i // 2}"} for i in range(200)])
        st.add_vectors(PROV, [f"v{i:03d}" for i in range(200)], vectors(200, 1))
    return path


@pytest.mark.parametrize("factory", [None, "HNSW32"])
def test_centred_index_answers_as_brute_force_on_centred_vectors(store, factory):
    X = vectors(200, 1)
    with open_store(store, read_only=True) as st:
        side = build_index(st, "synth", factory=factory, progress=False, center=True)
        mean = np.asarray(side["centre"], dtype=np.float32)
        np.testing.assert_allclose(mean, X.mean(axis=0), atol=1e-6)
        assert side["recall_at_10"] >= 0.9
        searcher = Searcher(st, "synth")
        by_id = searcher.search(id="v007", k=10)
        by_vector = searcher.search(vector=X[7], k=11)
    want = brute(X, mean, X[7], 10, skip=7)
    got = [int(h.id[1:]) for h in by_id.hits]
    assert len(set(got) & set(want)) >= (10 if factory is None else 9)
    assert [int(h.id[1:]) for h in by_vector.hits][1:] == got and by_vector.hits[0].id == "v007"
    raw = [int(i) for i in np.argsort(-(X @ X[7]))[1:11]]
    assert set(raw) != set(want)  # centring changes who the neighbours are
    assert by_id.provenance["index"]["centred"] is True
    c = (X[want[0]] - mean) / np.linalg.norm(X[want[0]] - mean)
    q = (X[7] - mean) / np.linalg.norm(X[7] - mean)
    assert by_id.hits[0].score == pytest.approx(float(c @ q), abs=1e-5)  # scores are centred cosines


def test_new_vectors_are_appended_centred_with_the_recorded_mean(store):
    with open_store(store, read_only=True) as st:
        mean = np.asarray(build_index(st, "synth", progress=False, center=True)["centre"], dtype=np.float32)
    extra = vectors(20, 2)
    with open_store(store) as st:
        st.add_videos([{"video_id": f"w{i:03d}", "patient_id": f"q{i}"} for i in range(20)])
        st.add_vectors(PROV, [f"w{i:03d}" for i in range(20)], extra)
    with open_store(store, read_only=True, write_derived=True) as st:  # as `index` refreshes a stale index
        result = Searcher(st, "synth").search(vector=extra[3], k=5)
        side = read_sidecar(st, "synth")
    assert side["incremental_adds"] == 20 and side["centre"] == pytest.approx(mean.tolist())
    everything = np.concatenate([vectors(200, 1), extra])
    names = [f"v{i:03d}" for i in range(200)] + [f"w{i:03d}" for i in range(20)]
    assert [h.id for h in result.hits] == [names[i] for i in brute(everything, mean, extra[3], 5)]


def test_cli_index_center(store):
    out = CliRunner().invoke(app, ["index", "--store", str(store), "--encoder", "synth", "--center", "-q"])
    assert out.exit_code == 0, out.output
    assert "index synth.videos (centred): Flat" in out.stdout
    raw = CliRunner().invoke(app, ["index", "--store", str(store), "--encoder", "synth", "--json", "-q"])
    assert json.loads(raw.stdout)["centre"] is None
