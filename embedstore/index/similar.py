"""Same-patient similarity of two videos: their cosine, and a probability calibrated on the store's own pairs.

Why a calibration: a raw cosine means different things for different encoders (random-init R3D
vectors sit near 1, EchoCLIP-R's near 0.4 for strangers). A logistic fit of "same patient" on the
cosine of the store's labelled pairs turns it into a probability for this encoder and this data.
The fit is cached next to the indexes with the fingerprints of the vectors and of the patient labels it
was made from, written by the commands that write (`index`, `encode`, and `ingest` when it sets labels);
a reader that finds none current fits it and keeps it in memory.

Entry points: similar_ids (stored ids: REST /similarity), similar_videos (files: REST uploads), similar
(`embedstore similar`: each argument an id or a local file).
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path

import numpy as np

from embedstore.errors import NotFound
from embedstore.index.files import write_json_atomic
from embedstore.index.search import QueryEncoder
from embedstore.store import Store
from embedstore.video.read import MAX_FRAMES

MAX_SAME_PAIRS = 20_000  # a seeded sample above this keeps the fit fast on big cohorts
SEED = 0
CALIBRATION_SUFFIX = ".same-patient.json"  # indexes/<encoder>.same-patient.json
METHOD = "logistic regression of same-patient on standardised cosine (Platt scaling)"


def similar_ids(store: Store, encoder: str, a: str, b: str) -> dict:
    """Cosine of two stored videos and the calibrated same-patient probability; a string is an id, never a file."""
    first, second = (store.get_vectors(encoder, [item]) for item in (a, b))
    return _answer(store, encoder, a, b, first, second)


def similar_videos(store: Store, encoder: str, a: str | Path, b: str | Path, max_frames: int = MAX_FRAMES) -> dict:
    """The same for two video files: each hashed once, a stored one answers with its stored vector, the others
    are decoded (both held to max_frames, TooManyFrames, before any model runs) and embedded."""
    (first, _), (second, _) = QueryEncoder.of(store, encoder).video_vectors([a, b], max_frames)
    return _answer(store, encoder, str(a), str(b), first, second)


def similar(store: Store, encoder: str, a: str, b: str) -> dict:
    """`embedstore similar`: each argument a stored video id, else a video file on this machine.

    Only for a local user who may name either; the service takes ids (similar_ids) or uploads (similar_videos).
    """
    query = QueryEncoder.of(store, encoder)  # NotFound for an encoder without vectors, first
    held = store.catalog.rows_for(encoder, "videos", [a, b])
    for item in (a, b):
        if item not in held and not Path(item).is_file():
            raise NotFound(f"{item!r} is neither a video id with {encoder} vectors in the store nor a video file")
    files = [item for item in (a, b) if item not in held]
    embedded = dict(zip(files, query.video_vectors(files))) if files else {}
    first, second = (embedded[item][0] if item in embedded else store.get_vectors(encoder, [item]) for item in (a, b))
    return _answer(store, encoder, a, b, first, second)


def _answer(store: Store, encoder: str, a: str, b: str, first: np.ndarray, second: np.ndarray) -> dict:
    """The answer of all three: the two vectors' cosine and the store's calibration of it."""
    cosine = float(first[0] @ second[0])
    cal = calibration(store, encoder)
    return {"a": a, "b": b, "encoder": encoder, "cosine": round(cosine, 6),
            "same_patient_probability": probability(cal, cosine),
            "calibration": {k: cal[k] for k in ("n_pairs", "method", "auc")}}


def probability(cal: dict, cosine: float) -> float | None:
    """Calibrated P(same patient | cosine); None when the store had no labelled pairs to fit on."""
    if cal.get("coef") is None:
        return None
    z = cal["coef"] * (cosine - cal["center"]) / cal["scale"] + cal["intercept"]
    return round(1.0 / (1.0 + math.exp(-z)), 4)


def calibration_path(store: Store, encoder: str) -> Path:
    return store.indexes_dir / f"{encoder}{CALIBRATION_SUFFIX}"


def refresh_calibrations(store: Store) -> None:
    """After a writer changed patient labels (ingest): refit the calibrations the store keeps, so readers need not."""
    kept = sorted(store.indexes_dir.glob(f"*{CALIBRATION_SUFFIX}")) if store.indexes_dir.exists() else []
    for path in kept:
        calibration(store, path.name[: -len(CALIBRATION_SUFFIX)])


def calibration(store: Store, encoder: str) -> dict:
    """The fit for the store's current vectors: from memory, else the cached file, else fitted now.

    A fit made now is written only by a store that may write derived files (`index`, `encode`);
    a reader (search, serve, similar) keeps it in memory for its lifetime and writes nothing.
    """
    current = {"fingerprint": store.catalog.fingerprint(encoder, "videos"), "labels": store.catalog.labels_fingerprint(encoder)}
    memo = store.memo.get(("calibration", encoder))
    if memo is not None and all(memo.get(k) == v for k, v in current.items()):
        return memo
    path = calibration_path(store, encoder)
    try:
        cal = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or a damaged copy: fit again
        cal = {}
    if any(cal.get(k) != v for k, v in current.items()):  # other vectors, or other patients (new labels)
        cal = {**fit_calibration(store, encoder), **current,
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if store.writes_derived:
            write_json_atomic(path, cal)
    store.memo[("calibration", encoder)] = cal
    return cal


def fit_calibration(store: Store, encoder: str) -> dict:
    """Fit on every same-patient pair (patients with >= 2 videos) plus as many seeded different-patient pairs."""
    ids, pairs, labels = labelled_pairs(store, encoder)
    if labels.size == 0:
        return {"n_pairs": 0, "method": "none: no patient with two videos, or a single patient", "auc": None, "coef": None}
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    used = np.unique(pairs)
    vectors = store.get_vectors(encoder, [ids[i] for i in used])
    first, second = vectors[np.searchsorted(used, pairs[:, 0])], vectors[np.searchsorted(used, pairs[:, 1])]
    cosine = np.einsum("ij,ij->i", first, second).astype(np.float64)
    center, scale = float(cosine.mean()), float(cosine.std()) or 1.0
    model = LogisticRegression().fit(((cosine - center) / scale)[:, None], labels)
    return {"n_pairs": int(labels.size), "same_pairs": int(labels.sum()), "method": METHOD,
            "auc": round(float(roc_auc_score(labels, cosine)), 4), "center": center, "scale": scale,
            "coef": float(model.coef_[0, 0]), "intercept": float(model.intercept_[0])}


def labelled_pairs(store: Store, encoder: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, pairs [P, 2] of indices into ids, labels [P]: 1 same patient, 0 different); empty when unfittable."""
    rows = store.catalog.labelled_patients(encoder)
    ids, patients = [r[0] for r in rows], np.array([r[1] for r in rows], dtype=object)
    members: dict[str, list[int]] = {}
    for i, patient in enumerate(patients):
        members.setdefault(patient, []).append(i)
    same = np.array([pair for group in members.values() for pair in combinations(group, 2)], dtype=np.int64).reshape(-1, 2)
    rng = np.random.default_rng(SEED)
    if len(same) > MAX_SAME_PAIRS:
        same = same[np.sort(rng.choice(len(same), MAX_SAME_PAIRS, replace=False))]
    if len(same) == 0 or len(members) < 2:
        return ids, np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    different = _different_patient_pairs(patients, len(same), rng)
    return ids, np.concatenate([same, different]), np.concatenate([np.ones(len(same), np.int64), np.zeros(len(different), np.int64)])


def _different_patient_pairs(patients: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n random pairs of videos from two different patients (rejection sampling; at least 2 patients)."""
    found: list[np.ndarray] = []
    while sum(len(f) for f in found) < n:
        pairs = rng.integers(0, len(patients), size=(2 * n, 2))
        found.append(pairs[patients[pairs[:, 0]] != patients[pairs[:, 1]]])
    return np.concatenate(found)[:n]
