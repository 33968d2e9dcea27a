"""What the REST service loads once and shares between requests, and the jobs its routes run.

- The store is opened read-only: DuckDB then keeps writers out for the server's lifetime, so the
  loaded indexes and the summary below cannot go stale.
- One Searcher per (encoder, target), made at startup: indexes, metadata and query models load once.
- No lock: the store is read-only, FAISS searches and h5py reads may run in several threads, and the
  catalog gives each thread a DuckDB cursor of its own. So a search never waits for an upload's
  decode or model forward (it used to: one lock around the store held id queries ~1.5 s behind an
  r3d forward).
- A bounded worker pool in two lanes: the event loop never decodes, embeds or searches, and a
  request that finds the pool full gets 503 + Retry-After at once instead of waiting.
- Uploads stream into private temp files, each deleted when its request ends.
"""
from __future__ import annotations

import asyncio
import io
import logging
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator, Literal, TypeVar

import faiss
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

import embedstore
from embedstore.errors import BadInput, Busy, EmbedstoreError, NotFound, TooLarge, VideoError
from embedstore.encoders.provenance import RANDOM_INIT
from embedstore.index.search import Searcher
from embedstore.index.similar import calibration, similar_ids, similar_videos
from embedstore.service.schemas import BatchSearchRequest, SearchOptions, SearchRequest, SearchResponse, SimilarityRequest
from embedstore.service.settings import Settings
from embedstore.store import open_store
from embedstore.video.read import VIDEO_SUFFIXES
from embedstore.video.thumbnail import thumbnail

log = logging.getLogger("embedstore.service")
T = TypeVar("T")
THUMBNAILS_CACHED = 256
MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 16


class Timeout(Busy):
    """The request ran past request_timeout_s (503, like Busy: the client may retry later)."""

    code = "timeout"


class Unauthorized(EmbedstoreError):
    """A route that needs the bearer token was called without it, or with another one."""

    status, code = 401, "unauthorized"


# -- the worker pool ----------------------------------------------------------------------------
Lane = Literal["search", "filter", "media"]


class WorkerPool:
    """Admission (`worker_threads` + `queue_size` requests in flight; one more is refused with Busy) and two lanes.

    - "search": one thread for lookups and searches (a millisecond or so each, mostly FAISS without the GIL).
      One thread and the event loop already fill two cores; with two search threads each search also
      fought the event loop for the GIL (bench/rest.py, id queries at 8 clients, one process, when a
      lock still serialised the searches: 376-472 requests/s with two threads, 514-646 with one).
    - "media": `worker_threads` threads that decode and embed uploads and render thumbnails (seconds
      each), so a long upload never queues in front of a search.
    - "filter": `worker_threads` threads that evaluate a search's where filter (DuckDB, cached per Searcher)
      before the search itself goes to the search lane, so a costly filter never queues in front of
      another client's id search; its work is interrupted at filter_timeout_s.
    """

    def __init__(self, settings: Settings):
        # OpenMP thread counts are per calling thread: each worker sets its own, or every FAISS call would
        # start a team of threads that spin (burning ~30 ms of CPU a query here) after a 1 ms search.
        def lane(threads: int, name: str) -> ThreadPoolExecutor:
            return ThreadPoolExecutor(threads, thread_name_prefix=f"embedstore-{name}",
                                      initializer=faiss.omp_set_num_threads, initargs=(settings.search_threads,))

        self.lanes: dict[Lane, ThreadPoolExecutor] = {"search": lane(1, "search"), "media": lane(settings.worker_threads, "media"),
                                                      "filter": lane(settings.worker_threads, "filter")}
        self.capacity = self.free = settings.worker_threads + settings.queue_size
        self.timeout_s = settings.request_timeout_s

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One request's share of capacity and time, held for the whole request (an upload's streaming too).

        Only the event loop thread counts slots, so a plain integer is enough.
        """
        if self.free <= 0:
            raise Busy(f"the service is at capacity ({self.capacity} requests running or queued); retry shortly")
        self.free -= 1
        try:
            async with asyncio.timeout(self.timeout_s) as deadline:
                yield
        except TimeoutError:
            if deadline.expired():
                raise Timeout(f"the request took longer than the service's {self.timeout_s:g} s limit; "
                              f"retry later or send a shorter video") from None
            raise
        finally:
            self.free += 1

    async def run(self, lane: Lane, fn: Callable[..., T], *args) -> T:
        """fn(*args) in a thread of `lane`; a request that times out first takes its job off the queue if it has not started."""
        return await asyncio.get_running_loop().run_in_executor(self.lanes[lane], partial(fn, *args))

    def close(self) -> None:
        for executor in self.lanes.values():
            executor.shutdown(wait=True, cancel_futures=True)


# -- uploads ------------------------------------------------------------------------------------
@dataclass
class Upload:
    """A file a client sent: where it lies on the server (never shown) and the name it had (for messages)."""

    name: str
    path: Path


@contextmanager
def named_as(path: Path | str, name: str) -> Iterator[None]:
    """Library errors name the file they read; say `name` (the client's file name, a video id) instead."""
    try:
        yield
    except EmbedstoreError as exc:
        raise type(exc)(exc.message.replace(str(path), name)) from None


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)
    file: io.BufferedWriter | None = None
    path: Path | None = None
    size: int = 0
    head: bytes = b""


class FormReader:
    """Streams a multipart/form-data body: file parts straight into private temp files, size-checked as
    they grow (TooLarge the moment one passes the limit), other fields into short strings."""

    def __init__(self, folder: Path, files: tuple[str, ...], max_file_bytes: int):
        self.folder, self.files, self.limit = folder, files, max_file_bytes
        self.fields: dict[str, str] = {}
        self.uploads: dict[str, Upload] = {}
        self.parts: list[_Part] = []
        self.header_name, self.header_value, self.disposition = b"", b"", b""

    async def read(self, request: Request) -> None:
        kind, params = parse_options_header(request.headers.get("content-type"))
        if kind != b"multipart/form-data" or b"boundary" not in params:
            raise BadInput(f"send multipart/form-data with the video in the file field{'s' if len(self.files) > 1 else ''} "
                           f"{', '.join(self.files)}")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > len(self.files) * self.limit + MAX_PARTS * MAX_FIELD_BYTES:
            raise TooLarge(f"the upload is {int(length)} bytes; this service takes videos of up to {self.limit} bytes")
        parser = MultipartParser(params[b"boundary"], {
            "on_part_begin": self.part_begin, "on_header_field": self.header_field, "on_header_value": self.header_value_,
            "on_header_end": self.header_end, "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data, "on_part_end": self.part_end})
        try:
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
        except FormParserError as exc:
            raise BadInput(f"the multipart body is malformed ({' '.join(str(exc).split())[:120]})") from None
        missing = [name for name in self.files if name not in self.uploads]
        if missing:
            raise BadInput(f"no file in the field{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
                           f"send the video as a file part")

    def discard(self) -> None:
        for part in self.parts:
            if part.file is not None:
                part.file.close()
            if part.path is not None:
                part.path.unlink(missing_ok=True)
        for upload in self.uploads.values():
            upload.path.unlink(missing_ok=True)

    # python-multipart callbacks, called synchronously from parser.write
    def part_begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise BadInput(f"more than {MAX_PARTS} form fields")
        self.parts.append(_Part())

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def header_value_(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name, self.header_value = b"", b""

    def headers_finished(self) -> None:
        part = self.parts[-1]
        _, options = parse_options_header(self.disposition)
        self.disposition = b""
        part.name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" not in options:
            return
        if part.name not in self.files or any(p.name == part.name and p.file for p in self.parts[:-1]):
            raise BadInput(f"unexpected file field {part.name!r}; send one video in each of {', '.join(self.files)}")
        part.filename = display_name(options[b"filename"].decode("utf-8", "replace"))
        handle, name = tempfile.mkstemp(dir=self.folder)
        part.path, part.file = Path(name), open(handle, "wb")

    def part_data(self, data: bytes, start: int, end: int) -> None:
        part, chunk = self.parts[-1], data[start:end]
        part.size += len(chunk)
        if part.file is None:
            if part.size > MAX_FIELD_BYTES:
                raise TooLarge(f"form field {part.name!r} is over {MAX_FIELD_BYTES} bytes")
            part.data += chunk
            return
        if part.size > self.limit:
            raise TooLarge(f"{part.filename} is over this service's upload limit of {self.limit} bytes")
        if len(part.head) < 132:
            part.head += chunk[: 132 - len(part.head)]
        part.file.write(chunk)

    def part_end(self) -> None:
        part = self.parts[-1]
        if part.file is None:
            self.fields[part.name] = part.data.decode("utf-8", "replace")
            return
        part.file.close()
        suffix = sniff_suffix(part.head) or video_suffix(part.filename)
        if suffix is None:
            raise VideoError(f"{part.filename} is not a video; upload an AVI, MP4 or DICOM file")
        path = part.path.rename(part.path.with_suffix(suffix))
        part.path = None  # now owned by self.uploads
        self.uploads[part.name] = Upload(part.filename, path)


def display_name(filename: str) -> str:
    """The last component of a client's file name, printable and short: only ever shown, never opened."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c for c in name if c.isprintable())[:128] or "upload"


def sniff_suffix(head: bytes) -> str | None:
    """The container from its first bytes: DICOM preamble, RIFF AVI, ISO-BMFF (MP4/MOV)."""
    if head[128:132] == b"DICM":
        return ".dcm"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return ".avi"
    if head[4:8] == b"ftyp":
        return ".mp4"
    return None


def video_suffix(filename: str) -> str | None:
    suffix = Path(filename).suffix.lower()
    return suffix if suffix in VIDEO_SUFFIXES else None


# -- the shared state ---------------------------------------------------------------------------
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
            searcher = Searcher(self.store, encoder, target)
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
