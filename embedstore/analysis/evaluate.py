"""`embedstore eval`: the papers' evaluation of one vector set, each task only where its labels exist.

Tasks (metric functions in analysis/metrics.py):
- ef_probe: EF < 50% linear probe (R3D paper's table). StandardScaler + LogisticRegression(C=1) fit
  on TRAIN; the decision threshold maximises Youden's J on VAL (0.5 when VAL lacks a class);
  AUC, AUPRC, accuracy, F1, precision, recall, specificity on TEST.
- ef_regression: StandardScaler + Ridge, alpha chosen on VAL by MAE; MAE, RMSE, R^2 on TEST.
- knn_ef: mean EF of the k = 10 and 50 most cosine-similar TRAIN videos of each TEST video; MAE.
- neighbour_ef_class: the share of each video's k = 5 cosine neighbours in its EF < 50% class, its own
  patient's other videos left out (what a search shows), over every labelled video and over TEST
  queries, beside the share chance gives. Uses every split: it describes the vectors as stored.
- same_patient: AUC of the cosine of video pairs for "same patient" (all pairs, or every same-patient
  pair plus a seeded sample of the others when there are many), and mean cosines for different
  patients / same patient (same study, other study) - EchoCLIP-R's figure; auc_same_study and
  auc_other_study score only the same-study (other-study) same-patient pairs against the
  different-patient ones, since videos of one study share probe pose and gain. Uses every video: the
  encoder was not trained here.
- retrieval: video <-> report (reports link to videos by video_id, else by study_id): mean and median
  rank each way, MCMRR (the mean of the two mean ranks), recall@1/5/10, with the EchoCLIP paper's one
  seeded random video per study; the every-video protocol beside it (`every_video_*`).
- zero_shot_ef: echoclip / echoclip-r only, the FACTS.md procedure (encoders/echoclip.zero_shot_ef)
  on the TEST videos whose files exist: MAE, and AUC for EF < 50% with the predicted EF as score.
  EchoCLIP uses the 202 short EF prompts; EchoCLIP-R, as its paper, up to 10 sampled report texts
  (labelled non-TEST videos, seeded) per EF value; `details.procedure` says which ran.
  Needs the encoder's weights (a random-init text tower predicts noise: skipped unless a model is given).
Splits: the store's TRAIN/VAL/TEST when every video has one, else a seeded 70/15/15 split by patient.
Intervals: percentile bootstrap (seeded) over TEST videos, or over pairs for same-patient AUC.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from embedstore.analysis import metrics as M
from embedstore.analysis.views import video_labels
from embedstore.encoders.provenance import RANDOM_INIT, is_random, rebuild
from embedstore.errors import BadInput, EmbedstoreError
from embedstore.store import Store

EF_CUTOFF = 50.0
SPLITS = ("TRAIN", "VAL", "TEST")
SEEDED_SHARES = (0.70, 0.15)  # TRAIN, VAL; the rest is TEST
PROBE_C = 1.0
RIDGE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)
RIDGE_DEFAULT_ALPHA = 1.0
KNN_K = (10, 50)
NEIGHBOUR_K = 5
MAX_PAIRS = 200_000
ZERO_SHOT_ENCODERS = ("echoclip", "echoclip-r")
REPORTS_PER_EF = 10  # EchoCLIP-R zero-shot EF: sampled report texts per EF value, as the paper
ZERO_SHOT_BATCH = 16  # videos decoded at a time: the 202 prompts are embedded once per batch
TITLES = {"ef_probe": "EF<50% linear probe", "ef_regression": "EF ridge regression", "knn_ef": "kNN EF estimate",
          "neighbour_ef_class": "neighbours' EF class",
          "same_patient": "same patient", "retrieval": "video<->report retrieval", "zero_shot_ef": "zero-shot EF"}


class Skip(Exception):
    """A task that cannot run on this store; the message says which labels are missing."""


@dataclass
class Data:
    """One vector set with its labels, row-aligned, and the split every task uses."""

    store: Store
    encoder: str
    ids: list[str]
    vectors: np.ndarray
    ef: np.ndarray  # float, NaN where unknown
    patients: np.ndarray  # object, None where unknown
    studies: np.ndarray
    paths: list[str | None]
    split: np.ndarray  # TRAIN / VAL / TEST
    n_boot: int
    seed: int
    model: object = None

    def mask(self, split: str) -> np.ndarray:
        """Videos of `split` with an EF label."""
        return (self.split == split) & ~np.isnan(self.ef)

    def ci(self, statistic: Callable[[np.ndarray], float], n: int) -> list[float] | None:
        return M.bootstrap_ci(statistic, n, self.n_boot, self.seed)


def evaluate(store: Store, encoder: str, bootstrap: int = 1000, seed: int = 0, model=None,
             tasks: list[str] | None = None) -> dict:
    """Every task (or those named) whose labels exist; see the module docstring. `model` overrides the zero-shot encoder."""
    unknown = sorted(set(tasks or ()) - set(TASKS))
    if unknown:
        raise BadInput(f"unknown eval task {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    info = store.encoder_info(encoder)
    data, split_source = load_data(store, encoder, bootstrap, seed, model)
    random_init = info["weights_sha256"] == RANDOM_INIT
    report = {
        "warning": (f"WARNING: the {encoder} vectors come from RANDOM-INIT weights: these numbers describe a random "
                    f"network, not a trained encoder; do not report them as {encoder}'s performance") if random_init else None,
        "encoder": {"name": encoder, "random_init": random_init,
                    **{k: info[k] for k in ("dim", "weights", "weights_sha256", "package_version", "preprocessing")}},
        "store": str(store.path), "fingerprint": store.catalog.fingerprint(encoder, "videos"), "n_videos": len(data.ids),
        "split": {"source": split_source, **{s: int((data.split == s).sum()) for s in SPLITS}},
        "bootstrap": {"resamples": bootstrap, "seed": seed, "interval": "percentile 95%"},
        "tasks": {}, "skipped": {},
    }
    for name, task in TASKS.items():
        if tasks and name not in tasks:
            continue
        try:
            report["tasks"][name] = task(data)
        except Skip as why:
            report["skipped"][name] = str(why)
    return json_ready(report)


def json_ready(value):
    """NaN (an undefined metric) becomes None and numpy scalars plain numbers, so the report is strict JSON."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and np.isnan(value) else value


def load_data(store: Store, encoder: str, n_boot: int, seed: int, model=None) -> tuple[Data, str]:
    """The video vectors with their catalog labels and split, and where the split came from."""
    ids, vectors = store.all_vectors(encoder, "videos")
    return data_for(store, encoder, ids, vectors, n_boot, seed, model)


def data_for(store: Store, encoder: str, ids: list[str], vectors: np.ndarray, n_boot: int, seed: int,
             model=None) -> tuple[Data, str]:
    """Data for any row-aligned (ids, vectors), stored or not (the leaderboard's on-the-fly pixel baseline)."""
    labels = video_labels(store, ids, ["ef", "patient_id", "study_id", "split", "source_path"])
    split, source = _split(labels["split"], labels["patient_id"], ids, seed)
    ef = np.array([np.nan if v is None else float(v) for v in labels["ef"]], dtype=np.float64)
    return Data(store, encoder, ids, vectors, ef, np.array(labels["patient_id"], dtype=object),
                np.array(labels["study_id"], dtype=object), labels["source_path"], split, n_boot, seed, model), source


def patient_groups(patients, ids: list[str]) -> np.ndarray:
    """One group per patient; a video without a patient id is a group of its own."""
    return np.array([p if p is not None else f"video:{i}" for p, i in zip(patients, ids)], dtype=object)


def _split(stored: list, patients: list, ids: list[str], seed: int) -> tuple[np.ndarray, str]:
    """The store's split when every video has one (and TRAIN and TEST exist), else a seeded patient-level one."""
    split = np.array([str(s).strip().upper() if s is not None else "" for s in stored], dtype=object)
    if len(split) and set(split) <= set(SPLITS) and {"TRAIN", "TEST"} <= set(split):
        return split, "store"
    groups = patient_groups(patients, ids)
    unique = np.unique(groups.astype(str))
    order = np.random.default_rng(seed).permutation(len(unique))
    cut1, cut2 = int(round(SEEDED_SHARES[0] * len(unique))), int(round(sum(SEEDED_SHARES) * len(unique)))
    assigned = dict(zip(unique[order], ["TRAIN"] * cut1 + ["VAL"] * (cut2 - cut1) + ["TEST"] * (len(unique) - cut2)))
    return (np.array([assigned[g] for g in groups.astype(str)], dtype=object),
            f"seeded patient-level {SEEDED_SHARES[0]:.0%}/{SEEDED_SHARES[1]:.0%}/rest (seed {seed})")


# -- tasks ----------------------------------------------------------------------------------
def ef_probe(d: Data) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, val, test = d.mask("TRAIN"), d.mask("VAL"), d.mask("TEST")
    y = d.ef < EF_CUTOFF
    if not (_both_classes(y[train]) and _both_classes(y[test])):
        raise Skip("needs EF labels on both sides of 50% in TRAIN and in TEST")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=5000))
    probe.fit(d.vectors[train], y[train])
    score = probe.predict_proba(d.vectors)[:, list(probe.classes_).index(True)]
    if _both_classes(y[val]):
        threshold, rule = M.accuracy_threshold(y[val], score[val]), "maximum accuracy on VAL (R3D paper)"
        youden = M.youden_threshold(y[val], score[val])
    else:
        threshold, rule, youden = 0.5, "0.5 (VAL lacks one class)", 0.5
    yt, st = y[test], score[test]
    at_youden = M.classification_metrics(yt, st, youden)
    groups, n_groups = M.score_groups(st)
    return {"n": int(test.sum()), "metrics": M.classification_metrics(yt, st, threshold),
            "ci95": {"auc": d.ci(lambda i: M.grouped_auc(groups, n_groups, yt, np.bincount(i, minlength=len(yt))), len(yt)),
                     "auprc": d.ci(lambda i: M.auprc(yt[i], st[i]), len(yt))},
            "details": {"model": f"StandardScaler + LogisticRegression(C={PROBE_C}) on TRAIN", "threshold": threshold,
                        "threshold_rule": rule, "youden_threshold": youden,
                        "at_youden_threshold": {k: at_youden[k] for k in ("accuracy", "recall", "specificity", "f1")}, "n_train": int(train.sum()), "n_val": int(val.sum()),
                        "test_positives": int(yt.sum())}}


def ef_regression(d: Data) -> dict:
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, val, test = d.mask("TRAIN"), d.mask("VAL"), d.mask("TEST")
    if train.sum() < 2 or test.sum() < 1:
        raise Skip("needs EF labels in TRAIN (at least 2) and TEST")

    def fit(alpha: float):
        return make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(d.vectors[train], d.ef[train])

    if val.any():
        alpha = min(RIDGE_ALPHAS, key=lambda a: float(np.abs(fit(a).predict(d.vectors[val]) - d.ef[val]).mean()))
        rule = "lowest MAE on VAL"
    else:
        alpha, rule = RIDGE_DEFAULT_ALPHA, "default (no VAL labels)"
    truth, pred = d.ef[test], fit(alpha).predict(d.vectors[test])
    return {"n": int(test.sum()), "metrics": M.regression_metrics(truth, pred),
            "ci95": {"mae": d.ci(lambda i: float(np.abs(pred[i] - truth[i]).mean()), len(truth))},
            "details": {"model": "StandardScaler + Ridge on TRAIN", "alpha": alpha, "alpha_rule": rule,
                        "alphas": list(RIDGE_ALPHAS), "n_train": int(train.sum())}}


def knn_ef(d: Data) -> dict:
    train, test = d.mask("TRAIN"), d.mask("TEST")
    if not train.any() or not test.any():
        raise Skip("needs EF labels in TRAIN and TEST")
    truth, out, ci, used = d.ef[test], {}, {}, {}
    for k in KNN_K:
        err = np.abs(M.knn_mean(d.vectors[train], d.ef[train], d.vectors[test], k) - truth)
        out[f"mae_k{k}"] = float(err.mean())
        ci[f"mae_k{k}"] = d.ci(lambda i, err=err: float(err[i].mean()), len(err))
        used[f"k{k}"] = min(k, int(train.sum()))
    return {"n": int(test.sum()), "metrics": out, "ci95": ci,
            "details": {"neighbours": "cosine, TRAIN videos, TEST queries", "k_used": used, "n_train": int(train.sum())}}


def neighbour_ef_class(d: Data) -> dict:
    labelled = np.flatnonzero(~np.isnan(d.ef))
    groups = patient_groups(d.patients, d.ids)[labelled]
    low = d.ef[labelled] < EF_CUTOFF
    if not _both_classes(low) or len(set(groups)) < 2:
        raise Skip("needs EF labels of both classes (EF < 50% and >= 50%) in at least two patients")
    agree, chance = M.neighbour_agreement(d.vectors[labelled], low, groups, NEIGHBOUR_K)
    test = np.flatnonzero(d.split[labelled] == "TEST")
    out = {"agreement": float(agree.mean()), "chance": float(chance.mean())}
    ci = {"agreement": d.ci(lambda i: float(agree[i].mean()), len(agree))}
    if len(test):
        out["agreement_test"] = float(agree[test].mean())
        ci["agreement_test"] = d.ci(lambda i: float(agree[test][i].mean()), len(test))
    return {"n": int(len(agree)), "metrics": out, "ci95": ci, "n_by_metric": {"agreement_test": int(len(test))},
            "details": {"neighbours": f"k={NEIGHBOUR_K} cosine, every labelled video, its own patient's videos left out",
                        "agreement": "share of the neighbours in the query's EF < 50% class (what a search shows)",
                        "agreement_test": "the same, TEST queries only", "chance": "the class's share among the candidates"}}


def same_patient(d: Data) -> dict:
    known = np.array([p is not None for p in d.patients])
    idx = np.flatnonzero(known)
    patients, studies = d.patients[idx].astype(str), d.studies[idx]
    if len(set(patients)) < 2 or len(set(patients)) == len(patients):
        raise Skip("needs patient ids with at least two patients and one patient with two videos")
    i, j = M.video_pairs(patients, MAX_PAIRS, np.random.default_rng(d.seed))
    cosine = M.pair_cosines(d.vectors[idx], i, j)
    same = patients[i] == patients[j]
    has_study = np.array([s is not None for s in studies])
    both = has_study[i] & has_study[j]
    same_study = same & both & (studies[i] == studies[j])
    other_study = same & both & (studies[i] != studies[j])
    groups, n_groups = M.score_groups(cosine)
    means = {"mean_cosine_different_patients": float(cosine[~same].mean()), "mean_cosine_same_patient": float(cosine[same].mean())}
    if same_study.any():
        means["mean_cosine_same_study"] = float(cosine[same_study].mean())
    if other_study.any():
        means["mean_cosine_other_study"] = float(cosine[other_study].mean())
    ci = {"auc": d.ci(lambda r: M.grouped_auc(groups, n_groups, same, np.bincount(r, minlength=len(same))), len(same))}
    for name, positive in (("auc_same_study", same_study), ("auc_other_study", other_study)):
        if positive.any():  # these same-patient pairs against the different-patient ones; other pairs left out
            keep = positive | ~same
            means[name] = M.grouped_auc(groups[keep], n_groups, positive[keep])
            ci[name] = d.ci(lambda r, keep=keep, positive=positive: M.grouped_auc(
                groups[keep], n_groups, positive[keep], np.bincount(r, minlength=len(same))[keep]), len(same))
    return {"n": int(len(cosine)),
            "metrics": {"auc": M.grouped_auc(groups, n_groups, same), **means},
            "ci95": ci,
            "details": {"pairs": int(len(cosine)), "same_patient_pairs": int(same.sum()), "videos": int(len(idx)),
                        "patients": int(len(set(patients))),
                        "sampled": bool(len(idx) * (len(idx) - 1) // 2 > MAX_PAIRS),
                        "interval": "pairs resampled as independent units (pairs share videos: a little narrow)"}}


def retrieval(d: Data) -> dict:
    """Video <-> report ranks, the EchoCLIP paper's protocol by default: one seeded random video per study is the
    study's image, so each report has exactly one matching candidate. The other protocol (every video queries,
    a report credits the best video of its study) is reported beside it, its metrics prefixed `every_video_`."""
    catalog = d.store.catalog
    if not catalog.embedding_map(d.encoder, "reports"):
        raise Skip(f"no report vectors for {d.encoder} (encode reports with a text encoder: --target reports)")
    report_ids, report_vectors = d.store.all_vectors(d.encoder, "reports")
    links = catalog.report_links()
    position = {v: k for k, v in enumerate(d.ids)}
    by_study: dict[str, list[int]] = {}
    for k, study in enumerate(d.studies):
        if study is not None:
            by_study.setdefault(study, []).append(k)
    videos_of, unit_of = [], []  # per report: positions of its videos (by video_id, else by study); its study
    for rid in report_ids:
        study, video = links.get(rid, (None, None))
        if video is not None:
            videos_of.append([position[video]] if video in position else [])
            known = video in position and d.studies[position[video]] is not None
            unit_of.append(d.studies[position[video]] if known else f"video:{video}")
        else:
            videos_of.append(by_study.get(study, []))
            unit_of.append(study)
    reports = [r for r, v in enumerate(videos_of) if v]
    if not reports:
        raise Skip("no report links to a video with a vector (reports need a video_id or a study_id with videos)")
    # the paper's protocol: one seeded random video per study (a report naming a video without a study: that video)
    units = sorted({unit_of[r] for r in reports})
    rng = np.random.default_rng(d.seed)
    members = {u: sorted(by_study[u]) if u in by_study else videos_of[next(r for r in reports if unit_of[r] == u)]
               for u in units}
    image = np.array([members[u][int(rng.integers(len(members[u])))] for u in units])
    unit_index = {u: i for i, u in enumerate(units)}
    reports_of_unit = [np.array([r for r in reports if unit_of[r] == u]) for u in units]
    v2r = M.retrieval_ranks(d.vectors[image], report_vectors, reports_of_unit)
    r2v = M.retrieval_ranks(report_vectors[reports], d.vectors[image], [np.array([unit_index[unit_of[r]]]) for r in reports])
    out = {f"video_to_report_{k}": v for k, v in M.rank_metrics(v2r).items()}
    out.update({f"report_to_video_{k}": v for k, v in M.rank_metrics(r2v).items()})
    out["mcmrr"] = (out["video_to_report_mean_rank"] + out["report_to_video_mean_rank"]) / 2
    # the other protocol: every video queries; a report credits the best of its videos
    reports_of: dict[int, list[int]] = {}
    for r in reports:
        for v in videos_of[r]:
            reports_of.setdefault(v, []).append(r)
    videos = sorted(reports_of)
    every_v2r = M.retrieval_ranks(d.vectors[videos], report_vectors, [np.array(reports_of[v]) for v in videos])
    every_r2v = M.retrieval_ranks(report_vectors[reports], d.vectors, [np.array(videos_of[r]) for r in reports])
    every = {f"video_to_report_{k}": v for k, v in M.rank_metrics(every_v2r).items()}
    every.update({f"report_to_video_{k}": v for k, v in M.rank_metrics(every_r2v).items()})
    every["mcmrr"] = (every["video_to_report_mean_rank"] + every["report_to_video_mean_rank"]) / 2
    out.update({f"every_video_{k}": v for k, v in every.items()})
    return {"n": len(units) + len(reports), "metrics": out, "ci95": {},
            "details": {"protocol": f"one random video per study (seed {d.seed}) as the study's image, each report"
                                    " ranked against those images and each image against every report (EchoCLIP paper)",
                        "every_video_protocol": "every video queries every report; a report's rank is that of the best"
                                                " video of its study, among every video",
                        "studies": len(units), "video_queries": len(videos), "report_candidates": len(report_ids),
                        "report_queries": len(reports), "video_candidates": len(d.ids),
                        "rank": "1 + candidates scoring above the best correct one"}}


def zero_shot_ef(d: Data) -> dict:
    from embedstore.encoders.echoclip import zero_shot_ef as predict
    from embedstore.video.read import read_video
    from embedstore.video.regions import MASK_KEY

    if d.model is None and d.encoder not in ZERO_SHOT_ENCODERS:
        raise Skip(f"needs an echoclip or echoclip-r vector set, not {d.encoder}")
    test = [k for k in np.flatnonzero(d.mask("TEST")) if d.paths[k] and Path(d.paths[k]).is_file()]
    if not test:
        raise Skip("no TEST video with an EF label and a readable file")
    model = d.model if d.model is not None else _stored_model(d)
    if getattr(model, "name", d.encoder) == "echoclip-r":
        prompts, values = report_prompts(d)
        procedure = (f"EchoCLIP-R: {len(prompts)} report texts of non-TEST videos as prompts, up to {REPORTS_PER_EF} "
                     f"per integer EF value (seed {d.seed}), frames 0..40 stride 2, top 20% ranks, median")
    else:
        prompts, values = None, None
        procedure = "202 EF prompts, frames 0..40 stride 2, top 20% ranks, median (FACTS.md)"
    mask = d.store.encoder_info(d.encoder)["preprocessing"].get(MASK_KEY, "off")  # as the vectors were prepared
    preds, kept, failed = [], [], 0
    for start in range(0, len(test), ZERO_SHOT_BATCH):
        batch, videos = [], []
        for k in test[start : start + ZERO_SHOT_BATCH]:
            try:
                videos.append(read_video(d.paths[k], mask=mask))
                batch.append(k)
            except EmbedstoreError:
                failed += 1
        if videos:
            preds.append(predict(model, videos, prompts=prompts, values=values))
            kept.extend(batch)
    if not kept:
        raise Skip("no TEST video could be read")
    truth, pred = d.ef[kept], np.concatenate(preds).astype(np.float64)
    y = truth < EF_CUTOFF
    err = np.abs(pred - truth)
    return {"n": len(kept), "metrics": {"mae": float(err.mean()), "auc": M.auc(y, -pred)},
            "ci95": {"mae": d.ci(lambda i: float(err[i].mean()), len(err)),
                     "auc": d.ci(lambda i: M.auc(y[i], -pred[i]), len(y))},
            "details": {"procedure": procedure,
                        "auc_score": "minus the predicted EF", "unreadable": failed}}


def report_prompts(d: Data) -> tuple[list[str], np.ndarray]:
    """EchoCLIP-R's zero-shot EF prompts: up to REPORTS_PER_EF report texts per integer EF value (seeded), from
    reports of labelled non-TEST videos (a report linked by study takes its study's mean EF)."""
    position = {v: k for k, v in enumerate(d.ids)}
    labelled = ~np.isnan(d.ef) & (d.split != "TEST")
    study_ef: dict[str, list[float]] = {}
    for k in np.flatnonzero(labelled):
        if d.studies[k] is not None:
            study_ef.setdefault(d.studies[k], []).append(float(d.ef[k]))
    by_value: dict[int, list[str]] = {}
    for study, video, text in d.store.catalog.reports_with_links():
        if not text:
            continue
        if video is not None:
            k = position.get(video)
            ef = float(d.ef[k]) if k is not None and labelled[k] else None
        else:
            ef = float(np.mean(study_ef[study])) if study in study_ef else None
        if ef is not None:
            by_value.setdefault(int(round(ef)), []).append(text)
    if not by_value:
        raise Skip("echoclip-r zero-shot EF needs report texts of labelled TRAIN/VAL videos as prompts (none found)")
    rng = np.random.default_rng(d.seed)
    prompts, values = [], []
    for value in sorted(by_value):
        texts = by_value[value]
        for i in sorted(rng.choice(len(texts), size=min(REPORTS_PER_EF, len(texts)), replace=False).tolist()):
            prompts.append(texts[i])
            values.append(value)
    return prompts, np.array(values, dtype=np.float32)


def _stored_model(d: Data):
    """The encoder that made the store's vectors, rebuilt and verified from its provenance."""
    info = d.store.encoder_info(d.encoder)
    if is_random(info):
        raise Skip("random-init weights: zero-shot EF from a random text tower is noise (pass a model to force it)")
    try:
        return rebuild(info)
    except EmbedstoreError as exc:
        raise Skip(f"cannot rebuild {d.encoder}: {exc.message}") from None


def _both_classes(y: np.ndarray) -> bool:
    return 0 < int(y.sum()) < len(y)


TASKS: dict[str, Callable[[Data], dict]] = {
    "ef_probe": ef_probe, "ef_regression": ef_regression, "knn_ef": knn_ef, "neighbour_ef_class": neighbour_ef_class,
    "same_patient": same_patient, "retrieval": retrieval, "zero_shot_ef": zero_shot_ef,
}


# -- formatting -----------------------------------------------------------------------------
def to_markdown(report: dict) -> str:
    """The report as markdown: the random-init warning first, provenance, one table, then details."""
    enc, split = report["encoder"], report["split"]
    lines = [report["warning"], ""] if report["warning"] else []
    lines += [f"# Evaluation: {enc['name']} vectors of {report['store']}", "",
              f"- encoder: {enc['name']}, dim {enc['dim']}, weights {enc['weights']} "
              f"(sha256 {enc['weights_sha256']}), embedstore {enc['package_version']}",
              f"- videos: {report['n_videos']}; split: {split['source']} (TRAIN {split['TRAIN']}, VAL {split['VAL']}, "
              f"TEST {split['TEST']})",
              f"- 95% intervals: percentile bootstrap, {report['bootstrap']['resamples']} resamples, "
              f"seed {report['bootstrap']['seed']}", "",
              "| task | metric | value | 95% CI | n |", "|---|---|---|---|---|"]
    for name, task in report["tasks"].items():
        for metric, value in task["metrics"].items():
            ci = task["ci95"].get(metric)
            lines.append(f"| {TITLES[name]} | {metric} | {fmt(value)} | "
                         f"{f'{fmt(ci[0])} - {fmt(ci[1])}' if ci else ''} | {task.get('n_by_metric', {}).get(metric, task['n'])} |")
    lines += ["", "## Details", ""]
    lines += [f"- {TITLES[name]}: " + "; ".join(f"{k} {fmt(v)}" for k, v in task["details"].items())
              for name, task in report["tasks"].items()]
    if report["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- {TITLES[name]}: {why}" for name, why in report["skipped"].items()]
    return "\n".join(lines) + "\n"


def fmt(value) -> str:
    """A figure as the reports print it (4 significant digits; "-" for none); the leaderboard shares it."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.1f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v)}" for k, v in value.items())
    return str(value)
