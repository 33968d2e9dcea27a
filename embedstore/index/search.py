"""Searcher: a query (vector, stored id, video file, text, report) -> neighbours with their catalog rows.

All search logic lives here so the CLI and the REST service return the same thing
(`SearchResult.to_dict()`). A Searcher loads its index once (never a stale one: a reader searches the
stored vectors exactly when the index is older than them, see index.build.load_index) and a row-aligned copy of the metadata it prints, so a query
costs one FAISS call plus a few array lookups. Open the store read-only for searching: DuckDB then
also keeps writers out for the Searcher's lifetime, so the loaded index cannot go stale under it.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Callable

import faiss
import numpy as np

from embedstore.encoders.provenance import RANDOM_INIT, is_random, rebuild
from embedstore.devices import faiss_gpus
from embedstore.errors import BadInput, Conflict, NotFound, TooManyFrames
from embedstore.hashing import sha256_file
from embedstore.index import exact
from embedstore.index.build import load_index, sidecar_centre
from embedstore.index.factory import flat_storage, holds_exact_vectors, search_parameters
from embedstore.index.files import build_command
from embedstore.index.tuning import SEARCH_CANDIDATES_MIN
from embedstore.index.centring import centre
from embedstore.store import Store, normalise
from embedstore.store.expressions import FILTER_TIMEOUT_S, allowed_rows
from embedstore.store.store import TARGETS
from embedstore.video.read import MAX_FRAMES, Video, read_video
from embedstore.video.regions import MASK_KEY

META_COLUMNS = {
    "videos": ("videos", "video_id", ("patient_id", "study_id", "view", "split", "ef", "esv", "edv", "source_path",
                                      "series_id")),
    "reports": ("reports", "report_id", ("patient_id", "study_id", "video_id", "text")),
    "studies": ("study_sections", "item_id", ("patient_id", "study_id", "section", "n_videos")),
}
NO_ROWS = np.zeros(0, dtype=np.int64)
FILTERS_CACHED = 32  # where-filters' allowed rows kept per Searcher (its catalog cannot change while it is open)
GPU_BATCH_MIN = 64  # queries in a batch before an exact batch search goes to the GPUs (copies cost more below)
# a filter leaving at most this many rows is answered by exact search over them, above by the index with an
# id selector: bench/filtered.py at 100k x 512 (HNSW32_SQfp16, efSearch 10), p50 exact / selector ms:
# 8,000 rows 1.2 / 6.8, 16,000 2.4 / 2.7, 32,000 4.5 / 1.5 (the exact scan grows with the rows, the
# selector's beam with 1 / share)
EXACT_SUBSET_MAX = 16_384
EF_ESTIMATE_K = SEARCH_CANDIDATES_MIN  # 50 neighbours behind the label estimate, whatever k shows (EchoPrime's k)
REPRODUCE_MIN_COSINE = 0.99  # a rebuilt random-init encoder must give back a stored vector this closely


class Hit:
    """One neighbour. With same_patient, one per patient: its best video and how many of its videos were near.

    `metadata` (its catalog row as a dict) is built when first read: a search that only wants ids and
    scores (evaluations, benchmarks, the id lists of notebooks) never touches the catalog strings,
    which cost ~3 us a hit once a search has swept them out of the CPU caches.
    """

    __slots__ = ("rank", "id", "score", "count", "_names", "_values", "_metadata")

    def __init__(self, rank: int, id: str, score: float, names: tuple[str, ...], values: tuple,
                 count: int | None = None):
        self.rank, self.id, self.score, self.count = rank, id, score, count
        self._names, self._values, self._metadata = names, values, None

    @property
    def metadata(self) -> dict:
        if self._metadata is None:
            self._metadata = dict(zip(self._names, self._values))
        return self._metadata

    def __repr__(self) -> str:
        return f"Hit(rank={self.rank}, id={self.id!r}, score={self.score:.4f}, count={self.count})"


@dataclass
class SearchResult:
    """What every surface returns: hits, what the filter removed, provenance, timing, a kNN EF estimate.

    `ids` and `scores` (best first) come with the result; `hits` (Hit objects with their catalog rows) are
    built when first read (`make_hits`) and `ef_estimate` is worked out when first read (`estimate`, from
    the neighbours the search already found when its beam was wide enough, else with a search of its
    own), so a caller that wants only the ids pays for neither; `took_ms` is the time to the ids.
    """

    ids: list[str]
    scores: list[float]
    filtered_out: int
    provenance: dict
    took_ms: float
    make_hits: Callable[[], list[Hit]] = field(repr=False)
    estimate: Callable[[], dict | None] | None = field(default=None, repr=False)
    query: dict = field(default_factory=dict)

    @cached_property
    def hits(self) -> list[Hit]:
        return self.make_hits()

    @cached_property
    def ef_estimate(self) -> dict | None:
        return None if self.estimate is None else self.estimate()

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
        # query videos are masked as this vector set's videos were (sets from before masking: off)
        self.mask = self.info["preprocessing"].get(MASK_KEY, "off")

    @cached_property
    def model(self):
        model = rebuild(self.info)
        if is_random(self.info):
            self._check_reproduces(model)
        return model

    def _check_reproduces(self, model) -> None:
        """Embed one stored video again; random weights that differ from the encode run give garbage neighbours."""
        rows = self.store.catalog.embedded_files(self.name, 20)
        found = next(((i, p) for i, p in rows if Path(p).is_file()), None)
        if found is None:
            return
        stored = self.store.get_vectors(self.name, [found[0]])[0]
        cosine = float(model.embed_videos([read_video(found[1], mask=self.mask)])[0] @ stored)
        if cosine < REPRODUCE_MIN_COSINE:
            raise Conflict(f"the store's {self.name} vectors are random-init and a fresh random-init encoder does not "
                           f"reproduce them (cosine {cosine:.2f} on video {found[0]}): query by --id or --vector, "
                           f"or by a video file already in the store")

    @classmethod
    def of(cls, store: Store, encoder: str, info: dict | None = None) -> QueryEncoder:
        """The store's one QueryEncoder for `encoder`, so every search and similarity shares one rebuilt model."""
        key = ("query_encoder", encoder)
        if key not in store.memo:
            store.memo[key] = cls(store, encoder, info)
        return store.memo[key]

    def video_vector(self, path: str | Path, max_frames: int = MAX_FRAMES) -> tuple[np.ndarray, str | None]:
        """(vector [1, D], id of the stored video with the same file bytes or None); stored files need no model."""
        return self.video_vectors([path], max_frames)[0]

    def video_vectors(self, paths: list[str | Path], max_frames: int = MAX_FRAMES) -> list[tuple[np.ndarray, str | None]]:
        """video_vector of each file; every file is hashed once and checked against max_frames before any model runs."""
        found = [self._stored_or_decoded(Path(p), max_frames) for p in paths]
        return [(self.store.get_vectors(self.name, [stored]), stored) if stored is not None
                else (self.model.embed_videos([video]), None) for stored, video in found]

    def _stored_or_decoded(self, path: Path, max_frames: int) -> tuple[str | None, Video | None]:
        """(id of a stored video with these file bytes, None) without decoding, else (None, the file decoded and masked).

        A stored file is held to max_frames too (by its catalog frame count), so whether a file is refused
        does not depend on whether it happens to be in the store.
        """
        if not path.is_file():
            raise NotFound(f"{path}: no such video file; check the path")
        stored = self.stored_video_id(path)
        if stored is None:
            return None, read_video(path, max_frames=max_frames, mask=self.mask)
        frames = self.store.videos([stored])[0]["n_frames"]
        if frames is not None and frames > max_frames:
            raise TooManyFrames(f"{path}: more than {max_frames} frames ({frames}); raise max_frames to read it")
        return stored, None

    def stored_video_id(self, path: Path) -> str | None:
        """The id of a stored video with a vector whose file has exactly these bytes."""
        return self.store.catalog.video_by_sha256(sha256_file(path), self.name)

    def text_vector(self, text: str) -> np.ndarray:
        """[1, D] text embedding; BadInput for an empty text or an encoder without a text tower."""
        if "text" not in self.info["modalities"]:
            raise BadInput(f"encoder {self.name} has no text tower; text and report queries need echoclip or "
                           f"echoclip-r vectors")
        if not text or not text.strip():
            raise BadInput("the query text is empty")
        return self.model.embed_texts([text])


def read_vector_file(path: str | Path) -> np.ndarray:
    """A query vector from a .npy file ([D] or [1, D]); BadInput when it cannot be read as numbers."""
    try:
        return np.load(Path(path), allow_pickle=False)
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file; give a .npy file holding one vector") from None
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path}: not a .npy array ({' '.join(str(exc).split())[:120]})") from None


class Searcher:
    """Neighbours of a query among one (encoder, target) vector set, with their catalog rows.

    `with_estimate`: the caller reads every result's EF estimate (the CLI and REST do), so one search
    wide enough for both serves the hits and the estimate; otherwise the hits' search asks for k only
    (the same FAISS call search_many makes) and the estimate, when read, makes a search of its own.
    """

    def __init__(self, store: Store, encoder: str, target: str = "videos", with_estimate: bool = False):
        if target not in TARGETS:
            raise BadInput(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        self.store, self.encoder, self.target, self.with_estimate = store, encoder, target, with_estimate
        info = store.encoder_info(encoder)
        self.index, self.sidecar = load_index(store, encoder, target)
        self.dim = int(info["dim"])
        self.rows, self.ids, self.columns, self.meta = _catalog_rows(store, encoder, target)
        if len(self.rows) != self.index.ntotal:
            raise Conflict(f"the index holds {self.index.ntotal} vectors but the catalog maps {len(self.rows)}; "
                           f"rebuild it with `{build_command(store, encoder, target)}`")
        self.size = int(self.index.ntotal)
        self._dense = self.size == 0 or int(self.rows[-1] - self.rows[0]) == self.size - 1  # rows first..last, no gaps
        # the ids again as one UTF-8 byte string each in a NumPy array (the longest id's bytes a row): a result's
        # ids are read from it, not from the list, whose pointer and string object are two cache misses a
        # hit at 1M (7 us a query for 10 hits right after a search, 2.5 from the array)
        self._id_bytes = np.array([item.encode() for item in self.ids], dtype=bytes)
        self.exact_storage = holds_exact_vectors(self.index)
        self._plain_params: dict[tuple[int, float | None], faiss.SearchParameters | None] = {}
        self.query_encoder = QueryEncoder.of(store, encoder, info)
        self.provenance = _provenance(info, self.sidecar)
        self.centre = sidecar_centre(self.sidecar)  # a centred index: every query loses the same mean
        self.filter_timeout_s = FILTER_TIMEOUT_S  # the service lowers it to its request budget
        self._filters: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._bitmaps: OrderedDict[tuple[int, bool], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._filters_lock = threading.Lock()

    def allowed(self, where: str) -> np.ndarray:
        """Rows that pass `where`, evaluated once per (filter, catalog version) and kept in a small LRU.

        The version is the index sidecar's store fingerprint: a Searcher's vectors and rows are fixed
        for its lifetime, so an entry can only go stale with the Searcher itself.
        """
        key = (where, str(self.sidecar.get("fingerprint")))
        with self._filters_lock:
            if key in self._filters:
                self._filters.move_to_end(key)
                return self._filters[key]
        rows = allowed_rows(self.store.catalog, self.encoder, self.target, where, self.filter_timeout_s)
        rows.setflags(write=False)
        with self._filters_lock:
            self._filters[key] = rows
            while len(self._filters) > FILTERS_CACHED:
                self._filters.popitem(last=False)
        return rows

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
        return self._search(vector, k, where, exclude, same_patient, {"kind": "id", "id": video_id}, start,
                            query_id=video_id)

    def search_video(self, video: str | Path, k: int = 10, where: str | None = None,
                     same_patient: bool = False, max_frames: int = MAX_FRAMES) -> SearchResult:
        """Neighbours of a video file, hashed once: a file already in the store uses its stored vector, any other
        is decoded (TooManyFrames past max_frames) and embedded."""
        start = time.perf_counter()
        vector, stored = self.query_encoder.video_vector(video, max_frames)
        query = {"kind": "video", "path": str(video), "stored_id": stored}
        return self._search(vector, k, where, (), same_patient, query, start, query_id=stored)

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

    def search_study(self, study_id: str, section: str | None = None, k: int = 10, where: str | None = None,
                     same_patient: bool = False) -> SearchResult:
        """Studies nearest to a stored study in one report section (default Left Ventricle, or "All videos" for a
        study pooled by mean): that section's
        vectors only, the study itself left out (the `studies` target, index/studies.py)."""
        from embedstore.index.studies import default_section, item_id, section_of

        if self.target != "studies":
            raise BadInput(f"a study query searches the studies target, not {self.target}; use --target studies")
        start = time.perf_counter()
        section = section_of(section) if section else default_section(self.store, self.encoder, study_id)
        key = item_id(study_id, section)
        row = self._row_of_id.get(key)
        if row is None:
            raise NotFound(f"no {self.encoder} study vector for study {study_id!r}, section {section!r}; check the id "
                           f"(`embedstore studies` writes them; a section whose view weights are all zero has none)")
        vector = self.store.vectors.read_rows(self.encoder, "studies", np.array([row]))
        position = self.columns.index("section")
        same_section = self.rows[np.array([m[position] == section for m in self.meta], dtype=bool)]
        query = {"kind": "study", "study_id": study_id, "section": section}
        return self._search(vector, k, where, (key,), same_patient, query, start, restrict=same_section)

    def search(self, *, video=None, id: str | None = None, text: str | None = None, report: str | None = None,
               vector=None, study: str | None = None, section: str | None = None, k: int = 10,
               where: str | None = None, exclude_self: bool = True, same_patient: bool = False,
               max_frames: int = MAX_FRAMES) -> SearchResult:
        """Exactly one of video, id, text, report, vector, study: the entry point of the CLI and the REST service
        (max_frames bounds a video file's decode)."""
        given = {name: value for name, value in {"video": video, "id": id, "text": text, "report": report,
                                                 "vector": vector, "study": study}.items() if value is not None}
        if len(given) != 1:
            raise BadInput(f"give exactly one query of --video, --id, --text, --report, --vector, --study"
                           f" (got {', '.join(given) or 'none'})")
        if section is not None and study is None:
            raise BadInput("--section goes with --study (the studies target)")
        common = {"k": k, "where": where, "same_patient": same_patient}
        if study is not None:
            return self.search_study(study, section, **common)
        if id is not None:
            return self.search_id(id, exclude_self=exclude_self, **common)
        if video is not None:
            return self.search_video(video, max_frames=max_frames, **common)
        method = {"text": self.search_text, "report": self.search_report,
                  "vector": self.search_vector}[next(iter(given))]
        return method(next(iter(given.values())), **common)

    # -- batches ------------------------------------------------------------------------------
    def search_many(self, vectors=None, ids=None, k: int = 10, where: str | None = None,
                    exclude_self: bool = True) -> list[SearchResult]:
        """One SearchResult per query vector ([N, D]) or stored id, with the hits a loop over search_vector /
        search_id gives, but no neighbours' label estimate (that takes a second, wider search per query).

        One FAISS call for the whole batch (FAISS spreads a batch over all cores), so evaluations and
        audits do not pay per-query costs. Same neighbours as the loop: exactly with an exact index;
        with a filter on an approximate one, within its recall (the loop's selector also leaves the
        query itself out, the batch's cannot, so it asks for one more and drops it).
        """
        start = time.perf_counter()
        if (vectors is None) == (ids is None):
            raise BadInput("give either query vectors or stored ids, not both or neither")
        if ids is not None:
            ids = list(ids)
            queries, rows = self.vectors_of(ids)
            exclude = rows if exclude_self and self.target == "videos" else None
            kinds = [{"kind": "id", "id": i} for i in ids]
        else:
            queries = normalise(np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1) if len(vectors) else
                                np.zeros((0, self.dim), np.float32), self.dim, "query vectors")
            exclude, kinds = None, [{"kind": "vector"} for _ in range(len(queries))]
        scores, rows, filtered_out = self._neighbours_many(queries, k, where, exclude)
        took = round((time.perf_counter() - start) * 1000 / max(1, len(queries)), 3)  # the batch's time, per query
        results = []
        for query, score_row, row_row in zip(kinds, scores, rows):
            valid = row_row >= 0
            positions, found, score_list = self._listed(score_row[valid], row_row[valid])
            excluded = exclude is not None and query["kind"] == "id"
            results.append(SearchResult(  # no label estimate: it needs a second, wider search per query (use search)
                ids=found, scores=score_list, filtered_out=filtered_out, provenance=self.provenance, took_ms=took,
                make_hits=partial(self._hits, found, score_list, positions, None),
                query=self._query_record(query, k, len(found), where, False, excluded)))
        return results

    def neighbours_many(self, vectors: np.ndarray, k: int, exclude_rows: np.ndarray | None = None,
                        where: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """[N, k] (scores, rows) of unit query vectors, best first, padded with (-inf, -1); exclude_rows[i]
        (a row, or -1) is left out of query i's answer. The array form of search_many, for audits of
        millions of vectors, where one Hit object per neighbour would cost more than the search."""
        scores, rows, _ = self._neighbours_many(np.ascontiguousarray(vectors, dtype=np.float32), k, where, exclude_rows)
        return scores, rows

    def vectors_of(self, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(stored vectors [N, D], their rows) of stored ids, from the index itself when it holds them."""
        if self.target != "videos" or any(i not in self._row_of_id for i in ids):
            vectors = self.store.get_vectors(self.encoder, ids, self.target)  # NotFound naming the unknown id
            return vectors, self._rows_of_list(ids) if self.target == "videos" else np.full(len(ids), -1, np.int64)
        rows = self._rows_of_list(ids)
        return self.vectors_at(rows), rows

    def vectors_at(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors of HDF5 rows (no file read when the index holds them exactly and uncentred)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return np.zeros((0, self.dim), np.float32)
        if self.exact_storage and self.centre is None:
            return self.index.reconstruct_batch(rows)
        return self.store.vectors.read_rows(self.encoder, self.target, rows)

    @cached_property
    def _storage(self) -> tuple[np.ndarray, np.ndarray, faiss.Index] | None:
        """(id at each position, position of each row, the flat index of the vectors) when the index keeps its
        vectors flat: exactly, as fp16 copies (cosines within ~1e-4) or as the re-rank's rows (factory.flat_storage)."""
        found = flat_storage(self.index)
        if found is None:
            return None
        ids, storage = found
        position = np.full(int(ids.max()) + 1 if len(ids) else 0, -1, dtype=np.int64)
        position[ids] = np.arange(len(ids))
        return ids, position, storage

    def _subset_scan(self, queries: np.ndarray, rows: np.ndarray, n: int,
                     exclude: np.ndarray = NO_ROWS) -> tuple[np.ndarray, np.ndarray]:
        """[Q, n] exact (scores, rows) among `rows` but `exclude`: the flat vectors searched with a bitmap of
        their positions."""
        ids, _, storage = self._storage
        bitmap = self._bitmap(rows, exclude, storage=True)
        selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        scores, found = storage.search(queries, n, params=faiss.SearchParameters(sel=selector))
        return scores, np.where(found >= 0, ids[np.maximum(found, 0)], -1)

    def _bitmap(self, rows: np.ndarray, exclude: np.ndarray, storage: bool) -> np.ndarray:
        """Packed bitmap (FAISS's little-endian bit order) of `rows` but `exclude`, over FAISS ids (catalog rows)
        or, with storage, over positions in the flat storage.

        A filter's cached rows (`allowed`) keep their bitmaps beside them: building one cost ~0.3 ms a
        query at 1M rows (a 1 MB mask, then packing it); excluded rows are cleared in a copy.
        """
        key = (id(rows), storage)
        with self._filters_lock:
            cached = self._bitmaps.get(key)
        if cached is None or cached[0] is not rows:
            size = self._storage[2].ntotal if storage else int(self.rows[-1]) + 1
            mask = np.zeros(size, dtype=bool)
            mask[self._storage[1][rows] if storage else rows] = True
            cached = (rows, np.packbits(mask, bitorder="little"))
            with self._filters_lock:
                if any(kept is rows for kept in self._filters.values()):  # a per-query array is not kept
                    self._bitmaps[key] = cached
                    while len(self._bitmaps) > 2 * FILTERS_CACHED:
                        self._bitmaps.popitem(last=False)
        bitmap = cached[1]
        if len(exclude):
            out = self._storage[1][exclude] if storage else exclude
            bitmap = bitmap.copy()
            np.bitwise_and.at(bitmap, out >> 3, ~np.left_shift(np.uint8(1), (out & 7).astype(np.uint8)))
        return bitmap

    def _indexed_vectors(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of rows as the index compares them (centred when the index is), from the vector file."""
        vectors = self.store.vectors.read_rows(self.encoder, self.target, rows)
        return vectors if self.centre is None else centre(vectors, self.centre)

    def _rows_of_list(self, ids: list[str]) -> np.ndarray:
        return np.array([self._row_of_id.get(i, -1) for i in ids], dtype=np.int64)

    def _neighbours_many(self, queries: np.ndarray, k: int, where: str | None,
                         exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, int]:
        """The batch form of _neighbours: one FAISS call (or one matrix product over a small filtered set)."""
        self._check_k(k)
        if self.centre is not None and len(queries):
            queries = centre(queries, self.centre)
        n_queries = len(queries)
        if exclude is None or not (np.asarray(exclude) >= 0).any():
            exclude = None
        else:
            exclude = np.asarray(exclude, dtype=np.int64).reshape(n_queries)
        extra = 0 if exclude is None else 1
        allowed = None if where is None else self.allowed(where)
        filtered_out = 0 if allowed is None else self.size - len(allowed)
        if n_queries == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64), filtered_out
        if allowed is None and n_queries >= GPU_BATCH_MIN and self.exact_storage and not self.sidecar["search_params"] \
                and faiss_gpus() > 0:  # an exact index and a real batch: the GPUs scan faster than the CPU index
            n = min(k + extra, self.size)
            scores, positions = exact.knn(queries, self._flat_vectors, n, use_gpu=True)
            rows = np.where(positions >= 0, self.rows[np.maximum(positions, 0)], -1)
        elif allowed is None:
            n = min(k + extra, self.size)
            scores, rows = self.index.search(queries, n, params=self._unfiltered_params(n))
        elif len(allowed) <= EXACT_SUBSET_MAX:
            scores, rows = self._exact_many(queries, allowed, min(k + extra, len(allowed)))
        else:
            bitmap = self._bitmap(allowed, NO_ROWS, storage=False)
            selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
            n = min(k + extra, len(allowed))
            params = search_parameters(self.sidecar["search_params"], n, selector, len(allowed) / self.size)
            scores, rows = self.index.search(queries, n, params=params)
        scores, rows = _drop_excluded(scores, rows, exclude, k)
        if allowed is not None and len(allowed) > EXACT_SUBSET_MAX:  # short answers under a selective filter
            for i in np.flatnonzero((rows < 0).any(axis=1)):
                own = exclude[i:i + 1] if exclude is not None and exclude[i] >= 0 else NO_ROWS
                rest = np.setdiff1d(allowed, own, assume_unique=True)
                found_scores, found_rows = self._exact(queries[i:i + 1], rest, min(k, len(rest)))
                scores[i, :len(found_rows)], rows[i, :len(found_rows)] = found_scores, found_rows
        return scores, rows, filtered_out

    @cached_property
    def _flat_vectors(self) -> np.ndarray:
        """The exact index's vectors in `self.rows` order, for batch scans on the GPUs (built on first use)."""
        return self.index.reconstruct_batch(self.rows)

    def _exact_many(self, queries: np.ndarray, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        if self._storage is not None:
            return self._subset_scan(queries, rows, n)
        scores = queries @ self._indexed_vectors(rows).T
        top = np.argpartition(-scores, n - 1, axis=1)[:, :n] if n < scores.shape[1] else np.tile(np.arange(n), (len(queries), 1))
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        return np.take_along_axis(top_scores, order, axis=1), rows[np.take_along_axis(top, order, axis=1)]

    # -- the one search path ------------------------------------------------------------------
    def _query(self, vector) -> np.ndarray:
        arr = np.asarray(vector, dtype=np.float32)
        if arr.ndim > 2 or (arr.ndim == 2 and arr.shape[0] != 1):
            raise BadInput(f"give one query vector of dimension {self.dim}, got an array of shape {arr.shape}")
        if (arr.size == self.dim and arr.flags.c_contiguous
                and abs(faiss.fvec_norm_L2sqr(faiss.swig_ptr(arr), self.dim) - 1.0) < 2e-5):
            # finite (NaN/inf fail the test) and unit: nothing to do. FAISS's norm, not a NumPy dot: right
            # after a search has swept the CPU caches, the dot took ~27 us at 10k x 512, this ~12
            return arr.reshape(1, self.dim)
        return normalise(arr.reshape(1, -1), self.dim, "query vector")

    def _check_k(self, k: int) -> None:
        """k <= 0 is an error; a k above what the store or filter leaves returns what exists (the result says so)."""
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
            raise BadInput(f"k must be a positive integer, got {k!r}")

    def _search(self, vector: np.ndarray, k: int, where: str | None, exclude_ids, same_patient: bool,
                query: dict, start: float, query_id: str | None = None,
                restrict: np.ndarray | None = None) -> SearchResult:
        self._check_k(k)
        if self.centre is not None:
            vector = centre(vector, self.centre)
        exclude = self._rows_of(exclude_ids) if exclude_ids else NO_ROWS
        allowed = None if where is None else self.allowed(where)
        if restrict is not None:  # rows a query kind itself limits to (a study's section)
            allowed = restrict if allowed is None else np.intersect1d(allowed, restrict)
        left_out = self._estimate_left_out(query_id)
        n_wide = (max(k + len(exclude), EF_ESTIMATE_K + len(left_out[0]))
                  if self.with_estimate and left_out is not None else None)
        wide = None
        if same_patient:
            scores, rows, counts = self._by_patient(vector, k, allowed, exclude)
        elif n_wide is None or not self._one_search_serves(n_wide):
            scores, rows = self._neighbours(vector, k, allowed, exclude)
            counts = None
        else:  # one search serves the hits and the label estimate: enough rows for both after their exclusions
            rerank = self._wide_rerank(k + len(exclude), n_wide)
            wide_scores, wide = self._neighbours(vector, n_wide, allowed, NO_ROWS, rerank)
            if len(exclude):
                keep = _kept(wide, exclude)
                scores, rows = wide_scores[keep][:k], wide[keep][:k]
            else:
                scores, rows = wide_scores[:k], wide[:k]
            counts = None
        positions, found, score_list = self._listed(scores, rows)
        query = self._query_record(query, k, len(found), where, same_patient, bool(len(exclude)))
        return SearchResult(
            ids=found, scores=score_list, filtered_out=0 if allowed is None else self.size - len(allowed),
            provenance=self.provenance, took_ms=round((time.perf_counter() - start) * 1000, 3),
            make_hits=partial(self._hits, found, score_list, positions, counts), query=query,
            estimate=None if left_out is None else self._estimate_later(vector, allowed, left_out, wide),
        )

    def _estimate_later(self, vector: np.ndarray, allowed: np.ndarray | None, left_out: tuple[np.ndarray, str],
                        wide: np.ndarray | None) -> Callable[[], dict | None]:
        """The label estimate as a call made when the result's ef_estimate is first read (the query vector is
        copied when that call must search again: the caller may reuse its array meanwhile)."""
        return partial(self._ef_estimate, vector.copy() if wide is None else vector, allowed, left_out, wide)

    def _query_record(self, query: dict, k: int, returned: int, where: str | None, same_patient: bool,
                      excluded: bool) -> dict:
        """The query as answered: what was asked, how many came back, and why fewer than k when so."""
        query = {**query, "k": k, "where": where, "target": self.target, "same_patient": same_patient, "returned": returned}
        if returned < k:
            what = "patients" if same_patient else self.target
            query["note"] = (f"k={k} but only {returned} {what}{' pass the filter' if where else ''} exist"
                             f"{' besides the query' if excluded else ''}; returned them all")
        return query

    def _one_search_serves(self, n: int) -> bool:
        """True when one search for n neighbours can serve the hits and the label estimate, finding the first
        k as a search for k would, or better: exact search and IVF (n does not change the lists probed),
        HNSW whose efSearch is already >= n (the same beam), IVF + exact re-rank (with `_wide_rerank`).
        Otherwise the hits come from a search of their own (the same as search_many's) and the estimate,
        when read, from another."""
        params = self.sidecar["search_params"]
        return "k_factor" in params or int(params.get("efSearch", n)) >= n

    def _wide_rerank(self, k: int, n: int) -> float | None:
        """The re-rank factor of that one search for n (None: the index's own). IVF + exact re-rank: k_factor
        scaled to k x k_factor / n (at least 1), so the base index hands over at least the k x k_factor
        candidates a search for k would re-rank (at 1M, 50 rows instead of 40), all re-ranked exactly."""
        params = self.sidecar["search_params"]
        return max(1.0, k * float(params["k_factor"]) / n) if "k_factor" in params else None

    def _estimate_left_out(self, query_id: str | None) -> tuple[np.ndarray, str] | None:
        """(rows the label estimate leaves out, what they are), or None when there is no estimate to make
        (not videos, or no video has an EF label: known once, not per query)."""
        if not self._ef_labelled:
            return None
        own = self._row_of_id.get(query_id) if query_id is not None else None
        if own is None:
            return NO_ROWS, "nothing (the query is not a stored video)"
        patient = self.meta[int(self._positions(np.array([own]))[0])][0]
        if patient is not None:
            return self._rows_by_patient[patient], "the query's video and its patient's other videos"
        return np.array([own], dtype=np.int64), "the query's video"

    @cached_property
    def _ef_labelled(self) -> bool:
        """True when this is the videos set and at least one of its videos has an EF label."""
        return self.target == "videos" and any(v is not None for v in self._ef_values)

    @cached_property
    def _ef_values(self) -> tuple[float | None, ...]:
        """The EF label per position in self.rows (None where none): the estimate reads 50 floats from one
        list instead of 50 metadata tuples. Plain Python on 50 values: right after a search has swept
        the caches, each NumPy call costs ~10 us more than the whole loop (measured at 10k x 512)."""
        ef = self.columns.index("ef") if "ef" in self.columns else None
        return tuple(None if ef is None or m[ef] is None else float(m[ef]) for m in self.meta)

    def _ef_estimate(self, vector: np.ndarray, allowed: np.ndarray | None, left_out: tuple[np.ndarray, str] | None,
                     neighbours: np.ndarray | None = None) -> dict | None:
        """Mean and SD of the EF of the EF_ESTIMATE_K nearest videos, the query's own video and (when known) its
        patient's videos left out (`left_out`), so a stored query never votes for itself; None without labels.

        `neighbours`: rows of a search already made (best first, wide enough), else one is made here."""
        if left_out is None:
            return None
        exclude, left = left_out
        if neighbours is None:
            _, rows = self._neighbours(vector, EF_ESTIMATE_K, allowed, exclude)
        else:
            rows = (neighbours[_kept(neighbours, exclude)] if len(exclude) else neighbours)[:EF_ESTIMATE_K]
        labels = self._ef_values
        values = [v for p in self._positions(rows).tolist() if (v := labels[p]) is not None]
        if not values:
            return None
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
        return {"mean": round(mean, 2), "std": round(std, 2), "n": len(values), "k": EF_ESTIMATE_K, "left_out": left}

    @cached_property
    def _rows_by_patient(self) -> dict[str, np.ndarray]:
        """patient -> sorted rows of its videos (from the metadata in memory)."""
        groups: dict[str, list[int]] = {}
        for row, meta in zip(self.rows.tolist(), self.meta):
            if meta[0] is not None:
                groups.setdefault(meta[0], []).append(row)
        return {p: np.array(r, dtype=np.int64) for p, r in groups.items()}

    def _rows_of(self, ids) -> np.ndarray:
        """Rows of the given ids of this vector set (ids it does not hold are ignored), from the map in memory."""
        if not ids:
            return NO_ROWS
        return np.array(sorted(self._row_of_id[i] for i in ids if i in self._row_of_id), dtype=np.int64)

    def _neighbours(self, vector: np.ndarray, n: int, allowed: np.ndarray | None, exclude: np.ndarray,
                    rerank: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-n (scores, rows) among allowed rows (all when None) minus excluded ones, best first.

        A filter goes to FAISS as an id selector; when it leaves few rows, or the approximate
        index returns fewer than asked (HNSW under a selective filter), the allowed rows are
        searched exactly instead, so min(n, allowed) results always come back.
        """
        if n <= 0:
            return np.zeros(0, np.float32), NO_ROWS
        if allowed is None:
            scores, rows = self._faiss(vector, min(n + len(exclude), self.size), rerank=rerank)
            if len(exclude):
                keep = _kept(rows, exclude)
                scores, rows = scores[keep], rows[keep]
            return scores[:n], rows[:n]
        left = len(allowed) - _count_in(exclude, allowed)
        n = min(n, left)
        if n == 0 or left <= EXACT_SUBSET_MAX:
            return self._exact(vector, allowed, n, exclude)
        bitmap = self._bitmap(allowed, exclude, storage=False)
        selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        scores, rows = self._faiss(vector, n, selector, share=left / self.size, rerank=rerank)
        return (scores, rows) if len(rows) >= n else self._exact(vector, allowed, n, exclude)

    def _faiss(self, vector: np.ndarray, n: int, selector=None, share: float = 1.0,
               rerank: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-n (scores, rows) from the index; `rerank` replaces the sidecar's k_factor."""
        if selector is None:
            params = self._unfiltered_params(n, rerank)
        else:
            params = search_parameters(self._setting(rerank), n, selector, share)
        # FAISS's C++ search itself, not its Python wrapper, whose checks and dtype parsing cost ~3 us a query
        # (a quarter of what the Searcher adds at 1M); the query is one C-contiguous float32 row
        vector = np.ascontiguousarray(vector, dtype=np.float32)
        scores, rows = np.empty((1, n), np.float32), np.empty((1, n), np.int64)
        self.index.search_c(1, faiss.swig_ptr(vector), n, faiss.swig_ptr(scores), faiss.swig_ptr(rows), params)
        if rows.item(-1) >= 0:  # FAISS pads missing results with -1 at the end
            return scores[0], rows[0]
        valid = rows[0] >= 0
        return scores[0][valid], rows[0][valid]

    def _unfiltered_params(self, n: int, rerank: float | None = None) -> faiss.SearchParameters | None:
        """Unfiltered parameters are immutable per (n, re-rank factor): built once."""
        key = (n, rerank)
        if key not in self._plain_params:
            self._plain_params[key] = search_parameters(self._setting(rerank), n)
        return self._plain_params[key]

    def _setting(self, rerank: float | None) -> dict:
        params = self.sidecar["search_params"]
        return params if rerank is None else {**params, "k_factor": rerank}

    def _exact(self, vector: np.ndarray, rows: np.ndarray, n: int,
               exclude: np.ndarray = NO_ROWS) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-n (scores, rows) among `rows` but `exclude`."""
        if n == 0:
            return np.zeros(0, np.float32), NO_ROWS
        if self._storage is not None:
            scores, found = self._subset_scan(vector, rows, n, exclude)
            return scores[0], found[0]
        if len(exclude):
            rows = np.setdiff1d(rows, exclude, assume_unique=True)
        scores = self._indexed_vectors(rows) @ vector[0]
        top = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return scores[top], rows[top]

    def _by_patient(self, vector: np.ndarray, k: int, allowed: np.ndarray | None,
                    exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """The best video of each of the k nearest patients, and how many of its videos were among the neighbours.

        Fetches 4k neighbours, then 4x more until k patients appear or the set is exhausted.
        A video without a patient id counts as a patient of its own.
        """
        available = (self.size - len(exclude)) if allowed is None else len(allowed) - _count_in(exclude, allowed)
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

    def _listed(self, scores: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, list[str], list[float]]:
        """(positions in self.rows, ids, scores) of found rows: ids and scores as the lists a result carries."""
        at = self._positions(rows)
        return at, [item.decode() for item in self._id_bytes[at].tolist()], scores.tolist()

    def _hits(self, ids: list[str], scores: list[float], positions: np.ndarray, counts: list[int] | None) -> list[Hit]:
        """A result's Hit objects, built when its `hits` is first read (ten cost ~15 us a query at 1M, as much
        as a tenth of the search)."""
        names, meta = self.columns, self.meta
        return [Hit(i, item, score, names, meta[p], None if counts is None else counts[i - 1])
                for i, (item, score, p) in enumerate(zip(ids, scores, positions.tolist()), 1)]

    @cached_property
    def _first_row(self) -> int:
        return int(self.rows[0]) if len(self.rows) else 0

    def _positions(self, rows: np.ndarray) -> np.ndarray:
        """Index of each row in self.rows: the rows themselves when they are 0..n-1 (the usual case: no NumPy
        call, which costs ~25 us right after a search has swept the caches), else arithmetic or a search."""
        if self._dense:
            return rows if self._first_row == 0 else rows - self._first_row
        return np.searchsorted(self.rows, rows)


def _catalog_rows(store: Store, encoder: str, target: str) -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...],
                                                                   tuple[tuple, ...]]:
    """(rows, ids, metadata column names, one metadata tuple per row) of every stored vector, in row order.

    Held in memory so a hit costs a lookup, not a catalog query (~100 bytes a row plus its strings). Tuples,
    not lists: the garbage collector stops tracking a tuple of strings and numbers, where it walks every
    item of a list at each full collection (60 ms a collection at 1M rows, a pause in a batch or a request).
    """
    table, key, columns = META_COLUMNS[target]
    data = store.catalog.metadata_rows(encoder, target, columns)
    rows = data.column("row").to_numpy().astype(np.int64)
    meta = tuple(zip(*(data.column(c).to_pylist() for c in columns))) if len(rows) else ()
    return rows, tuple(data.column("item_id").to_pylist()), columns, meta


def _provenance(info: dict, sidecar: dict) -> dict:
    """JSON-ready encoder provenance with a visible random_init flag, plus what the index is."""
    keep = ("dim", "weights", "weights_sha256", "preprocessing", "package_version", "modalities")
    return {
        "encoder": info["name"], **{k: info[k] for k in keep},
        "created_at": str(info.get("created_at")), "random_init": info["weights_sha256"] == RANDOM_INIT,
        "index": {**{k: sidecar.get(k) for k in ("factory", "n", "recall_at_10", "search_params", "fingerprint", "created")},
                  "centred": sidecar.get("centre") is not None},
    }


def _kept(rows: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """Mask of the rows not in a non-empty `exclude` (a comparison for a few, isin for many: isin costs ~40 us)."""
    return ~np.isin(rows, exclude) if len(exclude) > 64 else (rows[:, None] != exclude).all(axis=1)


def _count_in(few: np.ndarray, rows: np.ndarray) -> int:
    """How many of `few` unique rows are in the sorted `rows` (binary search: np.isin sorts both, ~ms at 100k)."""
    if not len(few) or not len(rows):
        return 0
    at = np.minimum(np.searchsorted(rows, few), len(rows) - 1)
    return int((rows[at] == few).sum())


def _drop_excluded(scores: np.ndarray, rows: np.ndarray, exclude: np.ndarray | None,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
    """[N, k] answers without each query's excluded row (and FAISS's -1 padding moved to the end)."""
    keep = rows >= 0
    if exclude is not None:
        keep &= rows != exclude[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept ones first, in their order
    scores, rows, keep = (np.take_along_axis(a, order, axis=1) for a in (scores, rows, keep))
    scores, rows = scores.copy(), rows.copy()
    scores[~keep], rows[~keep] = -np.inf, -1
    if rows.shape[1] < k:
        pad = k - rows.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
    return scores.astype(np.float32, copy=False), rows
