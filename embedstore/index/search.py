"""Searcher: a query (vector, stored id, video file, text, report) -> neighbours with their catalog rows.

All search logic lives here so the CLI and the REST service return the same thing
(`SearchResult.to_dict()`). A Searcher loads its index once (refreshed first if the store gained
vectors, see index.build.load_index) and a row-aligned copy of the metadata it prints, so a query
costs one FAISS call plus a few array lookups. Open the store read-only for searching: DuckDB then
also keeps writers out for the Searcher's lifetime, so the loaded index cannot go stale under it.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import faiss
import numpy as np

from embedstore.errors import BadInput, Conflict, NotFound
from embedstore.index.build import build_command, holds_exact_vectors, load_index, search_parameters, sidecar_centre
from embedstore.index.centring import centre
from embedstore.index.filters import allowed_rows
from embedstore.store import Store, normalise
from embedstore.store.store import TARGETS
from embedstore.video.read import Video, read_video

RANDOM_INIT = "random-init"
META_COLUMNS = {
    "videos": ("videos", "video_id", ("patient_id", "study_id", "view", "split", "ef", "esv", "edv", "source_path")),
    "reports": ("reports", "report_id", ("patient_id", "study_id", "video_id", "text")),
}
NO_ROWS = np.zeros(0, dtype=np.int64)
EXACT_SUBSET_MAX = 8192  # a filter leaving at most this many rows is answered by exact search over them
REPRODUCE_MIN_COSINE = 0.99  # a rebuilt random-init encoder must give back a stored vector this closely


@dataclass(slots=True)
class Hit:
    """One neighbour. With same_patient, one per patient: its best video and how many of its videos were near."""

    rank: int
    id: str
    score: float
    metadata: dict
    count: int | None = None


@dataclass(slots=True)
class SearchResult:
    """What every surface returns: hits, what the filter removed, provenance, timing, a kNN EF estimate."""

    hits: list[Hit]
    filtered_out: int
    provenance: dict
    took_ms: float
    ef_estimate: dict | None
    query: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready; the REST service returns exactly this."""
        hits = [{"rank": h.rank, "id": h.id, "score": h.score, "metadata": h.metadata, "count": h.count} for h in self.hits]
        return {"hits": hits, "filtered_out": self.filtered_out,
                "provenance": self.provenance, "took_ms": self.took_ms, "ef_estimate": self.ef_estimate,
                "query": self.query}


class QueryEncoder:
    """The store's encoder rebuilt from its recorded provenance (on first use) to embed query videos and texts.

    Refuses (Conflict) an encoder whose weights, dimension or preprocessing differ from the store's,
    and a random-init encoder that does not reproduce a stored vector (random weights are only
    comparable when the initialisation is seeded).
    """

    def __init__(self, store: Store, encoder: str, info: dict | None = None):
        self.store, self.name = store, encoder
        self.info = info or store.encoder_info(encoder)

    @cached_property
    def model(self):
        from embedstore.encoders import get_encoder

        info = self.info
        random_init = info["weights_sha256"] == RANDOM_INIT
        weights = info["weights"] if not random_init and Path(info["weights"]).exists() else None
        model = get_encoder(self.name, weights=weights, random_init=random_init, **_recorded_options(info["preprocessing"]))
        prov = json.loads(json.dumps(model.provenance(), default=str))
        if prov["weights_sha256"] != info["weights_sha256"] or int(prov["dim"]) != int(info["dim"]):
            raise Conflict(f"query encoder {self.name} has weights {prov['weights_sha256'][:12]} (dim {prov['dim']}) but the "
                           f"store's vectors come from {info['weights_sha256'][:12]} (dim {info['dim']}); "
                           f"point $EMBEDSTORE_WEIGHTS at the weights the store was encoded with")
        differ = sorted(k for k in set(prov["preprocessing"]) | set(info["preprocessing"])
                        if prov["preprocessing"].get(k) != info["preprocessing"].get(k))
        if differ:
            raise Conflict(f"query encoder {self.name} prepares videos differently from the store's vectors "
                           f"({', '.join(differ)}); queries would not be comparable")
        if random_init:
            self._check_reproduces(model)
        return model

    def _check_reproduces(self, model) -> None:
        """Embed one stored video again; random weights that differ from the encode run give garbage neighbours."""
        rows = self.store.catalog.query(
            "SELECT e.item_id, v.source_path FROM embeddings e JOIN videos v ON v.video_id = e.item_id "
            "WHERE e.encoder = ? AND e.target = 'videos' AND v.source_path IS NOT NULL ORDER BY e.\"row\" LIMIT 20",
            [self.name])
        found = next(((i, p) for i, p in rows if Path(p).is_file()), None)
        if found is None:
            return
        stored = self.store.get_vectors(self.name, [found[0]])[0]
        cosine = float(model.embed_videos([read_video(found[1])])[0] @ stored)
        if cosine < REPRODUCE_MIN_COSINE:
            raise Conflict(f"the store's {self.name} vectors are random-init and a fresh random-init encoder does not "
                           f"reproduce them (cosine {cosine:.2f} on video {found[0]}): query by --id or --vector, "
                           f"or by a video file already in the store")

    def video_vector(self, video: str | Path | Video) -> tuple[np.ndarray, str | None]:
        """(vector [1, D], id of the stored video with the same file bytes or None); stored files need no model."""
        if not isinstance(video, Video):
            path = Path(video)
            if not path.is_file():
                raise NotFound(f"{path}: no such video file; check the path")
            stored = self.stored_video_id(path)
            if stored is not None:
                return self.store.get_vectors(self.name, [stored]), stored
            video = read_video(path)
        return self.model.embed_videos([video]), None

    def stored_video_id(self, path: Path) -> str | None:
        """The id of a stored video with a vector whose file has exactly these bytes."""
        from embedstore.datasets.ingest import sha256_file

        row = self.store.catalog.query(
            "SELECT v.video_id FROM videos v JOIN embeddings e ON e.item_id = v.video_id "
            "WHERE v.sha256 = ? AND e.encoder = ? AND e.target = 'videos' ORDER BY v.video_id LIMIT 1",
            [sha256_file(path), self.name])
        return row[0][0] if row else None

    def text_vector(self, text: str) -> np.ndarray:
        """[1, D] text embedding; BadInput for an empty text or an encoder without a text tower."""
        if "text" not in self.info["modalities"]:
            raise BadInput(f"encoder {self.name} has no text tower; text and report queries need echoclip or "
                           f"echoclip-r vectors")
        if not text or not text.strip():
            raise BadInput("the query text is empty")
        return self.model.embed_texts([text])


def _recorded_options(preprocessing: dict) -> dict:
    """Constructor options recorded in a preprocessing spec: videomae's token pooling ('max' or 'mean')."""
    return {"pooling": preprocessing["pooling"]} if preprocessing.get("pooling") in ("max", "mean") else {}


def read_vector_file(path: str | Path) -> np.ndarray:
    """A query vector from a .npy file ([D] or [1, D]); BadInput when it cannot be read as numbers."""
    try:
        return np.load(Path(path), allow_pickle=False)
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file; give a .npy file holding one vector") from None
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path}: not a .npy array ({' '.join(str(exc).split())[:120]})") from None


class Searcher:
    """Neighbours of a query among one (encoder, target) vector set, with their catalog rows."""

    def __init__(self, store: Store, encoder: str, target: str = "videos"):
        if target not in TARGETS:
            raise BadInput(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        self.store, self.encoder, self.target = store, encoder, target
        info = store.encoder_info(encoder)
        self.index, self.sidecar = load_index(store, encoder, target)
        self.dim = int(info["dim"])
        self.rows, self.ids, self.columns, self.meta = _catalog_rows(store, encoder, target)
        if len(self.rows) != self.index.ntotal:
            raise Conflict(f"the index holds {self.index.ntotal} vectors but the catalog maps {len(self.rows)}; "
                           f"rebuild it with `{build_command(store, encoder, target)}`")
        self.size = int(self.index.ntotal)
        self._dense = self.size == 0 or int(self.rows[-1] - self.rows[0]) == self.size - 1  # rows first..last, no gaps
        self.exact_storage = holds_exact_vectors(self.index)
        self._plain_params: dict[int, faiss.SearchParameters | None] = {}
        self.query_encoder = QueryEncoder(store, encoder, info)
        self.provenance = _provenance(info, self.sidecar)
        self.centre = sidecar_centre(self.sidecar)  # a centred index: every query loses the same mean

    @cached_property
    def _row_of_id(self) -> dict[str, int]:
        """id -> HDF5 row, so an id query needs no catalog round trip."""
        return {item: int(row) for item, row in zip(self.ids, self.rows)}

    # -- queries ------------------------------------------------------------------------------
    def search_vector(self, vector, k: int = 10, where: str | None = None, exclude_ids=(),
                      same_patient: bool = False) -> SearchResult:
        """Neighbours of one vector ([D] or [1, D]; normalised here)."""
        start = time.perf_counter()
        return self._search(self._query(vector), k, where, exclude_ids, same_patient, {"kind": "vector"}, start)

    def search_id(self, video_id: str, k: int = 10, where: str | None = None, exclude_self: bool = True,
                  same_patient: bool = False) -> SearchResult:
        """Neighbours of a stored video's vector (itself left out unless exclude_self=False)."""
        start = time.perf_counter()
        row = self._row_of_id.get(video_id) if self.target == "videos" else None
        if row is None:  # the reports target, or an unknown id (a clear NotFound)
            vector = self.store.get_vectors(self.encoder, [video_id], "videos")
        elif self.exact_storage and self.centre is None:  # the index holds the stored vector itself: no file read
            vector = self.index.reconstruct(row).reshape(1, -1)
        else:
            vector = self.store.vectors.read_rows(self.encoder, "videos", np.array([row]))
        exclude = (video_id,) if exclude_self and self.target == "videos" else ()
        return self._search(vector, k, where, exclude, same_patient, {"kind": "id", "id": video_id}, start)

    def search_video(self, video: str | Path | Video, k: int = 10, where: str | None = None,
                     same_patient: bool = False) -> SearchResult:
        """Neighbours of a video file (or decoded Video); a file already in the store uses its stored vector."""
        start = time.perf_counter()
        vector, stored = self.query_encoder.video_vector(video)
        path = video.path if isinstance(video, Video) else video
        query = {"kind": "video", "path": str(path) if path else None, "stored_id": stored}
        return self._search(vector, k, where, (), same_patient, query, start)

    def search_text(self, text: str, k: int = 10, where: str | None = None, same_patient: bool = False) -> SearchResult:
        """Neighbours of a free text (text encoders: echoclip, echoclip-r)."""
        start = time.perf_counter()
        vector = self.query_encoder.text_vector(text)
        return self._search(vector, k, where, (), same_patient, {"kind": "text", "text": text}, start)

    def search_report(self, report: str, k: int = 10, where: str | None = None, same_patient: bool = False) -> SearchResult:
        """Videos matching a report: a stored report id uses its stored vector, any other string is embedded."""
        start = time.perf_counter()
        stored = self.store.catalog.rows_for(self.encoder, "reports", [report])
        vector = (self.store.get_vectors(self.encoder, [report], "reports") if stored
                  else self.query_encoder.text_vector(report))
        query = {"kind": "report", "report": report, "stored_id": report if stored else None}
        return self._search(vector, k, where, (), same_patient, query, start)

    def search(self, *, video=None, id: str | None = None, text: str | None = None, report: str | None = None,
               vector=None, k: int = 10, where: str | None = None, exclude_self: bool = True,
               same_patient: bool = False) -> SearchResult:
        """Exactly one of video, id, text, report, vector: the entry point of the CLI and the REST service."""
        given = {name: value for name, value in
                 {"video": video, "id": id, "text": text, "report": report, "vector": vector}.items() if value is not None}
        if len(given) != 1:
            raise BadInput(f"give exactly one query of --video, --id, --text, --report, --vector"
                           f" (got {', '.join(given) or 'none'})")
        common = {"k": k, "where": where, "same_patient": same_patient}
        if id is not None:
            return self.search_id(id, exclude_self=exclude_self, **common)
        method = {"video": self.search_video, "text": self.search_text, "report": self.search_report,
                  "vector": self.search_vector}[next(iter(given))]
        return method(next(iter(given.values())), **common)

    # -- the one search path ------------------------------------------------------------------
    def _query(self, vector) -> np.ndarray:
        arr = np.asarray(vector, dtype=np.float32)
        if arr.ndim > 2 or (arr.ndim == 2 and arr.shape[0] != 1):
            raise BadInput(f"give one query vector of dimension {self.dim}, got an array of shape {arr.shape}")
        arr = arr.reshape(1, -1)
        if arr.shape[1] == self.dim and abs(float(arr[0] @ arr[0]) - 1.0) < 2e-5:
            return arr  # finite (NaN/inf would propagate into the dot) and unit: nothing to do, ~1 us
        return normalise(arr, self.dim, "query vector")

    def _check_k(self, k: int) -> None:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
            raise BadInput(f"k must be a positive integer, got {k!r}")
        if k > self.size:
            raise BadInput(f"k={k} is larger than the store: it holds {self.size} {self.encoder} {self.target}")

    def _search(self, vector: np.ndarray, k: int, where: str | None, exclude_ids, same_patient: bool,
                query: dict, start: float) -> SearchResult:
        self._check_k(k)
        if self.centre is not None:
            vector = centre(vector, self.centre)
        exclude = self._rows_of(exclude_ids)
        allowed = None if where is None else allowed_rows(self.store, self.encoder, self.target, where)
        if same_patient:
            scores, rows, counts = self._by_patient(vector, k, allowed, exclude)
        else:
            scores, rows = self._neighbours(vector, k, allowed, exclude)
            counts = None
        hits = self._hits(scores, rows, counts)
        return SearchResult(
            hits=hits, filtered_out=0 if allowed is None else self.size - len(allowed), provenance=self.provenance,
            took_ms=round((time.perf_counter() - start) * 1000, 3), ef_estimate=_ef_estimate(hits),
            query={**query, "k": k, "where": where, "target": self.target, "same_patient": same_patient},
        )

    def _rows_of(self, ids) -> np.ndarray:
        """Rows of the given ids of this vector set (ids it does not hold are ignored), from the map in memory."""
        if not ids:
            return NO_ROWS
        return np.array(sorted(self._row_of_id[i] for i in ids if i in self._row_of_id), dtype=np.int64)

    def _neighbours(self, vector: np.ndarray, n: int, allowed: np.ndarray | None,
                    exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-n (scores, rows) among allowed rows (all when None) minus excluded ones, best first.

        A filter goes to FAISS as an id selector; when it leaves few rows, or the approximate
        index returns fewer than asked (HNSW under a selective filter), the allowed rows are
        searched exactly instead, so min(n, allowed) results always come back.
        """
        if n <= 0:
            return np.zeros(0, np.float32), NO_ROWS
        if allowed is None:
            scores, rows = self._faiss(vector, min(n + len(exclude), self.size))
            if len(exclude):
                keep = ~np.isin(rows, exclude) if len(exclude) > 64 else (rows[:, None] != exclude).all(axis=1)  # isin: ~40 us
                scores, rows = scores[keep], rows[keep]
            return scores[:n], rows[:n]
        allowed = np.setdiff1d(allowed, exclude, assume_unique=True)
        n = min(n, len(allowed))
        if n == 0 or len(allowed) <= EXACT_SUBSET_MAX:
            return self._exact(vector, allowed, n)
        mask = np.zeros(int(self.rows[-1]) + 1, dtype=bool)
        mask[allowed] = True
        bitmap = np.packbits(mask, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        scores, rows = self._faiss(vector, n, selector, share=len(allowed) / self.size)
        return (scores, rows) if len(rows) >= n else self._exact(vector, allowed, n)

    def _faiss(self, vector: np.ndarray, n: int, selector=None, share: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        if selector is None:  # unfiltered parameters are immutable per n: build them once
            if n not in self._plain_params:
                self._plain_params[n] = search_parameters(self.sidecar["search_params"], n)
            params = self._plain_params[n]
        else:
            params = search_parameters(self.sidecar["search_params"], n, selector, share)
        scores, rows = self.index.search(vector, n, params=params)
        if rows[0, -1] >= 0:  # FAISS pads missing results with -1 at the end
            return scores[0], rows[0]
        valid = rows[0] >= 0
        return scores[0][valid], rows[0][valid]

    def _exact(self, vector: np.ndarray, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n == 0:
            return np.zeros(0, np.float32), NO_ROWS
        vectors = (self.index.reconstruct_batch(rows) if self.exact_storage
                   else self.store.vectors.read_rows(self.encoder, self.target, rows))
        if self.centre is not None and not self.exact_storage:
            vectors = centre(vectors, self.centre)
        scores = vectors @ vector[0]
        top = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return scores[top], rows[top]

    def _by_patient(self, vector: np.ndarray, k: int, allowed: np.ndarray | None,
                    exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """The best video of each of the k nearest patients, and how many of its videos were among the neighbours.

        Fetches 4k neighbours, then 4x more until k patients appear or the set is exhausted.
        A video without a patient id counts as a patient of its own.
        """
        available = (self.size - len(exclude)) if allowed is None else len(np.setdiff1d(allowed, exclude))
        m = min(4 * k, available)
        while True:
            scores, rows = self._neighbours(vector, m, allowed, exclude)
            groups: dict[str, list[int]] = {}
            for i, position in enumerate(self._positions(rows).tolist()):
                patient = self.meta[position][0]  # patient_id is the first metadata column of both targets
                groups.setdefault(patient if patient is not None else f"\0{rows[i]}", []).append(i)
            if len(groups) >= k or m >= available:
                break
            m = min(4 * m, available)
        best = [members[0] for members in list(groups.values())[:k]]
        return scores[best], rows[best], [len(members) for members in list(groups.values())[:k]]

    def _hits(self, scores: np.ndarray, rows: np.ndarray, counts: list[int] | None) -> list[Hit]:
        names, ids, meta = self.columns, self.ids, self.meta
        return [Hit(rank=i + 1, id=ids[p], score=score, metadata=dict(zip(names, meta[p])),
                    count=None if counts is None else counts[i])
                for i, (p, score) in enumerate(zip(self._positions(rows).tolist(), scores.tolist()))]

    def _positions(self, rows: np.ndarray) -> np.ndarray:
        """Index of each row in self.rows (arithmetic when the rows have no gaps, the usual case)."""
        return rows - self.rows[0] if self._dense else np.searchsorted(self.rows, rows)


def _catalog_rows(store: Store, encoder: str, target: str) -> tuple[np.ndarray, list[str], tuple[str, ...], list[tuple]]:
    """(rows, ids, metadata column names, one metadata tuple per row) of every stored vector, in row order.

    Held in memory so a hit costs a list lookup, not a catalog query (~100 bytes a row plus its strings).
    """
    table, key, columns = META_COLUMNS[target]
    select = ", ".join(f"t.{c}" for c in columns)
    with store.catalog.con.cursor() as cursor:  # a cursor of its own: the catalog may hold an unfinished result
        data = cursor.sql(
            f'SELECT e."row", e.item_id, {select} FROM embeddings e LEFT JOIN {table} t ON t.{key} = e.item_id '
            'WHERE e.encoder = $encoder AND e.target = $target ORDER BY e."row"',
            params={"encoder": encoder, "target": target}).to_arrow_table()
    rows = data.column("row").to_numpy().astype(np.int64)
    meta = list(zip(*(data.column(c).to_pylist() for c in columns))) if len(rows) else []
    return rows, data.column("item_id").to_pylist(), columns, meta


def _provenance(info: dict, sidecar: dict) -> dict:
    """JSON-ready encoder provenance with a visible random_init flag, plus what the index is."""
    keep = ("dim", "weights", "weights_sha256", "preprocessing", "package_version", "modalities")
    return {
        "encoder": info["name"], **{k: info[k] for k in keep},
        "created_at": str(info.get("created_at")), "random_init": info["weights_sha256"] == RANDOM_INIT,
        "index": {**{k: sidecar.get(k) for k in ("factory", "n", "recall_at_10", "search_params", "fingerprint", "created")},
                  "centred": sidecar.get("centre") is not None},
    }


def _ef_estimate(hits: list[Hit]) -> dict | None:
    """Mean and spread (population SD) of the neighbours' EF labels, EchoPrime-style; None without labels."""
    values = [float(h.metadata["ef"]) for h in hits if h.metadata.get("ef") is not None]
    if not values:
        return None
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
    return {"mean": round(mean, 2), "std": round(std, 2), "n": len(values)}
