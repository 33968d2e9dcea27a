"""Study vectors (EchoPrime sections), study search (CLI and REST agree) and prediction by retrieval
(own store and EchoPrime's candidate bank), with hand-computed values.

No model runs here: the video vectors are written directly under an `echoprime` random-init provenance
(small dims), views are set through the catalog (the phantom's three videos per study labelled A4C,
A2C, Parasternal_Long), and the section weights are a MIL_weights.csv the tests write.
"""
from __future__ import annotations

import csv
import json
import math
import pickle
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from embedstore.cli import app as cli
from embedstore.encoders.views import VIEWS
from embedstore.errors import BadInput, NotFound, WeightsNotFound
from embedstore.index.build import build_index
from embedstore.index.predict import open_bank, predict, top_k
from embedstore.index.studies import SECTIONS, build_study_vectors, find_mil_weights
from embedstore.service.app import create_app
from embedstore.service.settings import Settings
from embedstore.store import open_store
from tests.servers import serving
from tests.test_browser import tab  # noqa: F401 (a fixture: headless Chromium)

DIM = 8
PROV = {"encoder": "echoprime", "dim": DIM, "weights": "random-init", "weights_sha256": "random-init",
        "preprocessing": {}, "package_version": "0.1.0", "modalities": ["video"]}
PHANTOM_VIEWS = ("A4C", "A2C", "Parasternal_Long")


def write_mil(path: Path) -> Path:
    """Left Ventricle: A2C 1, A4C 0.5, Parasternal_Long 0.25; Mitral Valve: every view 1; Aortic Valve: A5C only;
    every other section 0 (so it gets no vectors)."""
    weights = {s: {v: 0.0 for v in VIEWS} for s in SECTIONS}
    weights["Left Ventricle"].update(A2C=1.0, A4C=0.5, Parasternal_Long=0.25)
    weights["Mitral Valve"] = {v: 1.0 for v in VIEWS}
    weights["Aortic Valve"]["A5C"] = 1.0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["Section", *VIEWS])
        out.writerows([[s, *(weights[s][v] for v in VIEWS)] for s in SECTIONS])
    return path


def unit(*values: float) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[: len(values)] = values
    return v / np.linalg.norm(v)


def test_section_vectors_hand_computed(tmp_path):
    mil = write_mil(tmp_path / "EchoPrime" / "assets" / "MIL_weights.csv")
    with open_store(tmp_path / "s", create=True) as st:
        st.add_videos([{"video_id": "a", "study_id": "S1", "patient_id": "P1"},
                       {"video_id": "b", "study_id": "S1", "patient_id": "P1"},
                       {"video_id": "c", "study_id": "S1", "patient_id": "P1"},
                       {"video_id": "d", "study_id": "S1", "patient_id": "P1"},
                       {"video_id": "e", "study_id": "S2", "patient_id": "P2"}])
        st.add_vectors(PROV, list("abcde"), np.stack([unit(1), unit(0, 1), unit(0, 0, 1), unit(0, 0, 0, 1), unit(1, 1)]))
        st.catalog.set_views([("a", "A2C", 0.9), ("b", "A4C", 0.8), ("c", "Parasternal_Long", 0.7), ("e", "A4C", 0.6)])
        summary = build_study_vectors(st, "echoprime", tmp_path / "EchoPrime")  # the checkout folder
        ids, vectors = st.all_vectors("echoprime", "studies")
        sections = dict(st.catalog.query("SELECT item_id, n_videos FROM study_sections"))
    assert summary.studies == 2 and summary.added == 4 and summary.mil_weights == mil.name
    assert summary.left_out == {"no view (run `embedstore views`)": 1}  # video d
    got = dict(zip(ids, vectors))
    assert sorted(got) == ["S1/Left Ventricle", "S1/Mitral Valve", "S2/Left Ventricle", "S2/Mitral Valve"]
    # (1*e0 + 0.5*e1 + 0.25*e2) / sqrt(1 + 0.25 + 0.0625)
    np.testing.assert_allclose(got["S1/Left Ventricle"][:4], np.array([1, 0.5, 0.25, 0]) / math.sqrt(1.3125), atol=1e-6)
    np.testing.assert_allclose(got["S1/Mitral Valve"][:4], np.array([1, 1, 1, 0]) / math.sqrt(3), atol=1e-6)
    np.testing.assert_allclose(got["S2/Left Ventricle"][:4], np.array([1, 1, 0, 0]) / math.sqrt(2), atol=1e-6)
    assert sections["S1/Left Ventricle"] == 3
    with open_store(tmp_path / "s") as st:
        again = build_study_vectors(st, "echoprime", mil)
    assert again.added == 0 and again.already == 4


def test_missing_and_wrong_section_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDSTORE_WEIGHTS", str(tmp_path / "w"))
    with pytest.raises(WeightsNotFound) as err:
        find_mil_weights()
    message = str(err.value)
    assert "\n" not in message and "MIL_weights.csv" in message and str(tmp_path / "w" / "echoprime") in message
    bad = tmp_path / "MIL_weights.csv"
    bad.write_text("Section,A2C\nLeft Ventricle,1\n")
    from embedstore.index.studies import load_mil_weights

    with pytest.raises(BadInput, match="expected columns Section, A2C, A3C"):
        load_mil_weights(bad)


# -- a phantom store: views labelled, study vectors, index, search, predict, REST ----------------------
@pytest.fixture(scope="module")
def study_store(ingested_store, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("studies") / "store"
    shutil.copytree(ingested_store, path)
    mil = write_mil(tmp_path_factory.mktemp("mil") / "MIL_weights.csv")
    rng = np.random.default_rng(2)
    with open_store(path) as st:
        rows = st.catalog.query("SELECT video_id, study_id FROM videos ORDER BY study_id, video_id")
        views, seen = [], {}
        for video_id, study_id in rows:
            n = seen[study_id] = seen.get(study_id, -1) + 1
            views.append((video_id, PHANTOM_VIEWS[n % 3], 0.9))
        st.catalog.set_views(views)
        st.add_vectors(PROV, [r[0] for r in rows], rng.normal(size=(len(rows), DIM)).astype(np.float32))
        build_study_vectors(st, "echoprime", mil)
    with open_store(path, read_only=True) as st:
        build_index(st, "echoprime", "studies", progress=False)
    return path


def cli_json(*args) -> dict:
    out = CliRunner().invoke(cli, [str(a) for a in args] + ["--json"])
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


def test_phantom_has_several_views_per_study_and_where_view_filters(study_store):
    with open_store(study_store, read_only=True) as st:
        per_study = st.catalog.query("SELECT study_id, count(DISTINCT view) FROM videos GROUP BY 1")
        video = st.catalog.query("SELECT video_id FROM videos WHERE view = 'A2C' ORDER BY 1 LIMIT 1")[0][0]
    assert all(n == 3 for _, n in per_study) and len(per_study) == 20
    build = CliRunner().invoke(cli, ["index", "--store", str(study_store), "-e", "echoprime"])
    assert build.exit_code == 0, build.output
    out = cli_json("search", "--store", study_store, "-e", "echoprime", "--id", video, "-k", "5", "--where", "view = 'A4C'")
    assert len(out["hits"]) == 5 and all(h["metadata"]["view"] == "A4C" for h in out["hits"])
    text = CliRunner().invoke(cli, ["search", "--store", str(study_store), "-e", "echoprime", "--id", video, "-k", "2"])
    assert " view " in text.stdout.splitlines()[0] and any(v in text.stdout for v in PHANTOM_VIEWS)


def test_search_by_study_cli_and_rest_agree(study_store):
    with open_store(study_store, read_only=True) as st:
        study = st.catalog.query("SELECT min(study_id) FROM videos")[0][0]
    out = cli_json("search", "--store", study_store, "-e", "echoprime", "--target", "studies", "--study", study,
                   "--section", "mitral valve", "-k", "5")
    hits = out["hits"]
    assert len(hits) == 5 and all(h["metadata"]["section"] == "Mitral Valve" for h in hits)
    assert study not in {h["metadata"]["study_id"] for h in hits} and out["query"]["kind"] == "study"
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    with serving(create_app(study_store, Settings())) as url, httpx.Client(base_url=url, timeout=120) as client:
        rest = client.post("/search", json={"encoder": "echoprime", "target": "studies", "k": 5,
                                            "query": {"study_id": study, "section": "Mitral Valve"}})
        assert rest.status_code == 200, rest.text
        assert [h["id"] for h in rest.json()["results"]] == [h["id"] for h in hits]
        predicted = client.post("/predict", json={"study_id": study, "k": 4})
        assert predicted.status_code == 200, predicted.text
        missing = client.post("/predict", json={"study_id": "nope", "k": 4})
        assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]
    cli_predicted = cli_json("predict", "--store", study_store, "--study", study, "-k", "4")
    assert predicted.json() == cli_predicted


def test_predict_against_the_store_is_the_nan_mean_of_the_neighbours(study_store):
    with open_store(study_store, read_only=True) as st:
        study = st.catalog.query("SELECT max(study_id) FROM videos")[0][0]
        out = predict(st, study, k=6)
        ef = dict(st.catalog.query("SELECT study_id, avg(ef) FROM videos GROUP BY 1"))
        _, vectors = st.all_vectors("echoprime", "studies")
    neighbours = [n["study_id"] for n in out["neighbours"]]
    assert len(neighbours) == 6 and study not in neighbours and out["section"] == "Left Ventricle"
    expected = np.mean([ef[s] for s in neighbours])
    assert out["predictions"]["ef"]["mean"] == pytest.approx(expected) and out["predictions"]["ef"]["n"] == 6
    low, high = out["predictions"]["ef"]["interval"]
    assert min(ef[s] for s in neighbours) <= low <= high <= max(ef[s] for s in neighbours)
    with open_store(study_store, read_only=True) as st:
        with pytest.raises(NotFound, match="no echoprime study vector for study 'X'"):
            predict(st, "X")
        with pytest.raises(BadInput, match="unknown section 'Heart'"):
            predict(st, study, section="Heart")


# -- EchoPrime's candidate bank ---------------------------------------------------------------------
def write_bank(folder: Path) -> Path:
    """6 candidates in two parts; labels as the released pickle ({label: {study: value}}), with NaN and gaps."""
    folder.mkdir(parents=True)
    matrix = np.stack([unit(1), unit(1, 0.1), unit(1, 1), unit(0, 1), unit(-1), unit(1, 0.5)])
    torch.save(torch.from_numpy(matrix[:4]), folder / "candidate_embeddings_p1.pt")
    torch.save(torch.from_numpy(matrix[4:]), folder / "candidate_embeddings_p2.pt")
    (folder / "candidate_studies.csv").write_text("Study\n" + "\n".join(f"C{i}" for i in range(6)) + "\n")
    labels = {"EF": {"C0": 60.0, "C1": float("nan"), "C2": 30.0, "C3": 10.0, "C4": 99.0, "C5": 45.0},
              "MR_severe": {"C0": 1.0, "C1": 0.0, "C5": 0.0}}
    with open(folder / "candidate_labels.pkl", "wb") as fh:
        pickle.dump(labels, fh)
    return folder


def test_predict_against_the_bank_hand_computed(tmp_path):
    bank = write_bank(tmp_path / "model_data" / "candidates_data")
    with open_store(tmp_path / "s", create=True) as st:
        st.add_videos([{"video_id": "q", "study_id": "Q", "patient_id": "P"}])
        st.add_vectors(PROV, ["q"], unit(1)[None])
        st.catalog.set_views([("q", "A2C", 1.0)])
        build_study_vectors(st, "echoprime", write_mil(tmp_path / "MIL_weights.csv"))
    with open_store(tmp_path / "s", read_only=True) as st:
        out = predict(st, "Q", k=3, bank=tmp_path / "model_data")
    # query e0: cosines C0 1, C1 0.995, C5 0.894, C2 0.707, C3 0, C4 -1 -> top 3 = C0, C1, C5
    assert [n["study_id"] for n in out["neighbours"]] == ["C0", "C1", "C5"]
    assert out["neighbours"][1]["score"] == pytest.approx(1 / math.sqrt(1.01), abs=1e-6)
    assert out["neighbours"][1]["labels"] == {"EF": None, "MR_severe": 0.0}  # NaN is reported as no value
    assert out["predictions"]["EF"]["mean"] == pytest.approx((60 + 45) / 2) and out["predictions"]["EF"]["n"] == 2
    assert out["predictions"]["MR_severe"]["mean"] == pytest.approx(1 / 3)  # a fraction for a 0/1 label
    assert (bank / "candidate_embeddings.npy").is_file()
    loaded = open_bank(bank)
    assert isinstance(loaded.matrix, np.memmap) and loaded.matrix.shape == (6, DIM)
    text = CliRunner().invoke(cli, ["predict", "--store", str(tmp_path / "s"), "--study", "Q", "-k", "3",
                                    "--bank", str(bank), "--label", "EF"])
    assert text.exit_code == 0 and "EF: 52.500 (n=2" in text.stdout


def test_bank_missing_files_and_top_k_in_chunks(tmp_path, monkeypatch):
    folder = tmp_path / "candidates_data"
    folder.mkdir()
    (folder / "candidate_studies.csv").write_text("Study\nA\n")
    with pytest.raises(NotFound) as err:
        open_bank(folder)
    message = str(err.value)
    assert "\n" not in message and "candidate_embeddings_p1.pt" in message and "candidate_labels.pkl" in message
    assert str(folder) in message
    monkeypatch.setattr("embedstore.index.predict.CHUNK", 7)
    rng = np.random.default_rng(0)
    matrix, query = rng.normal(size=(50, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    scores, rows = top_k(matrix, query, 9)
    expected = np.argsort(-(matrix @ query), kind="stable")[:9]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, (matrix @ query)[expected], rtol=1e-6)


def test_bank_labels_from_their_own_sections(tmp_path):
    """Q = A2C e0 + Parasternal_Long e1. Left Ventricle (weights 1, 0.25) -> (1, 0.25): top 2 = C1 (0.989), C5 (0.976).
    Mitral Valve (1, 1) -> (1, 1): top 2 = C2 (1.0), C5 (0.949). EF maps to Left Ventricle: C1 NaN, C5 45 -> 45 (n 1);
    MR_severe maps to Mitral Valve: C2 has none, C5 0 -> 0 (n 1); from the Left Ventricle neighbours it would be n 2."""
    bank = write_bank(tmp_path / "candidates_data")
    with open_store(tmp_path / "s", create=True) as st:
        st.add_videos([{"video_id": "q1", "study_id": "Q"}, {"video_id": "q2", "study_id": "Q"}])
        st.add_vectors(PROV, ["q1", "q2"], np.stack([unit(1), unit(0, 1)]))
        st.catalog.set_views([("q1", "A2C", 1.0), ("q2", "Parasternal_Long", 1.0)])
        build_study_vectors(st, "echoprime", write_mil(tmp_path / "MIL_weights.csv"))
    with open(tmp_path / "section_to_phenotypes.pkl", "wb") as fh:
        pickle.dump({"Left Ventricle": ["EF"], "Mitral Valve": ["MR_severe"]}, fh)
    with open_store(tmp_path / "s", read_only=True) as st:
        plain = predict(st, "Q", k=2, bank=bank)
        mapped = predict(st, "Q", k=2, bank=bank, phenotypes=tmp_path / "section_to_phenotypes.pkl")
        with pytest.raises(BadInput, match="goes with --bank"):
            predict(st, "Q", k=2, phenotypes=tmp_path / "section_to_phenotypes.pkl")
    assert [n["study_id"] for n in plain["neighbours"]] == ["C1", "C5"]
    assert plain["predictions"]["MR_severe"] == {"mean": 0.0, "n": 2, "interval": [0.0, 0.0]}
    assert mapped["neighbours_by_section"] == {"Left Ventricle": ["C1", "C5"], "Mitral Valve": ["C2", "C5"]}
    assert mapped["predictions"]["EF"]["mean"] == 45.0 and mapped["predictions"]["EF"]["n"] == 1
    assert mapped["predictions"]["MR_severe"] == {"mean": 0.0, "n": 1, "interval": [0.0, 0.0], "section": "Mitral Valve"}


def test_page_searches_studies(study_store, tab):  # noqa: F811
    """The page's study form: enabled for an encoder with a studies index; cards name study, section, videos."""
    from embedstore.analysis.views import compute_view
    from tests.test_browser import CARDS, page_ready

    with open_store(study_store, read_only=True) as st:
        build_index(st, "echoprime", progress=False)
        compute_view(st, "echoprime", "pca")
        study = st.catalog.query("SELECT min(study_id) FROM videos")[0][0]
    with serving(create_app(study_store, Settings())) as url:
        tab.goto(url + "/")
        page_ready(tab)
        assert not tab.js("document.querySelector('#study-id').disabled")
        tab.type("#section", "Mitral Valve", enter=False)
        tab.type("#study-id", study)
        tab.wait(f"{CARDS} === 8", "8 study cards")
        cards = tab.js("[...document.querySelectorAll('#results .card')].map(c => c.innerText)")
        assert all("Mitral Valve · 3 videos" in c and "study " in c for c in cards)
        assert f"study {study}" not in " ".join(c.split("\n")[0] for c in cards)
        assert f"study {study} · Mitral Valve" in tab.js("document.querySelector('#summary').innerText")


def test_mean_pooling_one_vector_per_study(tmp_path):
    """PanEcho-style: the normalised mean of a study's video vectors, views not needed; search and predict
    default to the "All videos" section."""
    panecho = {**PROV, "encoder": "panecho"}
    with open_store(tmp_path / "s", create=True) as st:
        st.add_videos([{"video_id": "a", "study_id": "S1", "ef": 50.0}, {"video_id": "b", "study_id": "S1", "ef": 60.0},
                       {"video_id": "c", "study_id": "S2", "ef": 30.0}, {"video_id": "d", "study_id": "S3", "ef": 70.0}])
        st.add_vectors(panecho, list("abcd"), np.stack([unit(1), unit(0, 1), unit(1, 0.8), unit(0, 0, 1)]))
        with pytest.raises(BadInput, match="goes with EchoPrime's view-weighted pooling"):
            build_study_vectors(st, "panecho", tmp_path / "x.csv", pooling="mean")
        summary = build_study_vectors(st, "panecho", pooling="mean")
        ids, vectors = st.all_vectors("panecho", "studies")
    assert summary.added == 3 and ids == ["S1/All videos", "S2/All videos", "S3/All videos"]
    np.testing.assert_allclose(vectors[0][:3], [1 / math.sqrt(2), 1 / math.sqrt(2), 0], atol=1e-6)
    with open_store(tmp_path / "s", read_only=True) as st:
        build_index(st, "panecho", "studies", progress=False)
        out = predict(st, "S1", encoder="panecho", k=1)
    # S1 = (1, 1, 0)/sqrt2: S2 (1, 0.8) at 0.994 beats S3 (0, 0, 1) at 0
    assert out["section"] == "All videos" and [n["study_id"] for n in out["neighbours"]] == ["S2"]
    assert out["predictions"]["ef"]["mean"] == 30.0
    found = cli_json("search", "--store", tmp_path / "s", "-e", "panecho", "--target", "studies", "--study", "S1", "-k", "2")
    assert [h["metadata"]["study_id"] for h in found["hits"]] == ["S2", "S3"]


def test_erasing_a_patient_takes_their_study_vectors_too(study_store, tmp_path):
    """A study vector sums its videos: erasing a patient removes its studies' section vectors and rows."""
    from embedstore.store.erase import erase

    path = tmp_path / "store"
    shutil.copytree(study_store, path)
    with open_store(path) as st:
        (patient, study), = st.catalog.query("SELECT patient_id, study_id FROM videos WHERE study_id IS NOT NULL "
                                             "ORDER BY video_id LIMIT 1")
        theirs = {r[0] for r in st.catalog.query("SELECT study_id FROM videos WHERE patient_id = ?", [patient])}
        before = dict(st.catalog.embedding_map("echoprime", "studies"))
        erase(st, patient=patient)
        after = dict(st.catalog.embedding_map("echoprime", "studies"))
        sections = {r[0] for r in st.catalog.query("SELECT study_id FROM study_sections")}
    gone = {i for i in before if i.split("/")[0] in theirs}
    assert gone and set(after) == set(before) - gone and not theirs & sections
