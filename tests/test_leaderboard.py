"""The pixel baseline encoder and the leaderboard (`embedstore leaderboard`, `eval --all`).

Every baseline number is checked against an independent computation on a tiny phantom store: pixel
vectors by block means in numpy, AUCs by scikit-learn over all pairs, kNN and neighbour shares by
brute force, and the paired difference interval by resampling both rows' errors with the same draws.
"""
from __future__ import annotations

import json
import shutil
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from embedstore.analysis import metrics as M
from embedstore.analysis.leaderboard import leaderboard, to_markdown
from embedstore.cli import app
from embedstore.datasets.ingest import ingest
from embedstore.datasets.phantom import make_phantom
from embedstore.encode import encode_store
from embedstore.encoders import get_encoder
from embedstore.index.search import Searcher
from embedstore.store import open_store
from embedstore.video.prepare import sector_mask
from embedstore.video.read import Video, read_video

BOOT = 300
SYNTH = {"encoder": "synth", "dim": 8, "weights": "random-init", "weights_sha256": "random-init",
         "preprocessing": {}, "package_version": "test", "modalities": ["video"]}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lb") / "cohort"
    make_phantom(root, patients=8, videos_per_patient=4, studies_per_patient=2, seed=3, frames=16)
    return root


@pytest.fixture(scope="module")
def store(cohort, tmp_path_factory) -> Path:
    """The cohort with a random 8-d vector set `synth` (no pixels set: the baseline is computed on the fly)."""
    path = tmp_path_factory.mktemp("lb") / "store"
    with open_store(path, create=True) as st:
        ingest(cohort, st, progress=False)
        ids = sorted(st.catalog.video_ids())
        st.add_vectors(SYNTH, ids, np.random.default_rng(5).normal(size=(len(ids), 8)).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def board(store) -> dict:
    with open_store(store, read_only=True) as st:
        return leaderboard(st, bootstrap=BOOT, seed=2)


@pytest.fixture(scope="module")
def truth(store) -> dict:
    """Independently computed pixel vectors and labels, in sorted id order (the leaderboard's row order)."""
    with open_store(store, read_only=True) as st:
        rows = sorted(st.videos(), key=lambda r: r["video_id"])
        synth_ids, synth = st.all_vectors("synth")
    position = {i: k for k, i in enumerate(synth_ids)}
    return {"ids": [r["video_id"] for r in rows], "ef": np.array([r["ef"] for r in rows]),
            "patient": np.array([r["patient_id"] for r in rows]), "study": np.array([r["study_id"] for r in rows]),
            "split": np.array([r["split"] for r in rows]),
            "pixels": np.stack([pixel_vector(read_video(r["source_path"]).frames) for r in rows]),
            "synth": synth[[position[r["video_id"]] for r in rows]]}


def pixel_vector(frames: np.ndarray, grid: int = 16) -> np.ndarray:
    """Masked temporal mean and std of the grey frames, block-averaged to grid x grid, each L2-normalised, then both."""
    mask = sector_mask(frames)
    grey = frames.astype(np.float64).mean(axis=-1) * mask
    side = grey.shape[1]
    assert grey.shape[2] == side and side % grid == 0
    b = side // grid
    parts = [img.reshape(grid, b, grid, b).mean(axis=(1, 3)).ravel() for img in (grey.mean(axis=0), grey.std(axis=0))]
    v = np.concatenate([p / np.linalg.norm(p) for p in parts])
    return v / np.linalg.norm(v)


def test_pixel_encoder_is_the_masked_mean_and_std_on_a_grid():
    rng = np.random.default_rng(0)
    frames = np.zeros((6, 64, 80, 3), np.uint8)
    frames[:, 8:56, 20:60] = rng.integers(0, 200, (6, 48, 40, 1))  # the moving "fan": a rectangle, centred
    frames[:, 60:63, 2:30] = 250  # static burned-in text below it: masked out
    encoder = get_encoder("pixels")
    vector = encoder.embed_videos([Video(frames, 50.0, "avi")])[0]
    mask = sector_mask(frames)  # the project's fan mask: the moving region, rows filled
    assert not mask[60:63].any() and mask[8:56, 21:59].all()
    square = (frames.astype(np.float64).mean(axis=-1) * mask)[:, :, 8:72]  # centre square 64 x 64
    parts = [img.reshape(16, 4, 16, 4).mean(axis=(1, 3)).ravel() for img in (square.mean(0), square.std(0))]
    expected = np.concatenate([p / np.linalg.norm(p) for p in parts])
    np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), atol=1e-5)
    prov = encoder.provenance()
    assert (prov["encoder"], prov["dim"], prov["weights"], prov["weights_sha256"]) == ("pixels", 512, "none", "none")


def test_pixels_encode_index_and_search_by_a_new_file(store, tmp_path, cohort):
    """Registered like any encoder: encode, index, and a query video not in the store is embedded on the fly."""
    from embedstore.index.build import build_index
    from embedstore.video.write import write_video

    path = tmp_path / "store"
    shutil.copytree(store, path)
    with open_store(path) as st:
        summary = encode_store(st, get_encoder("pixels"), progress=False)
        assert summary.added == 32 and not summary.failed
    with open_store(path, read_only=True) as st:
        build_index(st, "pixels", progress=False)
        first = sorted(cohort.glob("Videos/*.avi"))[0]
        video = read_video(first)
        copy = tmp_path / "query.avi"
        write_video(copy, video.frames[..., 0], video.fps, "mjpeg")
        result = Searcher(st, "pixels").search(video=copy, k=3)
    assert result.query["stored_id"] is None and result.hits[0].id == first.stem  # re-encoded: itself comes first
    assert result.provenance["random_init"] is False


def test_baseline_row_matches_an_independent_computation(board, truth):
    assert board["baseline"]["source"] == "computed now from 32 video files" and board["n_videos"] == 32
    row = next(r for r in board["rows"] if r["name"] == "pixels" and not r["centred"])
    m = {k: c["value"] for k, c in row["metrics"].items()}
    X, patient, study, ef, split = truth["pixels"], truth["patient"], truth["study"], truth["ef"], truth["split"]
    i, j = np.array(list(combinations(range(len(X)), 2))).T
    cos, same = np.einsum("ij,ij->i", X[i], X[j]), patient[i] == patient[j]
    for key, positive in (("same_patient_same_study_auc", same & (study[i] == study[j])),
                          ("same_patient_other_study_auc", same & (study[i] != study[j]))):
        keep = positive | ~same
        assert m[key] == pytest.approx(roc_auc_score(positive[keep], cos[keep]), abs=1e-4)
    train, test = np.flatnonzero(split == "TRAIN"), np.flatnonzero(split == "TEST")
    knn = [ef[train[np.argsort(-(X[train] @ X[t]))[:10]]].mean() for t in test]
    assert m["knn_ef_mae"] == pytest.approx(np.abs(np.array(knn) - ef[test]).mean(), abs=1e-3)
    share = []
    for q in range(len(X)):
        others = np.flatnonzero(patient != patient[q])
        top = others[np.argsort(-(X[others] @ X[q]))[:5]]
        share.append(np.mean((ef[top] < 50) == (ef[q] < 50)))
    assert m["neighbour_ef_class"] == pytest.approx(np.mean(share), abs=1e-6)
    assert set(row["metrics"]) >= {"knn_ef_mae", "neighbour_ef_class", "same_patient_other_study_auc", "ef_mae"}


def test_differences_use_paired_resamples(board, truth):
    """The synth row's kNN MAE minus the baseline's: both rows' errors resampled with the same draws."""
    ef, split = truth["ef"], truth["split"]
    train, test = np.flatnonzero(split == "TRAIN"), np.flatnonzero(split == "TEST")
    errors = {}
    for name in ("pixels", "synth"):
        X = truth[name] / np.linalg.norm(truth[name], axis=1, keepdims=True)
        errors[name] = np.abs(np.array([ef[train[np.argsort(-(X[train] @ X[t]))[:10]]].mean() for t in test]) - ef[test])
    rng, n = np.random.default_rng(2), len(test)
    diffs = []
    for _ in range(BOOT):
        idx = rng.integers(0, n, n)
        diffs.append(errors["synth"][idx].mean() - errors["pixels"][idx].mean())
    cell = next(r for r in board["rows"] if r["name"] == "synth" and not r["centred"])["metrics"]["knn_ef_mae"]
    assert cell["delta"] == pytest.approx(errors["synth"].mean() - errors["pixels"].mean(), abs=1e-3)
    np.testing.assert_allclose(cell["delta_ci95"], np.percentile(diffs, [2.5, 97.5]), atol=1e-3)
    baseline = next(r for r in board["rows"] if r["name"] == "pixels" and not r["centred"])
    assert all("delta" not in c for c in baseline["metrics"].values())


def test_rows_raw_and_centred_and_agreement(board, truth):
    names = [(r["name"], r["centred"]) for r in board["rows"]]
    assert names == [("pixels", False), ("pixels", True), ("synth", False), ("synth", True)]
    synth = next(r for r in board["rows"] if r["name"] == "synth" and not r["centred"])
    assert synth["random_init"] is True
    (agreement,) = board["agreement"]
    overlap = M.neighbour_overlap(truth["pixels"], truth["synth"], 10)
    assert (agreement["a"], agreement["b"]) == ("pixels", "synth")
    assert agreement["overlap"] == pytest.approx(overlap.mean()) and agreement["chance"] == pytest.approx(10 / 31)
    text = to_markdown(board)
    assert "| pixels (baseline) |" in text and "| synth centred RANDOM-INIT |" in text and "Δ" in text


def test_neighbour_overlap_by_brute_force():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 6)), rng.normal(size=(40, 6))
    a, b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    want = []
    for q in range(40):
        near = [set(np.argsort(-(x @ x[q]))[1:6]) for x in (a, b)]  # itself first, then 5 neighbours
        want.append(len(near[0] & near[1]) / 5)
    np.testing.assert_allclose(M.neighbour_overlap(a, b, 5), want)
    np.testing.assert_allclose(M.neighbour_overlap(a, a, 5), 1.0)


def test_stored_pixels_set_gives_the_same_row(store, board, tmp_path):
    path = tmp_path / "store"
    shutil.copytree(store, path)
    with open_store(path) as st:
        encode_store(st, get_encoder("pixels"), progress=False)
    with open_store(path, read_only=True) as st:
        stored = leaderboard(st, bootstrap=BOOT, seed=2)
    assert stored["baseline"]["source"] == "the store's pixels vector set"
    pick = lambda b: next(r for r in b["rows"] if r["name"] == "pixels" and not r["centred"])["metrics"]  # noqa: E731
    for key, cell in pick(board).items():
        assert pick(stored)[key]["value"] == pytest.approx(cell["value"], abs=1e-6), key


def test_cli_prints_the_baseline_row_on_every_store(store, cohort, tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["eval", "--all", "--store", str(store), "--bootstrap", "20"])
    assert out.exit_code == 0, out.output
    assert "| pixels (baseline) | " in out.stdout and "| synth RANDOM-INIT | " in out.stdout
    as_json = runner.invoke(app, ["leaderboard", "--store", str(store), "--bootstrap", "0", "--json", "--raw-only", "-q"])
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert [r["name"] for r in report["rows"]] == ["pixels", "synth"]
    # released vectors without their videos: the baseline row says why it is missing
    gone = tmp_path / "cohort"
    shutil.copytree(cohort, gone)
    with open_store(tmp_path / "released", create=True) as st:
        ingest(gone, st, progress=False)
        ids = sorted(st.catalog.video_ids())
        st.add_vectors(SYNTH, ids, np.random.default_rng(6).normal(size=(len(ids), 8)).astype(np.float32))
    shutil.rmtree(gone / "Videos")
    out = runner.invoke(app, ["eval", "--all", "--store", str(tmp_path / "released"), "--bootstrap", "0"])
    assert out.exit_code == 0, out.output
    assert "| pixels (baseline) | unavailable" in out.stdout and "UNAVAILABLE: no video file" in out.stdout
    # neither vectors nor videos: one line, exit 2
    with open_store(tmp_path / "empty", create=True) as st:
        ingest(cohort, st, progress=False)
        st.catalog.con.execute("UPDATE videos SET source_path = NULL")
    out = runner.invoke(app, ["leaderboard", "--store", str(tmp_path / "empty")])
    assert out.exit_code == 2 and out.output.startswith("error: the store has no video vectors")
