"""`embedstore audit`: exact and near duplicates, patient/study leakage across splits, overlap with another store.

Why here and not in an image tool: leakage in echo data is about patients, studies and clips, which
the catalog knows. What the audit does, in order:
- threshold: the cosine above which two vectors are "the same clip as far as this encoder can tell",
  chosen from the data (see `choose_threshold`), or given;
- near-duplicates: top-k neighbours of every vector through the store's own index
  (`Searcher.neighbours_many`, one FAISS call per batch; rows whose k-th neighbour is still above the
  threshold are asked again with 4k), never all pairs, so it stays sub-quadratic;
- exact duplicates: the same file bytes (sha256 in the catalog), and the same decoded frames under
  another container (frames hashed, only for pairs whose vectors are identical: identical frames
  give identical vectors, so no other pair can be one);
- leakage: patients and studies with videos in more than one split, near-duplicate pairs across
  splits, and near-duplicate clusters across splits (what is left for EchoNet-style data without
  patient ids);
- `against`: the other store's vectors searched in this store's index (same encoder, nothing copied);
- a suggested re-split: groups = patients joined by near-duplicate clusters, seeded, stratified by
  EF class, written as a CSV that `embedstore split --apply` takes.
"""
from __future__ import annotations

import csv
import hashlib
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path

import numpy as np

from embedstore.analysis.evaluate import EF_CUTOFF, SEEDED_SHARES, SPLITS
from embedstore.errors import BadInput, Conflict, EmbedstoreError, NotFound
from embedstore.index.centring import centre
from embedstore.index.search import Searcher
from embedstore.progress import bar
from embedstore.store import Store, open_store
from embedstore.video.read import Video, read_video
from embedstore.video.regions import mask_video
from embedstore.video.write import write_video

KINDS = ("patient", "study", "duplicate", "near-duplicate")
AUDIT_K = 10  # neighbours asked per vector; more for the rows whose k-th is still a near-duplicate
BATCH = 4096  # query vectors per FAISS call
LEVEL_SAMPLE = 10_000  # vectors whose nearest neighbour sets the distinct-neighbour level
SAMPLE_VIDEOS = 8  # videos re-encoded under perturbations to choose the threshold
CROP_SHIFT_PX = 2
FRAME_OFFSET = 2
VECTORS_ONLY_FACTOR = 10  # vectors only: a near-duplicate is 10x closer than the median nearest neighbour
SAME_VECTOR_MIN_COSINE = 0.9999  # pairs this close have their decoded frames compared
WORST = 20
THUMBNAIL = "/videos/{}/thumbnail"
COLUMNS = ("video_id", "sha256", "patient_id", "study_id", "split", "ef", "source_path")


@dataclass
class Audit:
    """The report (JSON-ready, what every surface shows) and the suggested split of every video."""

    report: dict
    resplit: dict[str, str] = field(default_factory=dict)

    def found(self, kinds: list[str]) -> list[str]:
        """The kinds among `kinds` the audit found (non-zero count)."""
        return [k for k in kinds if self.report["counts"][k]["total"]]


def parse_kinds(text: str | None) -> list[str]:
    """`--fail-on patient,study,...` as a list; BadInput naming the known kinds."""
    kinds = [k.strip() for k in (text or "").split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise BadInput(f"--fail-on {unknown[0]!r} is not a kind the audit checks; use some of {', '.join(KINDS)}")
    return kinds


# -- the audit ----------------------------------------------------------------------------------
def audit(store: Store, encoder: str, against: str | Path | None = None, threshold: float | None = None,
          k: int = AUDIT_K, sample: int = SAMPLE_VIDEOS, seed: int = 0, progress: bool = False,
          searcher: Searcher | None = None) -> Audit:
    """Audit one store's videos (and their overlap with `against`); see the module docstring.
    `searcher`: the store's loaded videos Searcher of this encoder, when the caller holds one (the service)."""
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise BadInput(f"--threshold must be a cosine between -1 and 1, got {threshold}")
    searcher = searcher or Searcher(store, encoder)
    videos = store.catalog.video_table(COLUMNS)
    chosen = choose_threshold(store, searcher, threshold, sample, seed)
    pairs = near_pairs(searcher, chosen["value"], k, progress)
    ids = np.array(searcher.ids, dtype=object)
    row_pos = {int(r): i for i, r in enumerate(searcher.rows)}
    info = {v: dict(zip(COLUMNS, values)) for v, *values in zip(videos["video_id"], *(videos[c] for c in COLUMNS))}
    near = [(str(ids[row_pos[a]]), str(ids[row_pos[b]]), s) for a, b, s in pairs]
    duplicates = _byte_duplicates(videos) + _frame_duplicates(near, info)
    report = {
        "store": store.path.name, "encoder": encoder, "videos": len(videos["video_id"]), "vectors": searcher.size,
        "index": searcher.sidecar.get("factory"), "threshold": chosen, "k": k,
        "duplicates": [_pair(a, b, s, info, info, kind=kind) for a, b, s, kind in duplicates],
        "near_duplicates": _near_report(near, info),
        "clusters": _cluster_report(near, duplicates, info),
        "patients": _spread(videos, "patient_id"), "studies": _spread(videos, "study_id"),
    }
    if against is not None:
        report["against"] = _against(store, searcher, encoder, against, chosen["value"], k, info, progress)
    report["counts"] = _counts(report)
    resplit, report["resplit"] = suggest_split(videos, near, duplicates, seed)
    return Audit(report, resplit)


def choose_threshold(store: Store, searcher: Searcher, given: float | None, sample: int, seed: int) -> dict:
    """The near-duplicate cosine threshold and how it was chosen.

    level = median cosine between a vector and its nearest other vector (a seeded sample): how close
    distinct videos sit. With video files and a rebuildable encoder, `sample` videos are re-encoded
    after a crop shift, a re-compression and a frame offset; a perturbation whose copies stay above
    the level is one this encoder sees through, and the threshold is the lowest cosine of those
    copies to their originals (a perturbation that falls below the level is reported and left out:
    the encoder cannot tell those copies from other clips). Vectors only (released vectors, no
    files, weights not at hand): a pair is a near-duplicate when its cosine distance is under
    1/VECTORS_ONLY_FACTOR of the level's.
    """
    level = _neighbour_level(searcher, seed)
    base = {"distinct_neighbour_median": round(level, 6)}
    if given is not None:
        return {"value": float(given), "method": "given", "how": f"--threshold {given} (given)", **base}
    picked, why = _perturbation_threshold(store, searcher, level, sample, seed)
    if picked is not None:
        return {**picked, **base}
    value = 1.0 - (1.0 - level) / VECTORS_ONLY_FACTOR
    how = (f"{value:.6f}: vectors only ({why}); a pair is a near-duplicate when its cosine distance is under "
           f"1/{VECTORS_ONLY_FACTOR} of the median distance between a vector and its nearest other vector "
           f"({1 - level:.3g})")
    return {"value": float(value), "method": "vectors-only", "how": how, **base}


def _neighbour_level(searcher: Searcher, seed: int) -> float:
    rows = searcher.rows
    if len(rows) < 2:
        return 1.0
    pick = np.sort(np.random.default_rng(seed).choice(rows, min(LEVEL_SAMPLE, len(rows)), replace=False))
    scores, _ = searcher.neighbours_many(searcher.vectors_at(pick), 1, exclude_rows=pick)
    return float(np.median(scores[:, 0]))


def _perturbation_threshold(store: Store, searcher: Searcher, level: float, sample: int,
                            seed: int) -> tuple[dict | None, str]:
    """(threshold from re-encoded sample videos, or None and why not)."""
    table = dict(zip(*(store.catalog.video_table(("video_id", "source_path")).values())))
    with_files = [i for i in searcher.ids if table.get(i) and Path(table[i]).is_file()]
    if not with_files or sample <= 0:
        return None, "the store has no video files to re-encode"
    try:
        query = searcher.query_encoder  # the set's encoder, and the mask its videos were read with
        model = query.model
    except EmbedstoreError as exc:
        return None, f"the encoder cannot be rebuilt here: {exc.message}"
    chosen = np.random.default_rng(seed).choice(len(with_files), min(sample, len(with_files)), replace=False)
    cosines: dict[str, list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="embedstore-audit-") as tmp:
        for n in sorted(chosen.tolist()):
            try:
                video = read_video(table[with_files[n]])
                variants = perturbations(video, Path(tmp))
            except EmbedstoreError:  # an unreadable file is left out of the sample, as a batch goes on past it
                continue
            vectors = model.embed_videos([mask_video(v, query.mask) for v in (video, *variants.values())])
            if searcher.centre is not None:  # compared as the index compares (a centred index: centred cosines)
                vectors = centre(vectors, searcher.centre)
            for name, vector in zip(variants, vectors[1:]):
                cosines[name].append(float(vector @ vectors[0]))
    if not cosines:
        return None, "none of the sample videos could be read"
    lowest = {name: min(values) for name, values in cosines.items()}
    kept = {name: value for name, value in lowest.items() if value > level}
    dropped = sorted(set(lowest) - set(kept))
    sampled = max(len(v) for v in cosines.values())
    details = {"sample_videos": sampled, "lowest_cosine": {k: round(v, 6) for k, v in lowest.items()},
               "left_out": dropped}
    if not kept:
        return None, (f"every perturbation moved the vectors below the distinct-neighbour median {level:.6f} "
                      f"({', '.join(f'{k} {v:.6f}' for k, v in lowest.items())})")
    value = min(kept.values())
    how = (f"{value:.6f}: the lowest cosine between {sampled} sample videos and their re-encodings under "
           f"{', '.join(kept)}")
    if dropped:
        how += (f"; left out {', '.join(f'{d} (lowest {lowest[d]:.6f})' for d in dropped)}: below the median cosine "
                f"{level:.6f} between distinct neighbouring videos, so this encoder cannot tell those copies from other clips")
    return {"value": float(value), "method": "perturbations", "how": how, **details}, ""


def perturbations(video: Video, folder: Path) -> dict[str, Video]:
    """The small edits a copy of a clip goes through: a re-crop, a re-export, a trim."""
    s, frames = CROP_SHIFT_PX, video.frames
    out = {f"crop shift {s} px": replace(video, frames=np.pad(frames[:, s:, s:], ((0, 0), (0, s), (0, s), (0, 0)), mode="edge"))}
    even = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]  # H.264 4:2:0 needs even sides
    path = write_video(folder / "recompressed.mp4", even, fps=video.fps, codec="libx264")
    out["re-compression (H.264)"] = read_video(path)
    if video.n_frames > FRAME_OFFSET + 2:
        out[f"frame offset {FRAME_OFFSET}"] = replace(video, frames=frames[FRAME_OFFSET:])
    return out


def near_pairs(searcher: Searcher, threshold: float, k: int, progress: bool = False) -> list[tuple[int, int, float]]:
    """(row a < row b, cosine) of every pair at or above threshold that the index finds, best first."""
    found: dict[tuple[int, int], float] = {}
    rows = searcher.rows
    k = max(1, min(k, searcher.size - 1))
    with bar(total=len(rows), desc="near-duplicates", unit="vector", enabled=progress) as pbar:
        for start in range(0, len(rows), BATCH):
            todo, width = rows[start:start + BATCH], k
            vectors = searcher.vectors_at(todo)
            while len(todo):
                scores, hits = searcher.neighbours_many(vectors, width, exclude_rows=todo)
                for i, j in zip(*np.nonzero((scores >= threshold) & (hits >= 0))):
                    a, b = sorted((int(todo[i]), int(hits[i, j])))
                    found[(a, b)] = max(found.get((a, b), -1.0), float(scores[i, j]))
                full = scores[:, -1] >= threshold  # k-th still a near-duplicate: there may be more
                if width >= searcher.size - 1 or not full.any():
                    break
                todo, vectors, width = todo[full], vectors[full], min(4 * width, searcher.size - 1)
            pbar.update(min(BATCH, len(rows) - start))
    return sorted(((a, b, s) for (a, b), s in found.items()), key=lambda p: -p[2])


# -- exact duplicates ---------------------------------------------------------------------------
def _byte_duplicates(videos: dict[str, list]) -> list[tuple[str, str, float | None, str]]:
    by_hash: dict[str, list[str]] = defaultdict(list)
    for video_id, digest in zip(videos["video_id"], videos["sha256"]):
        if digest:
            by_hash[digest].append(video_id)
    return [(a, b, None, "bytes") for group in by_hash.values() for a, b in combinations(sorted(group), 2)]


def _frame_duplicates(near: list[tuple[str, str, float]], info_a: dict,
                      info_b: dict | None = None) -> list[tuple[str, str, float, str]]:
    """Pairs with identical vectors, other bytes and the same decoded frames (another container, a remux)."""
    info_b = info_b or info_a
    out = []
    for a, b, score in near:
        if score < SAME_VECTOR_MIN_COSINE:
            break  # near is sorted best first
        ra, rb = info_a.get(a, {}), info_b.get(b, {})
        if ra.get("sha256") and ra.get("sha256") == rb.get("sha256"):
            continue  # already a byte duplicate
        fa, fb = _frames_hash(ra.get("source_path")), _frames_hash(rb.get("source_path"))
        if fa is not None and fa == fb:
            out.append((a, b, score, "frames"))
    return out


def _frames_hash(path: str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    try:
        frames = read_video(path).frames
    except EmbedstoreError:
        return None
    return hashlib.sha256(repr(frames.shape).encode() + frames.tobytes()).hexdigest()


# -- leakage ------------------------------------------------------------------------------------
def _split_pair(a: str | None, b: str | None) -> str | None:
    """'TEST/TRAIN' for two different known splits, else None."""
    return "/".join(sorted((a, b))) if a and b and a != b else None


def _pair(a: str, b: str, score: float | None, info_a: dict, info_b: dict, kind: str | None = None) -> dict:
    ra, rb = info_a.get(a, {}), info_b.get(b, {})
    out = {"a": a, "b": b, "score": None if score is None else round(float(score), 6),
           "split_a": ra.get("split"), "split_b": rb.get("split"),
           "patient_a": ra.get("patient_id"), "patient_b": rb.get("patient_id"),
           # the service's thumbnail route (pixels masked there) for this store's videos with a file
           "thumbnail_a": THUMBNAIL.format(a) if ra.get("source_path") else None,
           "thumbnail_b": THUMBNAIL.format(b) if rb.get("source_path") and info_b is info_a else None}
    return {**out, "kind": kind} if kind else out


def _near_report(near: list[tuple[str, str, float]], info: dict) -> dict:
    by_pair = Counter(_split_pair(info.get(a, {}).get("split"), info.get(b, {}).get("split")) for a, b, _ in near)
    cross = [p for p in near if _split_pair(info.get(p[0], {}).get("split"), info.get(p[1], {}).get("split"))]
    return {"pairs": len(near), "cross_split": len(cross),
            "by_split_pair": dict(sorted((k, v) for k, v in by_pair.items() if k)),
            "worst": [_pair(a, b, s, info, info) for a, b, s in (cross or near)[:WORST]]}


def _groups(n_ids: list[str], links) -> dict[str, str]:
    """Union-find over ids: id -> root id of its group."""
    parent = {i: i for i in n_ids}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in links:
        if a in parent and b in parent:
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return {i: root(i) for i in n_ids}


def _cluster_report(near: list, duplicates: list, info: dict) -> dict:
    members = sorted({x for a, b, *_ in near + duplicates for x in (a, b)})
    roots = _groups(members, [(a, b) for a, b, *_ in near + duplicates])
    clusters: dict[str, list[str]] = defaultdict(list)
    for i, r in roots.items():
        clusters[r].append(i)
    cross = []
    for group in clusters.values():
        splits = sorted({info.get(i, {}).get("split") for i in group} - {None})
        if len(splits) > 1:
            cross.append({"videos": sorted(group), "splits": splits})
    by_splits = Counter("/".join(c["splits"]) for c in cross)
    return {"clusters": len(clusters), "cross_split": len(cross), "by_splits": dict(sorted(by_splits.items())),
            "examples": sorted(cross, key=lambda c: -len(c["videos"]))[:WORST]}


def _spread(videos: dict[str, list], key: str) -> dict:
    """Patients (or studies) with videos in more than one split."""
    splits: dict[str, Counter] = defaultdict(Counter)
    for owner, split in zip(videos[key], videos["split"]):
        if owner is not None and split:
            splits[owner][split] += 1
    spread = {o: dict(sorted(c.items())) for o, c in splits.items() if len(c) > 1}
    by_splits = Counter("/".join(sorted(c)) for c in spread.values())
    return {"in_several_splits": len(spread), "by_splits": dict(sorted(by_splits.items())),
            "examples": [{key: o, "videos_by_split": c} for o, c in sorted(spread.items())[:WORST]]}


# -- against another store ----------------------------------------------------------------------
def _against(store: Store, searcher: Searcher, encoder: str, other_path: str | Path, threshold: float, k: int,
             info: dict, progress: bool) -> dict:
    """Near and exact duplicates between this store and another one encoded with the same encoder."""
    with open_store(other_path, read_only=True) as other:
        mine, theirs = store.encoder_info(encoder), other.encoder_info(encoder)
        differ = [key for key in ("dim", "weights_sha256", "preprocessing") if mine[key] != theirs[key]]
        if differ:
            raise Conflict(f"--against store's {encoder} vectors differ from this store's in {', '.join(differ)}; "
                           f"both stores must be encoded with the same encoder and weights")
        other_videos = other.catalog.video_table(COLUMNS)
        other_info = {v: dict(zip(COLUMNS, values)) for v, *values in zip(other_videos["video_id"], *(other_videos[c] for c in COLUMNS))}
        ids = np.array(searcher.ids, dtype=object)
        row_pos = {int(r): i for i, r in enumerate(searcher.rows)}
        found: list[tuple[str, str, float]] = []
        k = min(k, searcher.size)
        for batch_ids, vectors in other.iter_vectors(encoder, batch_size=BATCH):
            scores, hits = searcher.neighbours_many(vectors, k)
            for i, j in zip(*np.nonzero((scores >= threshold) & (hits >= 0))):
                found.append((str(ids[row_pos[int(hits[i, j])]]), batch_ids[i], float(scores[i, j])))
        found.sort(key=lambda p: -p[2])
        mine_hashes: dict[str, list[str]] = defaultdict(list)
        for video_id, row in info.items():
            if row["sha256"]:
                mine_hashes[row["sha256"]].append(video_id)
        duplicates = [(a, b, None, "bytes") for b, digest in zip(other_videos["video_id"], other_videos["sha256"])
                      if digest for a in mine_hashes.get(digest, [])]
        duplicates += _frame_duplicates(found, info, other_info)
        by_pair = Counter(f"{info.get(a, {}).get('split') or '-'}/{other_info.get(b, {}).get('split') or '-'}" for a, b, _ in found)
        return {"store": Path(other_path).name, "videos": len(other_videos["video_id"]),
                "duplicates": [_pair(a, b, s, info, other_info, kind=kind) for a, b, s, kind in duplicates],
                "near_duplicates": {"pairs": len(found), "by_split_pair": dict(sorted(by_pair.items())),
                                    "worst": [_pair(a, b, s, info, other_info) for a, b, s in found[:WORST]]}}


def _counts(report: dict) -> dict:
    """Per kind: the total that --fail-on looks at and its split pairs."""
    near, against = report["near_duplicates"], report.get("against")
    dup_pairs = Counter(_split_pair(d["split_a"], d["split_b"]) or "same split" for d in report["duplicates"])
    counts = {
        "patient": {"total": report["patients"]["in_several_splits"], "by_split_pair": report["patients"]["by_splits"]},
        "study": {"total": report["studies"]["in_several_splits"], "by_split_pair": report["studies"]["by_splits"]},
        "duplicate": {"total": len(report["duplicates"]), "by_split_pair": dict(sorted(dup_pairs.items()))},
        "near-duplicate": {"total": near["cross_split"], "by_split_pair": near["by_split_pair"],
                           "clusters_across_splits": report["clusters"]["cross_split"]},
    }
    if against:
        counts["duplicate"]["total"] += len(against["duplicates"])
        counts["duplicate"]["against"] = len(against["duplicates"])
        counts["near-duplicate"]["total"] += against["near_duplicates"]["pairs"]
        counts["near-duplicate"]["against"] = against["near_duplicates"]["pairs"]
    return counts


# -- a patient-grouped re-split ------------------------------------------------------------------
def suggest_split(videos: dict[str, list], near: list, duplicates: list, seed: int) -> tuple[dict[str, str], dict]:
    """(video -> split, summary): groups = a patient's videos joined with their near-duplicate clusters,
    assigned whole to one split, seeded, within each EF class (EF < 50%, >= 50%, unknown) to the
    store's split shares (70/15/15 when the store has no complete split)."""
    ids = videos["video_id"]
    links = [(a, b) for a, b, *_ in near + duplicates]
    first_of_patient: dict[str, str] = {}
    for video_id, patient in zip(ids, videos["patient_id"]):
        if patient is not None:
            links.append((first_of_patient.setdefault(patient, video_id), video_id))
    roots = _groups(list(ids), links)
    groups: dict[str, list[int]] = defaultdict(list)
    for n, video_id in enumerate(ids):
        groups[roots[video_id]].append(n)
    current = Counter(s for s in videos["split"] if s in SPLITS)
    shares = ([current[s] / sum(current.values()) for s in SPLITS] if set(current) == set(SPLITS)
              else [SEEDED_SHARES[0], SEEDED_SHARES[1], 1 - sum(SEEDED_SHARES)])
    by_class: dict[str, list[str]] = defaultdict(list)
    for root, members in groups.items():
        efs = [videos["ef"][n] for n in members if videos["ef"][n] is not None]
        by_class["unknown" if not efs else "low" if np.median(efs) < EF_CUTOFF else "normal"].append(root)
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for label in sorted(by_class):
        roots_of_class = sorted(by_class[label])
        total, done = sum(len(groups[r]) for r in roots_of_class), 0
        for r in (roots_of_class[i] for i in rng.permutation(len(roots_of_class))):
            position = (done + len(groups[r]) / 2) / total  # the group's middle decides its split
            split = SPLITS[int(np.searchsorted(np.cumsum(shares), position, side="right")) if position < 1 else 2]
            for n in groups[r]:
                assignment[ids[n]] = split
            done += len(groups[r])
    counts = Counter(assignment.values())
    return assignment, {"seed": seed, "groups": len(groups), "shares": [round(s, 4) for s in shares],
                        "videos_by_split": {s: counts[s] for s in SPLITS},
                        "moved": sum(1 for v, s in zip(ids, videos["split"]) if assignment[v] != s)}


def write_split_csv(assignment: dict[str, str], path: str | Path) -> Path:
    """video_id,split rows, sorted by id: what `embedstore split --apply` reads."""
    path = Path(path)
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["video_id", "split"])
        out.writerows(sorted(assignment.items()))
    return path


def apply_split(store: Store, path: str | Path) -> dict:
    """Set videos' splits from a video_id,split CSV, all or none; BadInput/NotFound name the first bad row."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"{path}: no such file; write one with `embedstore audit --resplit FILE`")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"video_id", "split"} <= set(reader.fieldnames):
            raise BadInput(f"{path}: needs a header with video_id and split columns")
        rows = [(r["video_id"], (r["split"] or "").strip().upper()) for r in reader]
    seen: set[str] = set()
    for line, (video_id, split) in enumerate(rows, 2):
        if split not in SPLITS:
            raise BadInput(f"{path} line {line}: split {split!r} is not one of {', '.join(SPLITS)}")
        if video_id in seen:
            raise BadInput(f"{path} line {line}: video {video_id!r} is listed twice")
        seen.add(video_id)
    known = set(store.catalog.video_table(("video_id",))["video_id"])
    unknown = next((v for v, _ in rows if v not in known), None)
    if unknown is not None:
        raise NotFound(f"{path}: video {unknown!r} is not in the store; was the CSV written for another store?")
    changed = store.catalog.set_splits([v for v, _ in rows], [s for _, s in rows])
    return {"rows": len(rows), "changed": changed, "by_split": dict(Counter(s for _, s in rows))}


# -- the markdown report ------------------------------------------------------------------------
def to_markdown(report: dict) -> str:
    """The report for people: counts per kind and split pair, how the threshold was chosen, the worst pairs."""
    t, c = report["threshold"], report["counts"]
    lines = [f"# Audit of {report['store']} ({report['encoder']}, {report['vectors']} vectors, index {report['index']})", "",
             f"Near-duplicate threshold: cosine {t['how']}", "", "| kind | found | by split pair |", "|---|---|---|"]
    for kind in KINDS:
        pairs = ", ".join(f"{k} {v}" for k, v in c[kind]["by_split_pair"].items()) or "-"
        extra = f" (against {c[kind]['against']})" if "against" in c[kind] else ""
        lines.append(f"| {kind} | {c[kind]['total']}{extra} | {pairs} |")
    cl = report["clusters"]
    lines += ["", f"Near-duplicate pairs: {report['near_duplicates']['pairs']} ({report['near_duplicates']['cross_split']} "
                  f"across splits); clusters across splits: {cl['cross_split']} of {cl['clusters']}"
                  + (f" ({', '.join(f'{k} {v}' for k, v in cl['by_splits'].items())})" if cl["by_splits"] else "")]
    if report["duplicates"]:
        lines += ["", "## Exact duplicates", "", "| a | b | kind | splits |", "|---|---|---|---|"]
        lines += [f"| {d['a']} | {d['b']} | {d['kind']} | {d['split_a'] or '-'} / {d['split_b'] or '-'} |" for d in report["duplicates"]]
    worst = report["near_duplicates"]["worst"]
    if worst:
        lines += ["", "## Worst near-duplicate pairs", "", "| a | b | cosine | splits | patients |", "|---|---|---|---|---|"]
        lines += [f"| {p['a']} | {p['b']} | {p['score']:.6f} | {p['split_a'] or '-'} / {p['split_b'] or '-'} | "
                  f"{p['patient_a'] or '-'} / {p['patient_b'] or '-'} |" for p in worst]
    for key, title in (("patients", "Patients"), ("studies", "Studies")):
        if report[key]["examples"]:
            lines += ["", f"## {title} in several splits", ""]
            lines += [f"- {next(iter(e.values()))}: "
                      + ", ".join(f"{s} {n}" for s, n in e["videos_by_split"].items()) for e in report[key]["examples"]]
    if "against" in report:
        a = report["against"]
        lines += ["", f"## Against {a['store']} ({a['videos']} videos)", "",
                  f"Exact duplicates {len(a['duplicates'])}, near-duplicate pairs {a['near_duplicates']['pairs']}"]
        lines += [f"- {p['a']} ~ {p['b']} ({p.get('kind') or 'near'}, "
                  f"{'-' if p['score'] is None else format(p['score'], '.6f')})"
                  for p in a["duplicates"] + a["near_duplicates"]["worst"]]
    r = report["resplit"]
    lines += ["", f"Suggested patient-grouped re-split (seed {r['seed']}, {r['groups']} groups, stratified by EF class): "
                  + ", ".join(f"{s} {n}" for s, n in r["videos_by_split"].items()) + f"; {r['moved']} videos move"]
    return "\n".join(lines) + "\n"
