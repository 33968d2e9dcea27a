"""`embedstore eval`: every number checked against an independent computation on a synthetic store.

The synthetic store holds catalog rows and vectors made here (no video decoding): each vector
carries its patient, its study and its EF, so every task has a signal to find. A second store with
the labels permuted is the control: its AUCs must sit near 0.5.
"""
from __future__ import annotations

import json
import shutil
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import (accuracy_score, average_precision_score, f1_score, mean_absolute_error,
                             mean_squared_error, precision_score, r2_score, recall_score, roc_auc_score)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from embedstore.analysis import evaluate, to_markdown
from embedstore.analysis import metrics as M
from embedstore.analysis.evaluate import load_data
from embedstore.cli import app
from embedstore.store import open_store

DIM = 24
PATIENTS = 120  # x 2 studies x 2 videos: 480 videos, 96 of them in TEST
BOOT = 200
NULL_AUC_TOLERANCE = 0.2  # ~3 standard deviations of a null AUC over 96 TEST videos (~0.06)
NULL_PAIR_AUC_TOLERANCE = 0.1  # ~115k pairs, 480 same-patient: the null AUC's SD is ~0.013


def provenance(name: str = "synth", dim: int = DIM) -> dict:
    return {"encoder": name, "dim": dim, "weights": "random-init", "weights_sha256": "random-init",
            "preprocessing": {}, "package_version": "test", "modalities": ["text", "video"]}


def build_store(path: Path, shuffle: bool = False, with_split: bool = True) -> Path:
    """Videos and reports whose vectors encode patient, study and EF; `shuffle` permutes EF and patients."""
    rng = np.random.default_rng(7)
    patient_dir, ef_dir = rng.normal(size=(PATIENTS, DIM)), rng.normal(size=DIM)
    splits = rng.permutation(np.repeat(["TRAIN", "VAL", "TEST"], [72, 24, 24]))
    videos, vectors, reports, report_vectors = [], [], [], []
    for p in range(PATIENTS):
        ef_patient = rng.uniform(20, 75)
        for s in range(2):
            study = f"P{p:03d}-S{s}"
            study_dir = rng.normal(size=DIM)
            members = []
            for v in range(2):
                ef = float(np.clip(ef_patient + rng.normal(0, 3), 10, 80))
                vid = f"{study}-V{v}"
                members.append(vid)
                videos.append({"video_id": vid, "patient_id": f"P{p:03d}", "study_id": study,
                               "split": splits[p] if with_split else None, "ef": ef})
                vectors.append(0.8 * patient_dir[p] + 0.5 * study_dir + (ef - 50) / 12 * ef_dir + rng.normal(0, 0.6, DIM))
            by_video = p % 10 == 0 and s == 0  # a few reports name their video instead of their study
            reports.append({"report_id": f"{study}-R", "study_id": None if by_video else study,
                            "video_id": members[0] if by_video else None, "patient_id": f"P{p:03d}",
                            "text": f"report of {study}"})
            report_vectors.append(vectors[-2 if by_video else -1] * 0.5 + study_dir + rng.normal(0, 0.7, DIM))
    if shuffle:
        order = rng.permutation(len(videos))
        for row, source in zip(videos, [dict(videos[k]) for k in order]):
            row["ef"], row["patient_id"] = source["ef"], source["patient_id"]
    with open_store(path, create=True) as store:
        store.add_videos(videos)
        store.add_reports(reports)
        store.add_vectors(provenance(), [v["video_id"] for v in videos], np.array(vectors))
        store.add_vectors(provenance(), [r["report_id"] for r in reports], np.array(report_vectors), target="reports")
    return path


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("eval") / "store")


@pytest.fixture(scope="module")
def report(synth_store) -> dict:
    with open_store(synth_store, read_only=True) as store:
        return evaluate(store, "synth", bootstrap=BOOT, seed=0)


@pytest.fixture(scope="module")
def truth(synth_store) -> dict:
    """What the store holds, read with plain SQL: independent of evaluate's own loading."""
    with open_store(synth_store, read_only=True) as store:
        ids, vectors = store.all_vectors("synth")
        rows = {r[0]: r[1:] for r in store.catalog.query("SELECT video_id, ef, split, patient_id, study_id FROM videos")}
        report_ids, report_vectors = store.all_vectors("synth", "reports")
        links = store.catalog.query("SELECT report_id, study_id, video_id FROM reports")
    return {"ids": ids, "X": vectors, "ef": np.array([rows[i][0] for i in ids]), "split": np.array([rows[i][1] for i in ids]),
            "patient": [rows[i][2] for i in ids], "study": [rows[i][3] for i in ids],
            "report_ids": report_ids, "R": report_vectors, "links": {r[0]: (r[1], r[2]) for r in links}}


def test_every_task_runs_and_json_is_strict(report):
    assert set(report["tasks"]) == {"ef_probe", "ef_regression", "knn_ef", "neighbour_ef_class", "same_patient", "retrieval"}
    assert set(report["skipped"]) == {"zero_shot_ef"}
    assert report["split"] == {"source": "store", "TRAIN": 288, "VAL": 96, "TEST": 96}
    json.dumps(report, allow_nan=False)


def test_probe_matches_sklearn_on_the_same_predictions(report, truth):
    X, ef, split = truth["X"], truth["ef"], truth["split"]
    y = ef < 50
    train, val, test = split == "TRAIN", split == "VAL", split == "TEST"
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000)).fit(X[train], y[train])
    score = probe.predict_proba(X)[:, 1]
    task = report["tasks"]["ef_probe"]
    t = task["details"]["threshold"]
    def youden(c: float) -> float:  # sensitivity + specificity - 1 on VAL, positive when score >= c
        return (score[val & y] >= c).mean() - (score[val & ~y] >= c).mean()

    def accuracy(c: float) -> float:  # the R3D paper's rule: VAL accuracy, positive when score >= c
        return ((score[val] >= c) == y[val]).mean()

    assert accuracy(t) == pytest.approx(max(accuracy(c) for c in score[val]), abs=1e-12)
    yt = task["details"]["youden_threshold"]
    assert youden(yt) == pytest.approx(max(youden(c) for c in score[val]), abs=1e-12)
    pred = score[test] >= t
    expected = {"auc": roc_auc_score(y[test], score[test]), "auprc": average_precision_score(y[test], score[test]),
                "accuracy": accuracy_score(y[test], pred), "f1": f1_score(y[test], pred),
                "precision": precision_score(y[test], pred), "recall": recall_score(y[test], pred),
                "specificity": recall_score(~y[test], ~pred)}
    assert task["metrics"] == pytest.approx(expected, abs=1e-9)
    assert task["metrics"]["auc"] > 0.8  # the EF direction is in the vectors
    assert task["n"] == int(test.sum()) == 96


def test_ridge_matches_sklearn(report, truth):
    X, ef, split = truth["X"], truth["ef"], truth["split"]
    train, val, test = split == "TRAIN", split == "VAL", split == "TEST"
    task = report["tasks"]["ef_regression"]

    def fit(alpha):
        return make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(X[train], ef[train])

    best = min(task["details"]["alphas"], key=lambda a: mean_absolute_error(ef[val], fit(a).predict(X[val])))
    assert task["details"]["alpha"] == best
    pred = fit(best).predict(X[test])
    assert task["metrics"] == pytest.approx({"mae": mean_absolute_error(ef[test], pred),
                                             "rmse": mean_squared_error(ef[test], pred) ** 0.5,
                                             "r2": r2_score(ef[test], pred)}, abs=1e-9)


def test_knn_mae_matches_a_plain_loop(report, truth):
    X, ef, split = truth["X"], truth["ef"], truth["split"]
    train = [k for k in range(len(ef)) if split[k] == "TRAIN"]
    for k in (10, 50):
        errors = []
        for q in range(len(ef)):
            if split[q] != "TEST":
                continue
            sims = sorted(((float(X[q] @ X[t]), t) for t in train), reverse=True)[:k]
            errors.append(abs(sum(ef[t] for _, t in sims) / k - ef[q]))
        assert report["tasks"]["knn_ef"]["metrics"][f"mae_k{k}"] == pytest.approx(sum(errors) / len(errors), abs=1e-9)


def test_neighbour_ef_class_matches_a_plain_loop(report, truth):
    X, low, patient, split = truth["X"], truth["ef"] < 50, truth["patient"], truth["split"]
    agree, chance = [], []
    for q in range(len(X)):
        others = [t for t in range(len(X)) if patient[t] != patient[q]]
        top = sorted(others, key=lambda t: -float(X[q] @ X[t]))[:5]
        agree.append(sum(low[t] == low[q] for t in top) / 5)
        chance.append(sum(low[t] == low[q] for t in others) / len(others))
    metrics = report["tasks"]["neighbour_ef_class"]["metrics"]
    assert metrics["agreement"] == pytest.approx(np.mean(agree), abs=1e-9)
    assert metrics["chance"] == pytest.approx(np.mean(chance), abs=1e-9)
    test = [a for a, s in zip(agree, split) if s == "TEST"]
    assert metrics["agreement_test"] == pytest.approx(np.mean(test), abs=1e-9)
    row = next(line for line in to_markdown(report).splitlines() if "| agreement_test |" in line)
    assert row.endswith(f"| {len(test)} |")  # the markdown counts TEST queries for the TEST metric
    assert metrics["agreement"] > metrics["chance"] + 0.1  # the synthetic vectors carry EF


def test_tasks_option_runs_only_those(synth_store):
    result = CliRunner().invoke(app, ["eval", "--store", str(synth_store), "--encoder", "synth", "--bootstrap", "0",
                                      "--tasks", "neighbour_ef_class,knn_ef", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout[result.stdout.index("{"):])
    assert set(out["tasks"]) == {"neighbour_ef_class", "knn_ef"} and out["skipped"] == {}
    bad = CliRunner().invoke(app, ["eval", "--store", str(synth_store), "--encoder", "synth", "--tasks", "knn"])
    assert bad.exit_code != 0 and "unknown eval task knn; choose from" in bad.output


def test_same_patient_auc_over_all_pairs(report, truth):
    X, patient, study = truth["X"], truth["patient"], truth["study"]
    cos, same, same_study = [], [], []
    for a, b in combinations(range(len(patient)), 2):
        cos.append(float(X[a] @ X[b]))
        same.append(patient[a] == patient[b])
        same_study.append(study[a] == study[b])
    cos, same, same_study = np.array(cos), np.array(same), np.array(same_study)
    m = report["tasks"]["same_patient"]["metrics"]
    assert report["tasks"]["same_patient"]["details"]["sampled"] is False
    close = {"abs": 1e-6}  # float32 dot products summed in another order: near-equal cosines may swap
    assert m["auc"] == pytest.approx(roc_auc_score(same, cos), **close)
    assert m["mean_cosine_different_patients"] == pytest.approx(cos[~same].mean(), **close)
    assert m["mean_cosine_same_patient"] == pytest.approx(cos[same].mean(), **close)
    assert m["mean_cosine_same_study"] == pytest.approx(cos[same & same_study].mean(), **close)
    assert m["mean_cosine_other_study"] == pytest.approx(cos[same & ~same_study].mean(), **close)
    for key, positive in (("auc_same_study", same & same_study), ("auc_other_study", same & ~same_study)):
        keep = positive | ~same  # these same-patient pairs against every different-patient pair
        assert m[key] == pytest.approx(roc_auc_score(positive[keep], cos[keep]), **close)
        lo, hi = report["tasks"]["same_patient"]["ci95"][key]
        assert lo <= m[key] <= hi
    assert m["auc_other_study"] < m["auc_same_study"]  # a study's videos share more than the patient
    # EchoCLIP-R's ordering: strangers < same patient other study < same study
    assert m["mean_cosine_different_patients"] < m["mean_cosine_other_study"] < m["mean_cosine_same_study"]


def test_retrieval_ranks_match_brute_force(report, truth):
    X, R, ids, rids = truth["X"], truth["R"], truth["ids"], truth["report_ids"]
    relevant: dict[int, set[int]] = {}  # report row -> video rows
    for r, rid in enumerate(rids):
        study, video = truth["links"][rid]
        relevant[r] = {ids.index(video)} if video else {k for k, s in enumerate(truth["study"]) if s == study}

    def rank(query, candidates, good):
        order = np.argsort(-(candidates @ query), kind="stable")
        return 1 + next(pos for pos, c in enumerate(order) if c in good)

    r2v = [rank(R[r], X, relevant[r]) for r in range(len(rids))]
    videos = sorted({v for vs in relevant.values() for v in vs})
    v2r = [rank(X[v], R, {r for r, vs in relevant.items() if v in vs}) for v in videos]
    m = {k.removeprefix("every_video_"): v for k, v in report["tasks"]["retrieval"]["metrics"].items()
         if k.startswith("every_video_")}  # the every-video protocol (the paper's: tests/test_fidelity.py)
    assert m["report_to_video_mean_rank"] == pytest.approx(np.mean(r2v))
    assert m["video_to_report_mean_rank"] == pytest.approx(np.mean(v2r))
    assert m["mcmrr"] == pytest.approx((np.mean(r2v) + np.mean(v2r)) / 2)
    for k in (1, 5, 10):
        assert m[f"video_to_report_recall@{k}"] == pytest.approx(np.mean(np.array(v2r) <= k))
        assert m[f"report_to_video_recall@{k}"] == pytest.approx(np.mean(np.array(r2v) <= k))
    assert report["tasks"]["retrieval"]["details"]["video_queries"] == len(videos) == 480 - 12  # 12 videos unnamed


def test_intervals_contain_the_estimate_and_repeat_for_a_seed(report, synth_store):
    for task, metric in [("ef_probe", "auc"), ("ef_probe", "auprc"), ("ef_regression", "mae"),
                         ("knn_ef", "mae_k10"), ("same_patient", "auc")]:
        lo, hi = report["tasks"][task]["ci95"][metric]
        assert lo <= report["tasks"][task]["metrics"][metric] <= hi, (task, metric)
    with open_store(synth_store, read_only=True) as store:
        again = evaluate(store, "synth", bootstrap=BOOT, seed=0)
    assert again["tasks"] == report["tasks"]


def test_shuffled_labels_give_chance_auc(tmp_path):
    with open_store(build_store(tmp_path / "shuffled", shuffle=True), read_only=True) as store:
        control = evaluate(store, "synth", bootstrap=0)
    assert abs(control["tasks"]["ef_probe"]["metrics"]["auc"] - 0.5) < NULL_AUC_TOLERANCE
    assert abs(control["tasks"]["same_patient"]["metrics"]["auc"] - 0.5) < NULL_PAIR_AUC_TOLERANCE
    neighbours = control["tasks"]["neighbour_ef_class"]["metrics"]
    assert abs(neighbours["agreement"] - neighbours["chance"]) < 0.05  # 480 queries x 5 neighbours
    assert control["tasks"]["ef_probe"]["ci95"]["auc"] is None  # bootstrap=0: no intervals


def test_seeded_patient_split_when_the_store_has_none(tmp_path):
    with open_store(build_store(tmp_path / "nosplit", with_split=False), read_only=True) as store:
        out = evaluate(store, "synth", bootstrap=0, seed=3)
        data, _ = load_data(store, "synth", 0, 3)
    assert out["split"]["source"].startswith("seeded patient-level")
    assert out["split"]["TRAIN"] + out["split"]["VAL"] + out["split"]["TEST"] == 480
    by_patient: dict[str, set] = {}
    for patient, split in zip(data.patients, data.split):
        by_patient.setdefault(patient, set()).add(split)
    assert all(len(s) == 1 for s in by_patient.values())
    assert "ef_probe" in out["tasks"]


def test_random_init_warning_is_the_first_line(report, synth_store, tmp_path):
    assert report["warning"].startswith("WARNING") and "RANDOM-INIT" in report["warning"]
    assert to_markdown(report).splitlines()[0] == report["warning"]
    runner = CliRunner()
    out = tmp_path / "report.md"
    result = runner.invoke(app, ["eval", "--store", str(synth_store), "--encoder", "synth", "--bootstrap", "20",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].startswith("WARNING")
    assert out.read_text().splitlines()[0].startswith("WARNING")
    assert "| EF<50% linear probe | auc |" in result.stdout
    result = runner.invoke(app, ["eval", "--store", str(synth_store), "--encoder", "synth", "--bootstrap", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0].startswith("WARNING")
    assert json.loads(result.stdout)["encoder"]["weights_sha256"] == "random-init"


def test_tasks_without_labels_are_skipped_with_a_reason(tmp_path, ingested_store):
    path = tmp_path / "store"
    shutil.copytree(ingested_store, path)
    with open_store(path) as store:
        ids = [r["video_id"] for r in store.videos()]
        store.add_vectors(provenance("plain"), ids, np.random.default_rng(0).normal(size=(len(ids), DIM)))
        store.catalog.con.execute("UPDATE videos SET patient_id = NULL")
        out = evaluate(store, "plain", bootstrap=0)
    assert "patient ids" in out["skipped"]["same_patient"]
    assert "no report vectors" in out["skipped"]["retrieval"]
    assert "echoclip" in out["skipped"]["zero_shot_ef"]


def test_zero_shot_ef_on_test_videos(tmp_path, ingested_store):
    from embedstore.encoders import get_encoder
    from embedstore.encoders.echoclip import zero_shot_ef
    from embedstore.video.read import read_video
    from tests.test_encoders import TINY_CLIP

    path = tmp_path / "store"
    shutil.copytree(ingested_store, path)
    model = get_encoder("echoclip", random_init=True, model_cfg=TINY_CLIP)
    with open_store(path) as store:
        rows = store.videos()
        store.add_vectors(model.provenance(), [r["video_id"] for r in rows],
                          np.random.default_rng(0).normal(size=(len(rows), model.dim)))
        skipped = evaluate(store, "echoclip", bootstrap=0)["skipped"]["zero_shot_ef"]
        out = evaluate(store, "echoclip", bootstrap=50, model=model)["tasks"]["zero_shot_ef"]
    assert "random-init" in skipped  # without a model, a random text tower is not used
    test = [r for r in rows if r["split"] == "TEST"]
    pred = zero_shot_ef(model, [read_video(r["source_path"]) for r in test])
    assert out["n"] == len(test)
    assert out["metrics"]["mae"] == pytest.approx(sum(abs(float(p) - r["ef"]) for p, r in zip(pred, test)) / len(test))
    y = [r["ef"] < 50 for r in test]
    expected_auc = roc_auc_score(y, -pred) if 0 < sum(y) < len(y) else None
    assert out["metrics"]["auc"] == (pytest.approx(expected_auc) if expected_auc is not None else None)


def test_metric_functions_against_sklearn():
    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.3
    scores = rng.integers(0, 20, 300).astype(float)  # many ties
    weights = rng.integers(0, 4, 300)
    assert M.auc(y, scores) == pytest.approx(roc_auc_score(y, scores))
    assert M.auc(y, scores, weights) == pytest.approx(roc_auc_score(y, scores, sample_weight=weights))
    assert np.isnan(M.auc(np.zeros(5, bool), np.arange(5.0)))
    assert M.bootstrap_ci(lambda i: float(scores[i].mean()), 300, 100, seed=4) == \
        M.bootstrap_ci(lambda i: float(scores[i].mean()), 300, 100, seed=4)


def test_pair_sample_keeps_same_patient_pairs():
    groups = np.repeat(np.arange(200).astype(str), 3)  # 600 videos: 179,700 pairs, 600 same-patient
    i, j = M.video_pairs(groups, 5000, np.random.default_rng(0))
    assert len(i) == 5000 and (i < j).all()
    same = groups[i] == groups[j]
    assert same.sum() == 600
    assert len({(a, b) for a, b in zip(i[same], j[same])}) == 600
