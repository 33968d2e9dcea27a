"""Prediction by retrieval, EchoPrime-style: a study's section vector against candidate studies, the top k
(default 50), and per label the nan-mean of the neighbours' values (a fraction for 0/1 labels, a mean
for continuous ones), with the neighbours listed and the central 95% of their values as an interval.

Candidates are either the store's own `studies` vectors of the same section (labels: the mean of each
study's videos' ef/esv/edv; the query study itself left out) or EchoPrime's released candidate bank:
a folder with candidate_studies.csv (column Study), candidate_embeddings_p1.pt + _p2.pt (float32,
concatenated on dim 0) and candidate_labels.pkl ({label: {study: value}}). The embeddings are
converted once to candidate_embeddings.npy beside them (or in `cache`) and memory-mapped, so a
1.23M x 512 bank costs page cache, not process memory. candidate_labels.pkl is a pickle: it can run
code, so open only the file of EchoPrime's release.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from embedstore.errors import BadInput, NotFound
from embedstore.index.studies import SEPARATOR, default_section, section_of, study_vector
from embedstore.store import Store

K = 50
BANK_FILES = ("candidate_studies.csv", "candidate_embeddings_p1.pt", "candidate_embeddings_p2.pt", "candidate_labels.pkl")
NPY = "candidate_embeddings.npy"
STORE_LABELS = ("ef", "esv", "edv")
CHUNK = 1 << 16  # candidate rows per matrix product


@dataclass(frozen=True)
class CandidateBank:
    folder: Path
    studies: list[str]
    matrix: np.ndarray  # memory-mapped float32 [N, D]
    labels: dict[str, dict[str, float]]


def open_bank(folder: str | Path, cache: str | Path | None = None) -> CandidateBank:
    """EchoPrime's candidate bank from its folder (candidates_data/ of model_data, or model_data itself)."""
    folder = Path(folder).expanduser()
    if (folder / "candidates_data").is_dir():
        folder = folder / "candidates_data"
    missing = [name for name in BANK_FILES if not (folder / name).is_file()]
    npy = Path(cache).expanduser() / NPY if cache else folder / NPY
    if npy.is_file():
        missing = [m for m in missing if not m.startswith("candidate_embeddings_p")]
    if missing:
        raise NotFound(f"EchoPrime candidate bank: {', '.join(missing)} not found in {folder}; give the"
                       " candidates_data folder of EchoPrime's model_data")
    return _open_bank(folder, npy)


@lru_cache(maxsize=2)
def _open_bank(folder: Path, npy: Path) -> CandidateBank:
    with open(folder / "candidate_studies.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if "Study" not in (reader.fieldnames or []):
            raise BadInput(f"{folder / 'candidate_studies.csv'}: no Study column")
        studies = [row["Study"] for row in reader]
    if not npy.is_file():
        convert_embeddings(folder, npy)
    matrix = np.load(npy, mmap_mode="r")
    if matrix.ndim != 2 or matrix.shape[0] != len(studies) or matrix.dtype != np.float32:
        raise BadInput(f"{npy}: {matrix.shape} {matrix.dtype} candidate vectors for {len(studies)} studies;"
                       " expected float32 [studies, dim]")
    return CandidateBank(folder, studies, matrix, _read_labels(folder / "candidate_labels.pkl"))


def convert_embeddings(folder: Path, npy: Path) -> None:
    """candidate_embeddings_p1.pt + _p2.pt -> one float32 .npy (written aside, then renamed in)."""
    import torch

    parts = []
    for name in ("candidate_embeddings_p1.pt", "candidate_embeddings_p2.pt"):
        try:
            part = torch.load(folder / name, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle and zip errors have no common base
            raise BadInput(f"{folder / name}: not a loadable tensor file ({type(exc).__name__})") from exc
        if not isinstance(part, torch.Tensor) or part.ndim != 2:
            raise BadInput(f"{folder / name}: expected a 2-D float tensor of candidate embeddings")
        parts.append(part)
    if parts[0].shape[1] != parts[1].shape[1]:
        raise BadInput(f"{folder}: candidate embedding parts have dims {parts[0].shape[1]} and {parts[1].shape[1]}")
    rows = sum(p.shape[0] for p in parts)
    tmp = npy.with_name(f".{npy.name}.partial")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, parts[0].shape[1]))
    start = 0
    for part in parts:
        out[start : start + part.shape[0]] = part.float().numpy()
        start += part.shape[0]
    out.flush()
    del out
    os.replace(tmp, npy)


def _read_labels(path: Path) -> dict[str, dict[str, float]]:
    import pandas as pd

    try:
        labels = pd.read_pickle(path)
    except Exception as exc:  # a pickle can fail in any way
        raise BadInput(f"{path}: not a readable candidate_labels pickle ({type(exc).__name__})") from exc
    if hasattr(labels, "to_dict"):  # a DataFrame: columns are labels, the index the studies
        labels = labels.to_dict()
    if not isinstance(labels, dict):
        raise BadInput(f"{path}: expected {{label: {{study: value}}}}")
    return {str(k): {str(s): _float(v) for s, v in dict(values).items()} for k, values in labels.items()}


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def top_k(matrix: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the k largest dot products, best first; reads the (memory-mapped) matrix in chunks."""
    best_scores, best_rows = np.zeros(0, np.float32), np.zeros(0, np.int64)
    for start in range(0, len(matrix), CHUNK):
        scores = np.asarray(matrix[start : start + CHUNK], dtype=np.float32) @ query
        take = min(k, len(scores))
        part = np.argpartition(-scores, take - 1)[:take]
        best_scores = np.concatenate([best_scores, scores[part]])
        best_rows = np.concatenate([best_rows, part + start])
        if len(best_scores) > k:
            keep = np.argpartition(-best_scores, k - 1)[:k]
            best_scores, best_rows = best_scores[keep], best_rows[keep]
    order = np.lexsort((best_rows, -best_scores))
    return best_scores[order], best_rows[order]


def summarise(values: list[float]) -> dict | None:
    """nan-mean of the values, how many counted, and the central 95% of them; None when none is a number."""
    arr = np.array([v for v in values if v is not None], dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if len(arr) == 0:
        return None
    low, high = np.percentile(arr, [2.5, 97.5])
    return {"mean": float(arr.mean()), "n": int(len(arr)), "interval": [float(low), float(high)]}


def read_phenotype_sections(path: str | Path) -> dict[str, str]:
    """{label: section} from EchoPrime's assets/section_to_phenotypes.pkl ({section: [labels]}; a pickle, so
    open only the file of their checkout)."""
    import pandas as pd

    try:
        mapping = pd.read_pickle(Path(path).expanduser())
        out = {str(label): section_of(str(section)) for section, labels in dict(mapping).items() for label in labels}
    except BadInput:
        raise
    except Exception as exc:  # a pickle can fail in any way
        raise BadInput(f"{path}: not EchoPrime's section_to_phenotypes pickle ({type(exc).__name__})") from exc
    return out


def _bank_neighbours(candidates: CandidateBank, query: np.ndarray, k: int, names: list[str]) -> list[dict]:
    scores, rows = top_k(candidates.matrix, query, k)
    studies = [candidates.studies[r] for r in rows]
    out = []
    for s, score in zip(studies, scores.tolist()):
        held = {n: candidates.labels[n][s] for n in names if s in candidates.labels[n]}
        labels = {n: None if math.isnan(v) else v for n, v in held.items()}  # NaN = no value; None is valid JSON
        out.append({"study_id": s, "score": float(score), "labels": labels})
    return out


def predict(store: Store, study_id: str, encoder: str = "echoprime", section: str | None = None, k: int = K,
            bank: str | Path | None = None, labels: list[str] | None = None, cache: str | Path | None = None,
            phenotypes: str | Path | None = None) -> dict:
    """Labels of `study_id` predicted from its k nearest candidate studies (store or EchoPrime bank).

    With `phenotypes` (EchoPrime's section_to_phenotypes.pkl, bank only) each label is predicted from the
    neighbours of its own section's vector, as the authors' predict_metrics does; `neighbours` lists
    those of `section` and `neighbours_by_section` the ids per section used."""
    if k < 1:
        raise BadInput(f"k must be at least 1, got {k}")
    if phenotypes is not None and bank is None:
        raise BadInput("--phenotypes maps the candidate bank's labels to sections; it goes with --bank")
    section = section_of(section) if section else default_section(store, encoder, study_id)
    query = study_vector(store, encoder, study_id, section)[0]
    out = {"study_id": study_id, "section": section, "encoder": encoder, "k": k}
    if bank is not None:
        candidates = open_bank(bank, cache)
        if candidates.matrix.shape[1] != len(query):
            raise BadInput(f"the bank's vectors are {candidates.matrix.shape[1]}-d, the store's {encoder} study vectors"
                           f" {len(query)}-d; the bank belongs to EchoPrime's 512-d encoder")
        names = labels or sorted(candidates.labels)
        unknown = sorted(set(names) - set(candidates.labels))
        if unknown:
            raise BadInput(f"the bank has no label {', '.join(unknown)}; it has {', '.join(sorted(candidates.labels)[:20])}")
        neighbours = _bank_neighbours(candidates, query, k, names)
        out["source"] = f"EchoPrime candidate bank ({len(candidates.studies)} studies)"
    else:
        names = labels or list(STORE_LABELS)
        own = store.catalog.study_labels(tuple(names))
        item_ids, matrix = store.all_vectors(encoder, "studies")
        suffix = f"{SEPARATOR}{section}"
        keep = np.array([i.endswith(suffix) and i != f"{study_id}{suffix}" for i in item_ids], dtype=bool)
        if not keep.any():
            raise NotFound(f"no other {encoder} study vectors of section {section!r} in {store.path}")
        rows_kept = np.nonzero(keep)[0]
        scores, rows = top_k(matrix[rows_kept], query, k)
        ids = [item_ids[rows_kept[r]][: -len(suffix)] for r in rows]
        neighbours = [{"study_id": s, "score": float(score), "labels": own.get(s, {})} for s, score in zip(ids, scores.tolist())]
        out["source"] = "store"
    predictions = {n: summarise([nb["labels"].get(n) for nb in neighbours]) for n in names}
    if phenotypes is not None:
        sections = read_phenotype_sections(phenotypes)
        unmapped = sorted(set(names) - set(sections))
        if unmapped:
            raise BadInput(f"{phenotypes}: no section for label(s) {', '.join(unmapped[:10])}")
        out["neighbours_by_section"] = {}
        for sec in sorted({sections[n] for n in names}, key=list(sections.values()).index):
            own_names = [n for n in names if sections[n] == sec]
            if not store.catalog.rows_for(encoder, "studies", [f"{study_id}{SEPARATOR}{sec}"]):
                predictions.update({n: None for n in own_names})  # the study has no vector for this section
                continue
            found = _bank_neighbours(candidates, study_vector(store, encoder, study_id, sec)[0], k, own_names)
            out["neighbours_by_section"][sec] = [nb["study_id"] for nb in found]
            for n in own_names:
                result = summarise([nb["labels"].get(n) for nb in found])
                predictions[n] = None if result is None else {**result, "section": sec}
    return {**out, "predictions": predictions, "neighbours": neighbours,
            "interval": "central 95% (2.5th-97.5th percentile) of the neighbours' values"}
