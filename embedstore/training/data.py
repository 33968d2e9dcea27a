"""Which videos train, select and test the classifier, in what order, and how they are batched.

The label is a DuckDB yes/no expression over the videos table (`ef < 50`), checked and evaluated by
embedstore.store.expressions exactly as search's `--where` is: only the table's own columns, literals,
operators and allowed scalar functions, so it can neither change the store nor read anything else,
although training holds the store open for writing. Rows where it is NULL (no EF) are left out and counted.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from embedstore.errors import BadInput
from embedstore.store import Store
from embedstore.store.expressions import labelled_rows

SPLITS = ("TRAIN", "VAL", "TEST")


@dataclass(frozen=True)
class Example:
    video_id: str
    path: str
    label: float  # 1.0 where the label expression holds


@dataclass
class Cohort:
    label: str
    splits: dict[str, list[Example]]
    unlabelled: int  # videos with a file and a split whose label expression is NULL

    def counts(self) -> dict:
        counts = {s: {"n": len(rows), "positive": int(sum(e.label for e in rows))} for s, rows in self.splits.items()}
        return {**counts, "unlabelled": self.unlabelled}


def labelled_videos(store: Store, label: str) -> Cohort:
    """Videos with a file, by split (case-insensitive TRAIN/VAL/TEST), labelled by the expression."""
    rows = labelled_rows(store.catalog, label)
    splits = {s: [Example(v, p, float(y)) for v, p, split, y in rows if split == s and y is not None] for s in SPLITS}
    unlabelled = sum(1 for _, _, split, y in rows if split in SPLITS and y is None)
    return Cohort(label, splits, unlabelled)


def check_cohort(cohort: Cohort) -> None:
    """Training needs TRAIN rows and model selection VAL rows, each holding both classes (VAL AUC)."""
    for split in ("TRAIN", "VAL"):
        rows = cohort.splits[split]
        if not rows:
            counts = ", ".join(f"{s} {len(cohort.splits[s])}" for s in SPLITS)
            raise BadInput(f"no {split} videos with a value for --label {cohort.label!r} ({counts}, "
                           f"{cohort.unlabelled} without a label value); set the videos' split column "
                           "(FileList.csv Split: TRAIN, VAL, TEST)")
        positive = int(sum(e.label for e in rows))
        if positive in (0, len(rows)):
            which = "true" if positive else "false"
            raise BadInput(f"--label {cohort.label!r} is {which} for all {len(rows)} {split} videos; "
                           f"{split} needs both classes (training and model selection by VAL AUC)")


def epoch_order(examples: list[Example], balance: str, rng: np.random.Generator) -> list[Example]:
    """One epoch's examples, shuffled; oversample repeats the minority class up to the majority's count,
    undersample draws the majority class down to the minority's (a new draw every epoch)."""
    pos = [e for e in examples if e.label]
    neg = [e for e in examples if not e.label]
    small, large = sorted((pos, neg), key=len)
    if balance == "oversample":
        chosen = examples + [small[i] for i in rng.choice(len(small), len(large) - len(small))]
    elif balance == "undersample":
        chosen = small + [large[i] for i in rng.choice(len(large), len(small), replace=False)]
    else:
        chosen = list(examples)
    return [chosen[i] for i in rng.permutation(len(chosen))]


def clip(x: np.ndarray, length: int | None, rng: np.random.Generator | None) -> np.ndarray:
    """`length` consecutive frames of a prepared [C, T, H, W] input from a random start; the whole
    input when no length is set, when it is shorter, or when no rng is given (evaluation)."""
    frames = x.shape[1]
    if length is None or rng is None or frames <= length:
        return x
    start = int(rng.integers(0, frames - length + 1))
    return x[:, start : start + length]


def batches(items: Iterable[tuple[Example, np.ndarray]], size: int) -> Iterator[list[tuple[Example, np.ndarray]]]:
    """Consecutive items in groups of up to `size`; inputs of another shape start a new group,
    because whole videos of different lengths cannot be stacked."""
    group: list[tuple[Example, np.ndarray]] = []
    for item in items:
        if group and (len(group) == size or item[1].shape != group[0][1].shape):
            yield group
            group = []
        group.append(item)
    if group:
        yield group
