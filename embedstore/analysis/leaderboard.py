"""`embedstore leaderboard` (also `embedstore eval --all`): every vector set of a store beside the pixel baseline.

Why: a same-patient AUC or an EF probe figure means something only beside what no model at all
reaches on the same videos. Every video vector set of the store, raw and centred (its mean removed,
then re-normalised), and the `pixels` baseline (the stored set, else computed on the fly from the
video files) are scored by analysis/evaluate.py's own tasks on the same videos (those every row
has), with the same seeded split, pair sample and bootstrap resamples. So each row's difference from
the baseline gets a paired bootstrap interval: the same resample indices are drawn for both rows
(metrics.bootstrap_values), and the interval is taken over the per-resample differences.
Two encoders' agreement is the overlap of their 10 nearest neighbours per video.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from embedstore.analysis import metrics as M
from embedstore.analysis.evaluate import TASKS, Data, Skip, fmt, json_ready, data_for
from embedstore.analysis.views import RANDOM_INIT
from embedstore.errors import BadInput
from embedstore.index.centring import centre, vector_mean
from embedstore.store import Store

BASELINE = "pixels"
AGREEMENT_K = 10
# (key, title, task, metric, which way is better)
COLUMNS = (
    ("ef_probe_auc", "EF<50% probe AUC", "ef_probe", "auc", "higher"),
    ("ef_mae", "EF ridge MAE", "ef_regression", "mae", "lower"),
    ("knn_ef_mae", "kNN EF MAE (k=10)", "knn_ef", "mae_k10", "lower"),
    ("neighbour_ef_class", "neighbours' EF class", "neighbour_ef_class", "agreement", "higher"),
    ("same_patient_same_study_auc", "same-patient AUC, same study", "same_patient", "auc_same_study", "higher"),
    ("same_patient_other_study_auc", "same-patient AUC, other study", "same_patient", "auc_other_study", "higher"),
    ("report_mcmrr", "report retrieval MCMRR", "retrieval", "mcmrr", "lower"),
)
ROW_TASKS = tuple(dict.fromkeys(c[2] for c in COLUMNS))


@dataclass
class _Recorded(Data):
    """Data whose intervals keep their bootstrap values, so two rows' differences can be resampled in pairs."""

    replicates: dict = field(default_factory=dict)

    def ci(self, statistic, n: int) -> list[float] | None:
        if self.n_boot <= 0 or n < 2:
            return None
        values = M.bootstrap_values(statistic, n, self.n_boot, self.seed)
        interval = M.percentile_interval(values)
        if interval is not None:
            self.replicates[id(interval)] = values
        return interval


def leaderboard(store: Store, bootstrap: int = 1000, seed: int = 0, centred: bool = True, workers: int = 2,
                progress: bool = False) -> dict:
    """The table as a JSON-ready dict: rows (raw, then centred), differences from the baseline, agreement."""
    sets = video_sets(store)
    stored = {name: store.all_vectors(name, "videos") for name in sets}
    baseline, baseline_source, unavailable = _baseline(store, stored, workers, progress)
    if not stored and baseline is None:
        raise BadInput(f"the store has no video vectors and no readable video files ({unavailable}); "
                       f"encode first: embedstore encode --store {store.path} --encoder NAME")
    every = {**stored, **({} if baseline is None or BASELINE in stored else {BASELINE: baseline})}
    common = sorted(set.intersection(*(set(ids) for ids, _ in every.values())))
    if not common:
        raise BadInput("no video has a vector in every set; encode the same videos with each encoder")
    rows, datas = [], {}
    for name in sorted(every, key=lambda n: (n != BASELINE, n)):
        ids, vectors = every[name]
        position = {item: k for k, item in enumerate(ids)}
        aligned = vectors[[position[i] for i in common]]
        for is_centred in (False, True) if centred else (False,):
            data = _data(store, name, common, centre(aligned, vector_mean(aligned)) if is_centred else aligned,
                         bootstrap, seed)
            datas[(name, is_centred)] = data
            info = store.encoder_info(name) if name in stored else {"weights_sha256": "none", "dim": aligned.shape[1]}
            rows.append(_row(name, info, data, is_centred, name == BASELINE))
    base = next((r for r in rows if r["name"] == BASELINE and not r["centred"]), None)
    if base is not None:
        for row in rows:
            if row is not base:
                _differences(row, base)
    first = datas[next(iter(datas))]
    report = {
        "store": str(store.path), "n_videos": len(common),
        "split": {s: int((first.split == s).sum()) for s in ("TRAIN", "VAL", "TEST")},
        "bootstrap": {"resamples": bootstrap, "seed": seed, "interval": "percentile 95%",
                      "differences": "paired: the same resamples for both rows"},
        "baseline": {"name": BASELINE, "source": baseline_source, "unavailable": unavailable},
        "columns": [{"key": k, "title": t, "task": task, "metric": m, "better": b} for k, t, task, m, b in COLUMNS],
        "rows": [{k: v for k, v in r.items() if k != "_replicates"} for r in rows],
        "agreement": _agreement([n for n, c in datas if not c], datas, bootstrap, seed),
        "vector_sets": {name: len(ids) for name, (ids, _) in every.items()},
    }
    return json_ready(report)


def video_sets(store: Store) -> list[str]:
    """Names of the encoders holding video vectors in this store."""
    return sorted({s["encoder"] for s in store.info()["vector_sets"] if s["target"] == "videos" and s["n"]})


def pixel_vectors(store: Store, items: list[tuple[str, str]], workers: int = 2,
                  progress: bool = False) -> tuple[list[str], np.ndarray, int]:
    """(ids, pixel-baseline vectors, how many files failed) for (video_id, path) pairs, computed now."""
    from embedstore.encode.job import store_encoding
    from embedstore.encode.reader import prepared_stream
    from embedstore.encoders import get_encoder
    from embedstore.progress import bar

    encoder = get_encoder(BASELINE)
    _, preparer = store_encoding(store, encoder)  # the pixels a stored `pixels` set would see (the store's mask)
    ids, inputs, failed = [], [], 0
    with bar(total=len(items), desc="pixel baseline", unit="video", enabled=progress) as pbar:
        for video_id, result in prepared_stream(items, preparer, workers, ahead=2 * max(1, workers)):
            if isinstance(result, str):
                failed += 1
            else:
                ids.append(video_id)
                inputs.append(result)
            pbar.update(1)
    return ids, encoder.embed_prepared(inputs), failed


def _baseline(store: Store, stored: dict, workers: int, progress: bool):
    """(ids, vectors) of the baseline, where they came from, and why there is none (else None)."""
    if BASELINE in stored:
        return stored[BASELINE], "the store's pixels vector set", None
    from pathlib import Path

    wanted = set.intersection(*(set(ids) for ids, _ in stored.values())) if stored else None
    items = [(v["video_id"], v["source_path"]) for v in store.videos()
             if v.get("source_path") and (wanted is None or v["video_id"] in wanted) and Path(v["source_path"]).is_file()]
    if not items:
        return None, None, "no video file of the store is readable here (released vectors only?)"
    ids, vectors, failed = pixel_vectors(store, items, workers, progress)
    if not ids:
        return None, None, f"none of {len(items)} video files could be read"
    source = f"computed now from {len(ids)} video files" + (f" ({failed} unreadable, left out)" if failed else "")
    return (ids, vectors), source, None


def _data(store: Store, name: str, ids: list[str], vectors: np.ndarray, bootstrap: int, seed: int) -> _Recorded:
    data, _ = data_for(store, name, ids, vectors, bootstrap, seed)
    return _Recorded(**{f: getattr(data, f) for f in data.__dataclass_fields__})


def _row(name: str, info: dict, data: _Recorded, is_centred: bool, is_baseline: bool) -> dict:
    """One row: each column's value and interval (and, kept aside, its bootstrap values)."""
    results, skipped = {}, {}
    for task in ROW_TASKS:
        if task == "retrieval" and is_centred:
            skipped[task] = "report vectors are not centred: retrieval is scored on raw vectors only"
            continue
        try:
            results[task] = TASKS[task](data)
        except Skip as why:
            skipped[task] = str(why)
    metrics, replicates = {}, {}
    for key, _, task, metric, _ in COLUMNS:
        if task not in results or results[task]["metrics"].get(metric) is None:
            continue
        interval = results[task]["ci95"].get(metric)
        metrics[key] = {"value": results[task]["metrics"][metric], "ci95": interval}
        if interval is not None and id(interval) in data.replicates:
            replicates[key] = data.replicates[id(interval)]
    chance = results.get("neighbour_ef_class", {}).get("metrics", {}).get("chance")
    return {"name": name, "centred": is_centred, "baseline": is_baseline, "dim": int(info["dim"]),
            "random_init": info["weights_sha256"] == RANDOM_INIT, "weights_sha256": info["weights_sha256"],
            "metrics": metrics, "neighbour_ef_class_chance": chance, "skipped": skipped, "_replicates": replicates}


def _differences(row: dict, base: dict) -> None:
    """Each column's difference from the baseline, with a paired bootstrap interval, in place."""
    for key, cell in row["metrics"].items():
        if key not in base["metrics"]:
            continue
        cell["delta"] = cell["value"] - base["metrics"][key]["value"]
        a, b = row["_replicates"].get(key), base["_replicates"].get(key)
        cell["delta_ci95"] = M.percentile_interval(a - b) if a is not None and b is not None and len(a) == len(b) else None


def _agreement(names: list[str], datas: dict, bootstrap: int, seed: int) -> list[dict]:
    """Share of each video's 10 nearest neighbours two raw vector sets have in common (chance: k / (n - 1))."""
    out = []
    for a, b in combinations(names, 2):
        overlap = M.neighbour_overlap(datas[(a, False)].vectors, datas[(b, False)].vectors, AGREEMENT_K)
        n = len(overlap)
        out.append({"a": a, "b": b, "k": AGREEMENT_K, "overlap": float(np.nanmean(overlap)) if n else None,
                    "ci95": M.bootstrap_ci(lambda i: float(overlap[i].mean()), n, bootstrap, seed),
                    "chance": min(AGREEMENT_K, n - 1) / (n - 1) if n > 1 else None})
    return out


# -- formatting -----------------------------------------------------------------------------
def to_markdown(report: dict) -> str:
    """One table: a row per vector set (raw and centred), each cell its value [95% CI] and its difference
    from the baseline [paired 95% CI]; then the baseline's source, agreement and what was skipped."""
    base = report["baseline"]
    split = report["split"]
    lines = [f"# Leaderboard: {report['store']}", "",
             f"- videos: {report['n_videos']} (those with a vector in every set); split TRAIN {split['TRAIN']}, "
             f"VAL {split['VAL']}, TEST {split['TEST']}; 95% intervals: percentile bootstrap, "
             f"{report['bootstrap']['resamples']} resamples, seed {report['bootstrap']['seed']}",
             f"- baseline: {base['name']} (no weights), " + (base["source"] or f"UNAVAILABLE: {base['unavailable']}"),
             "- cell: value [95% CI]; Δ: minus the raw baseline [paired 95% CI]; ↑/↓: higher/lower is better; "
             "centred: the set's mean removed, re-normalised", ""]
    cols = [c for c in report["columns"] if any(c["key"] in r["metrics"] for r in report["rows"])]
    lines.append("| vectors | " + " | ".join(f"{c['title']} {'↑' if c['better'] == 'higher' else '↓'}" for c in cols) + " |")
    lines.append("|---" * (len(cols) + 1) + "|")
    if not any(r["baseline"] for r in report["rows"]):
        lines.append(f"| {base['name']} (baseline) | " + " | ".join("unavailable" for _ in cols) + " |")
    for row in report["rows"]:
        label = row["name"] + (" centred" if row["centred"] else "") + (" (baseline)" if row["baseline"] else "")
        label += " RANDOM-INIT" if row["random_init"] else ""
        lines.append(f"| {label} | " + " | ".join(_cell(row["metrics"].get(c["key"])) for c in cols) + " |")
    chance = next((r["neighbour_ef_class_chance"] for r in report["rows"] if r["neighbour_ef_class_chance"]), None)
    if chance is not None:
        lines += ["", f"- neighbours' EF class: share of the 5 nearest other-patient neighbours in the video's "
                      f"EF < 50% class; chance {fmt(chance)}"]
    if report["agreement"]:
        lines += ["", f"## Agreement: overlap of the {AGREEMENT_K} nearest neighbours (raw vectors)", ""]
        lines += [f"- {a['a']} vs {a['b']}: {fmt(a['overlap'])}{_ci(a['ci95'])} (chance {fmt(a['chance'])})"
                  for a in report["agreement"]]
    skipped = [(r, t, why) for r in report["rows"] for t, why in r["skipped"].items()]
    if skipped:
        lines += ["", "## Skipped", ""]
        lines += [f"- {r['name']}{' centred' if r['centred'] else ''} {t}: {why}" for r, t, why in skipped]
    return "\n".join(lines) + "\n"


def _cell(cell: dict | None) -> str:
    if cell is None:
        return "-"
    text = f"{fmt(cell['value'])}{_ci(cell['ci95'])}"
    if "delta" in cell:
        text += f" Δ{cell['delta']:+.3g}{_ci(cell.get('delta_ci95'))}"
    return text


def _ci(ci) -> str:
    return f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else ""
