"""What the REST service loads once and shares between requests, and the one library call each route runs.

- The store is opened read-only: DuckDB then keeps writers out for the server's lifetime, so the
  loaded indexes and the summary below cannot go stale.
- One Searcher per (encoder, target), made at startup: indexes, metadata and query models load once.
- No lock: the store is read-only, FAISS searches and h5py reads may run in several threads, and the
  catalog gives each thread a DuckDB cursor of its own. So a search never waits for an upload's
  decode or model forward (it used to: one lock around the store held id queries ~1.5 s behind an
  r3d forward).
- A bounded worker pool in lanes (pool.py): the event loop never decodes, embeds or searches, and a
  request that finds the pool full gets 503 + Retry-After at once instead of waiting.
- Uploads stream into private temp files (uploads.py), each deleted when its request ends.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from typing import AsyncIterator, Callable, TypeVar

from starlette.requests import Request

import embedstore
from embedstore.errors import BadInput, EmbedstoreError, NotFound
from embedstore.encoders.provenance import RANDOM_INIT
from embedstore.index.search import Searcher
from embedstore.index.similar import calibration, similar_ids, similar_videos
from embedstore.service.pool import Lane, WorkerPool
from embedstore.service.schemas import BatchSearchRequest, SearchOptions, SearchRequest, SearchResponse, SimilarityRequest
from embedstore.service.settings import Settings
from embedstore.service.uploads import FormReader, Upload, named_as
from embedstore.store import open_store
from embedstore.video.thumbnail import thumbnail

log = logging.getLogger("embedstore.service")
T = TypeVar("T")
THUMBNAILS_CACHED = 256


class Unauthorized(EmbedstoreError):
    """A route that needs the bearer token was called without it, or with another one."""

    status, code = 401, "unauthorized"


class ServiceState:
    """The open store, its Searchers, the worker pool and the upload folder of one server process."""

    def __init__(self, store_path: str | Path | None, settings: Settings):
        self.settings = settings
        self.store = open_store(store_path, read_only=True)
        self.pool = WorkerPool(settings)
        self.upload_dir = Path(tempfile.mkdtemp(prefix="embedstore-uploads-"))
        self.searchers: dict[tuple[str, str], Searcher] = {}
        self.thumbnail = lru_cache(THUMBNAILS_CACHED)(self._thumbnail)
        self._audits = lru_cache(8)(self._audit)
        info = self.store.info()
        self.videos = int(info["counts"]["videos"])
        self.vector_sets = [s for s in info["vector_sets"] if s["target"] and s["n"]]
        self.encoder_infos = {name: self.store.encoder_info(name) for name in sorted({s["encoder"] for s in self.vector_sets})}
        self._preload()

    def _preload(self) -> None:
        """Load every index now (a stale one is replaced by exact search in memory) and the same-patient calibration."""
        for s in self.vector_sets:
            try:
                self.searcher(s["encoder"], s["target"])
            except EmbedstoreError as exc:
                log.warning("not searchable: %s/%s: %s", s["encoder"], s["target"], exc.message)
            if s["target"] == "videos":  # fitted here if `index` has not: kept in memory, never written
                calibration(self.store, s["encoder"])

    def close(self) -> None:
        self.pool.close()
        self.store.close()
        shutil.rmtree(self.upload_dir, ignore_errors=True)

    async def call(self, fn: Callable[..., T], *args, lane: Lane = "search") -> T:
        """fn(*args) in a `lane` thread, within one request slot (503 when none is free)."""
        async with self.pool.slot():
            return await self.pool.run(lane, fn, *args)

    # -- helpers ------------------------------------------------------------------------------
    def searcher(self, encoder: str, target: str) -> Searcher:
        key = (encoder, target)
        if key not in self.searchers:
            searcher = Searcher(self.store, encoder, target, with_estimate=True)  # every response carries it
            searcher.filter_timeout_s = min(self.settings.filter_timeout_s, self.settings.request_timeout_s)
            self.searchers[key] = searcher
        return self.searchers[key]

    async def search_request(self, request: SearchRequest) -> dict:
        """A search within one request slot: its filter in the filter lane first (cached), then the search lane."""
        async with self.pool.slot():
            if request.where is not None:
                await self.pool.run("filter", self.prefilter, request.encoder, request.target, request.where)
            return await self.pool.run("search", self.search, request)

    def prefilter(self, encoder: str, target: str, where: str) -> None:
        self.searcher(encoder, target).allowed(where)

    # -- what leaves the server: no file paths unless the operator allows them -------------------
    def public_path(self, path: str | None) -> str | None:
        """A source path as REST shows it: relative to the store folder when inside it, else none at all
        (folder names often hold patient names or record numbers); as it is with expose_source_paths."""
        if path is None or self.settings.expose_source_paths:
            return path
        try:
            return Path(path).resolve().relative_to(self.store.path.resolve()).as_posix()
        except (ValueError, OSError):
            return None

    def public_result(self, result: dict) -> dict:
        """A SearchResult dict with public source paths and only the weights' file name."""
        if self.settings.expose_source_paths:
            return result
        for hit in result["hits"]:
            if "source_path" in hit["metadata"]:
                hit["metadata"]["source_path"] = self.public_path(hit["metadata"]["source_path"])
        weights = result["provenance"].get("weights")
        if weights and weights != RANDOM_INIT:
            result["provenance"] = {**result["provenance"], "weights": Path(weights).name}
        return result

    def check_k(self, k: int) -> int:
        if k > self.settings.max_k:
            raise BadInput(f"k={k} is over this service's limit of {self.settings.max_k} neighbours")
        return k

    @asynccontextmanager
    async def uploads(self, request: Request, files: tuple[str, ...]) -> AsyncIterator[tuple[dict[str, str], dict[str, Upload]]]:
        """(form fields, uploads by field) of a multipart request; the files are deleted when the block ends."""
        reader = FormReader(self.upload_dir, files, self.settings.max_upload_bytes)
        try:
            await reader.read(request)
            yield reader.fields, reader.uploads
        finally:
            reader.discard()

    # -- answers from memory (the store cannot change while it is open read-only) -------------
    def health(self, authorized: bool = True) -> dict:
        """Liveness for anyone; what the store holds only for a caller allowed to ask (see app.health)."""
        if not authorized:
            return {"status": "ok"}
        return {"status": "ok", "version": embedstore.__version__, "videos": self.videos, "encoders": list(self.encoder_infos),
                "indexes_loaded": sorted(f"{e}.{t}" for e, t in self.searchers)}

    def encoders(self) -> dict:
        keep = ("dim", "modalities", "weights_sha256", "package_version", "preprocessing")
        return {"encoders": [
            {**{k: info[k] for k in keep}, "name": name, "random_init": info["weights_sha256"] == RANDOM_INIT,
             "vectors": {s["target"]: s["n"] for s in self.vector_sets if s["encoder"] == name},
             "indexed": sorted(t for e, t in self.searchers if e == name)}
            for name, info in self.encoder_infos.items()]}

    # -- jobs: run in the worker pool ---------------------------------------------------------
    def video(self, video_id: str) -> dict:
        row = self.store.videos([video_id])[0]
        row["source_path"] = self.public_path(row.get("source_path"))
        encoders = [e for e in self.encoder_infos if self.store.catalog.rows_for(e, "videos", [video_id])]
        return {"video_id": row.pop("video_id"), "metadata": row, "encoders": encoders}

    def _thumbnail(self, video_id: str, animated: bool) -> bytes:
        path = self.store.videos([video_id])[0]["source_path"]
        if not path or not Path(path).is_file():
            raise NotFound(f"video {video_id!r} has no file on this server; thumbnails need the video files")
        with named_as(path, video_id):
            return thumbnail(path, animated, self.store.mask, max_frames=self.settings.max_frames)

    def search(self, request: SearchRequest) -> dict:
        q = request.query
        result = self.searcher(request.encoder, request.target).search(
            id=q.video_id, vector=q.vector, text=q.text, report=q.report, study=q.study_id, section=q.section,
            k=self.check_k(request.k),
            where=request.where, exclude_self=request.exclude_self, same_patient=request.same_patient)
        return self.public_result(result.to_dict())

    def search_batch(self, request: BatchSearchRequest) -> dict:
        """`Searcher.search_many` over at most max_batch queries (400 above, before any search)."""
        if len(request.queries) > self.settings.max_batch:
            raise BadInput(f"a batch of {len(request.queries)} queries is over this service's limit of "
                           f"{self.settings.max_batch}; split it into several requests")
        q = request.queries
        results = self.searcher(request.encoder, request.target).search_many(
            vectors=q.vectors, ids=q.video_ids, k=self.check_k(request.k), where=request.where,
            exclude_self=request.exclude_self)
        return {"searches": [SearchResponse.body(r.to_dict()) for r in results]}

    def predict(self, request) -> dict:
        """`embedstore predict` over this store's own study vectors (a bank path is not taken from callers)."""
        from embedstore.index.predict import predict

        return predict(self.store, request.study_id, request.encoder, request.section, self.check_k(request.k),
                       labels=request.labels)

    def search_upload(self, options: SearchOptions, upload: Upload) -> dict:
        """Like `embedstore search --video`: a file already in the store answers with its stored vector."""
        with named_as(upload.path, upload.name):
            result = self.searcher(options.encoder, options.target).search(
                video=upload.path, k=self.check_k(options.k), where=options.where, same_patient=options.same_patient,
                max_frames=self.settings.max_frames).to_dict()
        result["query"]["path"] = upload.name
        return self.public_result(result)

    def similar_ids(self, request: SimilarityRequest) -> dict:
        return similar_ids(self.store, request.encoder, request.a, request.b)

    def similar_uploads(self, encoder: str, a: Upload, b: Upload) -> dict:
        with named_as(a.path, a.name), named_as(b.path, b.name):
            out = similar_videos(self.store, encoder, a.path, b.path, max_frames=self.settings.max_frames)
        return {**out, "a": a.name, "b": b.name}

    def audit(self, encoder: str, threshold: float | None, k: int) -> dict:
        """`embedstore audit`'s report (without --against: no server paths from clients), kept per arguments:
        the store is read-only, so the answer cannot change while the server runs."""
        return self._audits(encoder, threshold, self.check_k(k))

    def _audit(self, encoder: str, threshold: float | None, k: int) -> dict:
        from embedstore.analysis.audit import audit

        return audit(self.store, encoder, threshold=threshold, k=k, searcher=self.searcher(encoder, "videos")).report

    def view(self, encoder: str, method: str) -> dict:
        from embedstore.analysis.views import load_view

        view = load_view(self.store, encoder, method)
        if "source_path" in view.get("labels", {}) and not self.settings.expose_source_paths:
            view["labels"]["source_path"] = [self.public_path(p) for p in view["labels"]["source_path"]]
        return view
