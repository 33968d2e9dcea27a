"""Study vectors, EchoPrime-style: per study and report section, the L2-normalised view-weighted sum of
the study's video vectors, stored as the `studies` target (item id `<study_id>/<section>`). With
pooling "mean" (PanEcho: videos averaged per study; any encoder) one vector per study instead, the
normalised mean of its videos' vectors, under the pseudo-section "All videos" (no views needed).

The weights are the 15 sections x 11 views table `assets/MIL_weights.csv` of the user's EchoPrime
checkout (not shipped: academic licence). A video needs a view (`embedstore views`); videos without
one, or with a view outside EchoPrime's 11, are left out and counted. A section whose weights are all
zero for a study's views has no vector for that study.

Difference from the authors' code, on purpose: they sum the raw 512-d encoder outputs; the store
holds unit vectors, so each video counts with its weight only (not also with its raw norm).
"""
from __future__ import annotations

import csv
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedstore import config
from embedstore.encoders.views import VIEWS
from embedstore.errors import BadInput, NotFound, WeightsNotFound
from embedstore.store import Store

SECTIONS = ("Left Ventricle", "Resting Segmental Wall Motion Analysis", "Right Ventricle", "Left Atrium",
            "Right Atrium", "Atrial Septum", "Mitral Valve", "Aortic Valve", "Tricuspid Valve", "Pulmonic Valve",
            "Pericardium", "Aorta", "IVC", "Pulmonary Artery", "Pulmonary Veins")
ALL_VIDEOS = "All videos"  # the one section of pooling "mean"
POOLINGS = ("echoprime", "mean")
MIL_FILE = "MIL_weights.csv"
SEPARATOR = "/"


def item_id(study_id: str, section: str) -> str:
    return f"{study_id}{SEPARATOR}{section}"


def find_mil_weights(path: str | Path | None = None) -> Path:
    """MIL_weights.csv: the file given, or assets/MIL_weights.csv in the folder given (an EchoPrime checkout),
    else in $EMBEDSTORE_WEIGHTS/echoprime/; a one-line WeightsNotFound naming the places otherwise."""
    root = config.weights_dir()
    if path is not None:
        places = [Path(path).expanduser()]
    else:
        places = [root / "echoprime"] if root is not None else []
    candidates = [p if p.suffix == ".csv" else q for p in places for q in (p / "assets" / MIL_FILE, p / MIL_FILE)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = " or ".join(str(c) for c in candidates) or "$EMBEDSTORE_WEIGHTS/echoprime/assets/ (EMBEDSTORE_WEIGHTS is unset)"
    raise WeightsNotFound(f"no EchoPrime section weights ({MIL_FILE}, 15 sections x 11 views) in {looked}; pass the "
                          "EchoPrime checkout folder or the file with --mil-weights (it is assets/MIL_weights.csv there)")


def load_mil_weights(path: Path) -> dict[str, dict[str, float]]:
    """{section: {view: weight}} from MIL_weights.csv (header Section + the 11 view names, 15 rows)."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        header, body = rows[0], [r for r in rows[1:] if r]
        table = {r[0]: {view: float(v) for view, v in zip(header[1:], r[1:], strict=True)} for r in body}
    except (OSError, IndexError, ValueError) as exc:
        raise BadInput(f"{path}: not EchoPrime's {MIL_FILE} (Section + 11 view columns): {exc}") from None
    if header[0] != "Section" or sorted(header[1:]) != sorted(VIEWS) or set(table) != set(SECTIONS):
        raise BadInput(f"{path}: expected columns Section, {', '.join(VIEWS)} and the 15 EchoPrime sections;"
                       f" found columns {', '.join(header)} and {len(table)} sections")
    return table


def section_vectors(vectors: np.ndarray, views: list[str], weights: dict[str, dict[str, float]]) -> dict[str, np.ndarray]:
    """{section: L2-normalised sum_i W[section, view_i] * vectors[i]} for sections with a non-zero sum."""
    out = {}
    for section in SECTIONS:
        w = np.array([weights[section][v] for v in views], dtype=np.float64)
        total = (w[:, None] * vectors.astype(np.float64)).sum(axis=0)
        norm = np.linalg.norm(total)
        if norm > 0:
            out[section] = (total / norm).astype(np.float32)
    return out


@dataclass
class StudySummary:
    encoder: str
    studies: int = 0
    added: int = 0
    already: int = 0
    left_out: dict = field(default_factory=dict)
    mil_weights: str = ""

    def as_dict(self) -> dict:
        return {"encoder": self.encoder, "studies": self.studies, "added": self.added, "already": self.already,
                "left_out": self.left_out, "mil_weights": self.mil_weights}


def build_study_vectors(store: Store, encoder: str = "echoprime", mil_weights: str | Path | None = None,
                        pooling: str = "echoprime") -> StudySummary:
    """Write the `studies` vectors of every study whose videos have `encoder` vectors (and, for EchoPrime's
    pooling, views); studies already done are kept (as every vector set, items are added once)."""
    if pooling not in POOLINGS:
        raise BadInput(f"study pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if pooling == "mean" and mil_weights is not None:
        raise BadInput("--mil-weights goes with EchoPrime's view-weighted pooling, not with --pooling mean")
    path = find_mil_weights(mil_weights) if pooling == "echoprime" else None
    weights = load_mil_weights(path) if path else None
    info = store.encoder_info(encoder)
    summary = StudySummary(encoder, mil_weights=path.name if path else "none (mean of the videos)")
    members: dict[str, list[tuple[str, str]]] = defaultdict(list)
    patients: dict[str, str | None] = {}
    left_out: Counter = Counter()
    for video_id, study_id, patient_id, view in store.catalog.study_videos(encoder):
        if weights is None:
            members[study_id].append((video_id, view))
            patients[study_id] = patient_id
        elif view is None:
            left_out["no view (run `embedstore views`)"] += 1
        elif view not in VIEWS:
            left_out[f"view {view!r} is not one of EchoPrime's 11"] += 1
        else:
            members[study_id].append((video_id, view))
            patients[study_id] = patient_id
    summary.left_out = dict(left_out)
    if not members:
        raise BadInput(f"no {encoder} video vectors of videos with a study id and one of EchoPrime's views in {store.path};"
                       f" run `embedstore views --store {store.path}` first" + (f" (left out: {dict(left_out)})" if left_out else ""))
    prov = {"encoder": info["name"], **{k: info[k] for k in ("dim", "weights", "weights_sha256", "package_version", "modalities")},
            "preprocessing": info["preprocessing"]}
    ids, vectors, rows = [], [], []
    for study_id, videos in sorted(members.items()):
        stacked = store.get_vectors(encoder, [v for v, _ in videos])
        pooled = (section_vectors(stacked, [view for _, view in videos], weights) if weights is not None
                  else {ALL_VIDEOS: stacked.mean(axis=0) / np.linalg.norm(stacked.mean(axis=0))})
        for section, vector in pooled.items():
            key = item_id(study_id, section)
            ids.append(key)
            vectors.append(vector)
            rows.append({"item_id": key, "study_id": study_id, "section": section, "patient_id": patients[study_id],
                         "n_videos": len(videos)})
    summary.studies = len(members)
    done = store.catalog.embedded_ids(encoder, "studies")
    summary.already = sum(1 for i in ids if i in done)
    with store.run("studies", {"encoder": encoder, "pooling": pooling, "mil_weights": summary.mil_weights}) as run, store.writer(prov, "studies", run) as write:
        with store.catalog.transaction():
            store.catalog.add_study_sections(rows)
        write(ids, np.stack(vectors))
        summary.added = run.added
    return summary


def section_of(section: str) -> str:
    """The section name as EchoPrime spells it, or "All videos" (case-insensitive), or a one-line BadInput."""
    for name in (*SECTIONS, ALL_VIDEOS):
        if name.lower() == section.strip().lower():
            return name
    raise BadInput(f"unknown section {section!r}; EchoPrime's sections: {', '.join(SECTIONS)}; or {ALL_VIDEOS!r}")


def default_section(store: Store, encoder: str, study_id: str) -> str:
    """Left Ventricle where the study has it, else "All videos" (a store built with pooling mean)."""
    has_lv = store.catalog.rows_for(encoder, "studies", [item_id(study_id, SECTIONS[0])])
    return SECTIONS[0] if has_lv or not store.catalog.rows_for(encoder, "studies", [item_id(study_id, ALL_VIDEOS)]) else ALL_VIDEOS


def study_vector(store: Store, encoder: str, study_id: str, section: str) -> np.ndarray:
    """[1, D] stored `studies` vector of (study, section), or a NotFound saying what to run."""
    key = item_id(study_id, section)
    if not store.catalog.rows_for(encoder, "studies", [key]):
        raise NotFound(f"no {encoder} study vector for study {study_id!r}, section {section!r}; check the id, or run "
                       f"`embedstore studies --store {store.path}` (a section whose view weights are all zero has none)")
    return store.get_vectors(encoder, [key], "studies")
