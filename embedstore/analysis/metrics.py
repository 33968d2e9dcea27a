"""Metric functions on plain arrays (numpy, scikit-learn): the numbers the echo-embedding papers report.

No store access here, so each function can be checked against an independent computation;
analysis/evaluate.py reads the store and calls them. Conventions (FACTS.md): cosine similarity is
the dot product of L2-normalised rows; the positive class of the EF task is EF < 50%; ranks are
1-based; intervals are percentile bootstrap intervals from a seeded generator.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

CHUNK = 1024  # query rows per similarity block: bounds memory at CHUNK x candidates floats
PAIR_CHUNK = 65_536


# -- classification -------------------------------------------------------------------------
def score_groups(scores: np.ndarray) -> tuple[np.ndarray, int]:
    """(group of each score, number of distinct scores), groups in ascending score order.

    Sorting once lets a bootstrap recompute AUC with resampling weights in O(n) (see grouped_auc).
    """
    values, groups = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True)
    return groups.reshape(-1), len(values)


def grouped_auc(groups: np.ndarray, n_groups: int, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """ROC AUC (Mann-Whitney, ties count one half) from score groups; weights are case multiplicities."""
    y = np.asarray(labels, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    pos = np.bincount(groups, weights=w * y, minlength=n_groups)
    neg = np.bincount(groups, weights=w * (1 - y), minlength=n_groups)
    total = pos.sum() * neg.sum()
    if total == 0:
        return float("nan")
    below = np.cumsum(neg) - neg  # negatives scoring strictly lower than each group
    return float(pos @ (below + 0.5 * neg) / total)


def auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
    """ROC AUC of scores for binary labels (NaN when one class is absent)."""
    groups, n_groups = score_groups(scores)
    return grouped_auc(groups, n_groups, labels, weights)


def auprc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve (average precision, as scikit-learn defines it)."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(labels, dtype=bool)
    return float(average_precision_score(y, scores)) if 0 < y.sum() < len(y) else float("nan")


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold maximising Youden's J = sensitivity + specificity - 1 (predict positive at >=)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(np.asarray(labels, dtype=bool), scores)
    best = int(np.argmax((tpr - fpr)[1:])) + 1  # thresholds[0] is +inf: nothing predicted positive
    return float(thresholds[best])


def accuracy_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold maximising accuracy (positive when score >= threshold), the R3D paper's rule on VAL;
    candidates are the scores themselves, ties go to the lowest."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    candidates = np.unique(s)
    accuracy = [((s >= c) == y).mean() for c in candidates]
    return float(candidates[int(np.argmax(accuracy))])


def classification_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """AUC, AUPRC and the confusion-matrix metrics at `threshold` (positive when score >= threshold)."""
    y = np.asarray(labels, dtype=bool)
    pred = np.asarray(scores) >= threshold
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    tn, fn = int((~pred & ~y).sum()), int((~pred & y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "auc": auc(y, scores), "auprc": auprc(y, scores), "accuracy": (tp + tn) / len(y),
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "precision": precision, "recall": recall, "specificity": tn / (tn + fp) if tn + fp else 0.0,
    }


# -- regression -----------------------------------------------------------------------------
def regression_metrics(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and R^2 (NaN when the truth has no variance)."""
    t, p = np.asarray(truth, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    err = p - t
    spread = float(((t - t.mean()) ** 2).sum())
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean())),
            "r2": 1 - float((err**2).sum()) / spread if spread > 0 else float("nan")}


def knn_mean(train: np.ndarray, values: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Mean label of each query's k most cosine-similar training rows (rows are unit vectors)."""
    k = min(k, len(train))
    out = np.empty(len(queries), dtype=np.float64)
    for start in range(0, len(queries), CHUNK):
        sims = queries[start : start + CHUNK] @ train.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out[start : start + len(sims)] = np.asarray(values, dtype=np.float64)[top].mean(axis=1)
    return out


def neighbour_agreement(vectors: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(share of each row's k most cosine-similar rows with its label, the share chance gives), per row.

    Rows of the query's own group (its patient) are never neighbours: another video of the same heart
    would count patient identity as label agreement. Chance is the label's share among those candidates.
    """
    labels, (_, group) = np.asarray(labels), np.unique(np.asarray(groups).astype(str), return_inverse=True)
    classes, label = np.unique(labels, return_inverse=True)
    per_group = np.zeros((group.max() + 1, len(classes)))
    np.add.at(per_group, (group, label), 1)
    candidates = len(labels) - per_group.sum(axis=1)[group]
    chance = (np.bincount(label, minlength=len(classes))[label] - per_group[group, label]) / np.maximum(candidates, 1)
    agree = np.empty(len(labels), dtype=np.float64)
    for start in range(0, len(labels), CHUNK):
        rows = np.arange(start, min(start + CHUNK, len(labels)))
        sims = vectors[rows] @ vectors.T
        sims[group[rows][:, None] == group[None, :]] = -np.inf
        n = int(min(k, candidates[rows].min()))
        top = np.argpartition(-sims, n - 1, axis=1)[:, :n]
        agree[rows] = (label[top] == label[rows][:, None]).mean(axis=1)
    return agree, chance


# -- pairs (same patient) -------------------------------------------------------------------
def video_pairs(groups: np.ndarray, max_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j): all of them when there are at most max_pairs, else every same-group pair
    (sampled down to max_pairs / 2) plus as many sampled different-group pairs.

    The AUC and the per-category mean cosines do not depend on the class ratio, so sampling the
    different-group pairs changes their precision only.
    """
    n = len(groups)
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, 1)
        return i, j
    codes = np.unique(np.asarray(groups, dtype=str), return_inverse=True)[1].reshape(-1)
    members = np.split(np.argsort(codes, kind="stable"), np.cumsum(np.bincount(codes))[:-1])
    same = [np.zeros((0, 2), np.int64)]
    for m in members:  # m is ascending, so m[a] < m[b]
        a, b = np.triu_indices(len(m), 1)
        same.append(np.stack([m[a], m[b]], 1))
    same_pairs = np.concatenate(same)
    half = max_pairs // 2
    if len(same_pairs) > half:
        same_pairs = same_pairs[np.sort(rng.choice(len(same_pairs), half, replace=False))]
    found, need = [], max_pairs - len(same_pairs)
    while need > 0:
        draw = rng.integers(0, n, size=(2 * need, 2))
        draw = np.sort(draw[codes[draw[:, 0]] != codes[draw[:, 1]]], axis=1)[:need]
        found.append(draw)
        need -= len(draw)
    pairs = np.concatenate([same_pairs, *found])
    return pairs[:, 0], pairs[:, 1]


def pair_cosines(vectors: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Cosine of each pair (i[p], j[p]) of unit rows, in blocks to bound memory."""
    out = np.empty(len(i), dtype=np.float64)
    for s in range(0, len(i), PAIR_CHUNK):
        out[s : s + PAIR_CHUNK] = np.einsum("ij,ij->i", vectors[i[s : s + PAIR_CHUNK]], vectors[j[s : s + PAIR_CHUNK]])
    return out


# -- retrieval ------------------------------------------------------------------------------
def retrieval_ranks(queries: np.ndarray, candidates: np.ndarray, relevant: list[np.ndarray]) -> np.ndarray:
    """1-based rank of the best-scoring relevant candidate of each query among all candidates.

    rank = 1 + number of candidates scoring strictly higher than it (ties resolved in its favour).
    """
    ranks = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), CHUNK):
        sims = queries[start : start + CHUNK] @ candidates.T
        for r, row in enumerate(sims):
            best = row[relevant[start + r]].max()
            ranks[start + r] = 1 + int((row > best).sum())
    return ranks


def rank_metrics(ranks: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Mean and median rank, and recall@k (share of queries whose relevant item is in the top k)."""
    r = np.asarray(ranks)
    return {"mean_rank": float(r.mean()), "median_rank": float(np.median(r)),
            **{f"recall@{k}": float((r <= k).mean()) for k in ks}}


# -- intervals ------------------------------------------------------------------------------
def bootstrap_ci(statistic: Callable[[np.ndarray], float], n: int, n_boot: int, seed: int,
                 level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval of statistic(resampled indices); None when it cannot be formed.

    Resamples where the statistic is undefined (NaN: e.g. one class only) are left out; with fewer
    than half of them defined there is no interval.
    """
    if n_boot <= 0 or n < 2:
        return None
    return percentile_interval(bootstrap_values(statistic, n, n_boot, seed), level)


def bootstrap_values(statistic: Callable[[np.ndarray], float], n: int, n_boot: int, seed: int) -> np.ndarray:
    """statistic of each of n_boot seeded resamples of range(n) (NaN where undefined).

    The same (n, n_boot, seed) draws the same resamples, so two statistics over the same units
    (two encoders' errors on the same TEST videos) give a paired bootstrap of their difference.
    """
    rng = np.random.default_rng(seed)
    return np.array([statistic(rng.integers(0, n, n)) for _ in range(n_boot)], dtype=np.float64)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> list[float] | None:
    """Percentile interval of bootstrap values, NaNs left out; None when fewer than half are defined."""
    finite = values[np.isfinite(values)]
    if len(values) == 0 or len(finite) < len(values) / 2:
        return None
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))]


def neighbour_overlap(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Per row: the share of its k most cosine-similar other rows under vectors `a` that are also
    among its k nearest under `b` (two encoders' unit vectors of the same videos, row-aligned)."""
    k = min(k, len(a) - 1)
    out = np.empty(len(a), dtype=np.float64)
    if k < 1:
        return np.full(len(a), np.nan)
    for start in range(0, len(a), CHUNK):
        rows = np.arange(start, min(start + CHUNK, len(a)))
        tops = []
        for vectors in (a, b):
            sims = vectors[rows] @ vectors.T
            sims[np.arange(len(rows)), rows] = -np.inf
            tops.append(np.argpartition(-sims, k - 1, axis=1)[:, :k])
        out[rows] = [len(np.intersect1d(x, y, assume_unique=True)) / k for x, y in zip(*tops)]
    return out
