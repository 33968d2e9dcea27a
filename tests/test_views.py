"""`embedstore view`: the stored coordinates, the PNG and the self-contained HTML, determinism, read-only loading."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from embedstore.analysis import compute_view, figure, load_view, make_view
from embedstore.analysis.views import META_KEY, view_path
from embedstore.cli import app
from embedstore.errors import BadInput, NotFound
from embedstore.store import open_store

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DIM = 16


def provenance() -> dict:
    return {"encoder": "synth", "dim": DIM, "weights": "random-init", "weights_sha256": "random-init",
            "preprocessing": {}, "package_version": "test", "modalities": ["video"]}


@pytest.fixture(scope="module")
def store_path(ingested_store, tmp_path_factory) -> Path:
    """The phantom store with synthetic vectors that carry each patient (no model needed)."""
    path = tmp_path_factory.mktemp("views") / "store"
    shutil.copytree(ingested_store, path)
    rng = np.random.default_rng(0)
    with open_store(path) as store:
        rows = store.videos()
        centre = {p: rng.normal(size=DIM) for p in sorted({r["patient_id"] for r in rows})}
        vectors = np.array([centre[r["patient_id"]] + rng.normal(0, 0.3, DIM) for r in rows])
        store.add_vectors(provenance(), [r["video_id"] for r in rows], vectors)
    return path


def test_pca_view_writes_table_png_and_html(store_path, tmp_path):
    with open_store(store_path) as store:  # read-write: computing must not need a read-only store
        out = make_view(store, "synth", "pca", color="split", png=tmp_path / "map.png", html=tmp_path / "map.html")
        ids, _ = store.all_vectors("synth")
        fingerprint = store.catalog.fingerprint("synth", "videos")
        table = pq.read_table(view_path(store, "synth", "pca"))
    assert table.column_names == ["id", "x", "y"]
    assert table.num_rows == len(ids) == 60 and table.column("id").to_pylist() == ids
    xy = np.column_stack([table.column("x").to_numpy(), table.column("y").to_numpy()])
    assert np.isfinite(xy).all() and xy.std(axis=0).min() > 0
    meta = json.loads(table.schema.metadata[META_KEY])
    assert meta["method"] == "pca" and meta["params"] == {"n_components": 2} and meta["seed"] == 0
    assert meta["fingerprint"] == fingerprint and meta["created"] and meta["random_init"] is True
    png = Path(out["png"]).read_bytes()
    assert png.startswith(PNG_MAGIC) and 5_000 < len(png) < 200_000
    html = Path(out["html"]).read_text()
    assert all(i in html for i in ids)
    assert "<script>" in html and "<canvas" in html
    assert not re.search(r"https?://", html), "the page must open offline: no CDN or remote URL"
    assert '"color": "split"' in html


def test_umap_is_deterministic_for_a_seed(store_path):
    with open_store(store_path) as store:
        first = compute_view(store, "synth", "umap", seed=0, recompute=True)
        again = compute_view(store, "synth", "umap", seed=0, recompute=True)
        reused = compute_view(store, "synth", "umap", seed=0)
        other = compute_view(store, "synth", "umap", seed=1)
    assert first["params"]["metric"] == "cosine" and first["seed"] == 0
    assert first["x"] == again["x"] and first["y"] == again["y"]
    assert reused["created"] == again["created"]  # same method, parameters, seed and vectors: not recomputed
    assert other["x"] != first["x"] and other["seed"] == 1
    assert np.isfinite(np.array([first["x"], first["y"]])).all()


def test_load_view_on_a_read_only_store(store_path):
    with open_store(store_path) as store:
        compute_view(store, "synth", "pca")
    with open_store(store_path, read_only=True) as store:
        view = load_view(store, "synth", "pca")
        ids, _ = store.all_vectors("synth")
        rows = {r["video_id"]: r for r in store.videos()}
        with pytest.raises(NotFound, match="embedstore view"):
            load_view(store, "nothing", "pca")
    assert view["ids"] == ids and len(view["x"]) == len(view["y"]) == 60 and view["stale"] is False
    assert view["labels"]["ef"] == [rows[i]["ef"] for i in ids]
    assert view["labels"]["patient_id"] == [rows[i]["patient_id"] for i in ids]
    json.dumps(view, allow_nan=False)  # what the REST route returns


def test_view_goes_stale_when_vectors_are_added(store_path, tmp_path):
    path = tmp_path / "store"
    shutil.copytree(store_path, path)
    with open_store(path) as store:
        compute_view(store, "synth", "pca")
        store.add_videos([{"video_id": "extra", "ef": 40.0}])
        store.add_vectors(provenance(), ["extra"], np.ones((1, DIM)))
        assert load_view(store, "synth", "pca")["stale"] is True
        assert compute_view(store, "synth", "pca")["n"] == 61  # recomputed, no longer stale


def test_colours_numeric_categorical_and_unknown(store_path):
    with open_store(store_path, read_only=True) as store:
        view = load_view(store, "synth", "pca")
        with pytest.raises(BadInput, match="method"):
            compute_view(store, "synth", "tsne")
    assert len(figure(view, "ef").axes) == 2  # the scatter and its colour bar
    legend = figure(view, "patient").axes[0].get_legend()
    assert len(legend.get_texts()) == 20
    assert len(figure(view, "cluster", values=[i % 3 for i in range(60)]).axes) == 2
    with pytest.raises(BadInput, match="cannot colour"):
        figure(view, "no_such_column")


def test_cli_view(store_path, tmp_path):
    result = CliRunner().invoke(app, ["view", "--store", str(store_path), "--encoder", "synth", "--method", "pca",
                                      "--color", "n_frames", "--out", str(tmp_path / "m.png"),
                                      "--html", str(tmp_path / "m.html"), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["n"] == 60 and Path(out["png"]).read_bytes().startswith(PNG_MAGIC)
    assert '"n_frames": [32' in Path(out["html"]).read_text()
    assert "random-init" in result.stderr
    bad = CliRunner().invoke(app, ["view", "--store", str(store_path), "--encoder", "synth", "--color", "nope"])
    assert bad.exit_code == 2 and "cannot colour" in bad.stderr
