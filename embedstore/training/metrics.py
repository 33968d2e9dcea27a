"""The paper's Table 3 columns for a binary classifier, computed with scikit-learn.

The threshold is the paper's: the one that maximises accuracy on VAL (analysis.metrics.accuracy_threshold),
applied to TEST; 0.5 only where VAL lacks a class. Youden's J threshold is reported beside it, named.
"""
from __future__ import annotations

import numpy as np

THRESHOLD = 0.5  # on the sigmoid of the logit: only when VAL lacks a class


def binary_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = THRESHOLD) -> dict:
    """AUC, AUPRC, accuracy, precision, recall, specificity, F1; AUC and AUPRC are None with one class."""
    from sklearn.metrics import (accuracy_score, average_precision_score, f1_score, precision_score, recall_score,
                                 roc_auc_score)

    y = np.asarray(labels).astype(int)
    p = np.asarray(probs, dtype=float)
    pred = (p >= threshold).astype(int)
    both = 0 < y.sum() < len(y)
    scores = {
        "auc": roc_auc_score(y, p) if both else None,
        "auprc": average_precision_score(y, p) if both else None,
        "accuracy": accuracy_score(y, pred),
        "precision": precision_score(y, pred, zero_division=0),
        "recall": recall_score(y, pred, zero_division=0),
        "specificity": recall_score(y, pred, pos_label=0, zero_division=0),
        "f1": f1_score(y, pred, zero_division=0),
    }
    return {"n": int(len(y)), "positive": int(y.sum()), "threshold": threshold,
            **{k: None if v is None else round(float(v), 4) for k, v in scores.items()}}
