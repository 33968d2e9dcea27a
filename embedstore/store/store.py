"""The Store facade: one folder = catalog.duckdb (rows) + vectors.h5 (numbers) + indexes/ + views/.

Write order for vectors: append to HDF5 and flush, then commit the catalog rows that point at them.
A crash between the two leaves unreferenced rows that the next writer truncates, so a half-written
batch is never visible and a re-run resumes from the last committed batch.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from embedstore.errors import BadInput, Conflict, NotFound
from embedstore.store.atomic import disk_full, no_space
from embedstore.store.catalog import Catalog
from embedstore.store.holders import forget_writer, record_writer
from embedstore.store.vectors import VectorFile
from embedstore.video.deid import SALT_ENV

TARGETS = ("videos", "reports", "studies")  # studies: EchoPrime section vectors (index/studies.py)
SALT_FILE = "salt.key"  # the pseudonym key, beside the catalog but never inside it (user filters read the catalog)
SALT_FILE_ENV = "EMBEDSTORE_SALT_FILE"  # or a key file kept elsewhere, e.g. off the machine that holds the store


def normalise(vectors: np.ndarray, dim: int | None = None, what: str = "vectors") -> np.ndarray:
    """Validate a [N, D] batch (finite, non-zero, right dim) and L2-normalise rows not already unit."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise BadInput(f"{what} must be a [N, D] matrix, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise BadInput(f"{what} have dimension {arr.shape[1]} but the encoder's is {dim}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise BadInput(f"{what} row {int(np.argmax(bad))} holds NaN or inf; fix or drop it")
    norms = np.linalg.norm(arr, axis=1)
    if (norms == 0).any():
        raise BadInput(f"{what} row {int(np.argmax(norms == 0))} is all zeros; cosine similarity is undefined")
    off = np.abs(norms - 1) > 1e-5  # leave unit rows bit-for-bit as given
    if off.any():
        arr = arr.copy()
        arr[off] /= norms[off, None]
    return arr


@dataclass
class Run:
    """What one command wrote: counted as it goes, recorded in `runs` when it ends."""

    run_id: str
    added: int = 0
    failures: list[dict] = field(default_factory=list)

    def fail(self, item: str, error: str) -> None:
        self.failures.append({"item": item, "error": error})


class Store:
    """A self-contained, relocatable store folder.

    Three ways to open it (docs/architecture.md, "Read-only"): a writer (`read_only=False`: catalog,
    vectors and derived files; alone); a reader (`read_only=True`: writes nothing at all in the folder,
    shares the store with other readers); a reader that writes derived files (`write_derived=True`:
    `index` and `view` write indexes/, views/ and the calibration, atomically, beside other readers).
    """

    def __init__(self, path: str | Path, read_only: bool = False, write_derived: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        self.writes_derived = not read_only or write_derived
        self.memo: dict = {}  # derived data a reader computed but may not write (e.g. a calibration)
        self.catalog = Catalog(self.path / "catalog.duckdb", read_only=read_only)
        self.vectors = VectorFile(self.path / "vectors.h5")
        if not read_only:
            self._keep_salt()
            record_writer(self.path)

    def close(self) -> None:
        if not self.read_only:
            forget_writer(self.path)
        self.catalog.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def salt(self) -> str:
        """The key of the store's pseudonyms: $EMBEDSTORE_SALT, else the key file ($EMBEDSTORE_SALT_FILE or
        salt.key in the folder), else (a store not yet opened for writing since the key moved) the catalog's.
        Conflict when it is not the key the store's pseudonyms were made with, as `salt_check` records."""
        salt = os.environ.get(SALT_ENV) or ""
        if not salt:
            key = self._salt_file()
            salt = key.read_text().strip() if key.is_file() else (self.catalog.get_meta("salt") or "")
        recorded = self.catalog.get_meta("salt_check")
        if recorded and _salt_check(salt) != recorded:
            raise Conflict(f"the pseudonym key in use (from ${SALT_ENV}, ${SALT_FILE_ENV} or {SALT_FILE}) is not the "
                           f"one store {self.path.name} was made with; set it as when the store was created")
        return salt

    def _salt_file(self) -> Path:
        return Path(os.environ.get(SALT_FILE_ENV) or self.path / SALT_FILE)

    def _keep_salt(self) -> None:
        """Keep the pseudonym key out of the catalog: a new store writes a random key file (0600) unless the
        key comes from the environment; a store from before moves its catalog salt into the file."""
        legacy = self.catalog.get_meta("salt")
        external = os.environ.get(SALT_ENV) or os.environ.get(SALT_FILE_ENV)
        key = self.path / SALT_FILE
        if legacy or not (external or key.exists()):
            if not key.exists():
                _write_private(key, legacy or secrets.token_hex(16))
        if legacy or self.catalog.get_meta("salt_check") is None:
            salt = legacy or self.salt
            with self.catalog.transaction():
                if salt and self.catalog.get_meta("salt_check") is None:
                    self.catalog.set_meta("salt_check", _salt_check(salt))
                self.catalog.delete_meta("salt")

    @property
    def mask(self) -> str:
        """'on' (default: only the ultrasound image reaches encoders and thumbnails) or 'off' (set explicitly)."""
        return self.catalog.get_meta("mask") or "on"

    def set_mask(self, setting: str) -> None:
        """Change the mask setting; refused once vectors exist, since they were prepared with the old one."""
        from embedstore.video.regions import check_setting

        if check_setting(setting) == self.mask:
            return
        if self.catalog.query("SELECT count(*) FROM embeddings")[0][0]:
            raise Conflict(f"store {self.path} holds vectors prepared with mask {self.mask}; "
                           f"use a new store for mask {setting}")
        self.catalog.set_meta("mask", setting)

    @property
    def indexes_dir(self) -> Path:
        return self.path / "indexes"

    @property
    def views_dir(self) -> Path:
        return self.path / "views"

    # -- runs ----------------------------------------------------------------------------------
    @contextmanager
    def run(self, command: str, args: dict) -> Iterator[Run]:
        """Record a command in `runs`: 'done', 'failed' or 'interrupted' (Ctrl-C) with its counts."""
        run = Run(self.catalog.start_run(command, args))
        try:
            yield run
        except KeyboardInterrupt:
            self.catalog.finish_run(run.run_id, "interrupted", run.added, run.failures)
            raise
        except BaseException as exc:
            run.fail("(run)", "".join(traceback.format_exception_only(type(exc), exc)).strip())
            self.catalog.finish_run(run.run_id, "failed", run.added, run.failures)
            raise
        self.catalog.finish_run(run.run_id, "done", run.added, run.failures)

    # -- rows ----------------------------------------------------------------------------------
    def add_videos(self, rows: list[dict]) -> int:
        return self.catalog.add_videos(rows)

    def add_reports(self, rows: list[dict]) -> int:
        return self.catalog.add_reports(rows)

    def videos(self, ids: list[str] | None = None) -> list[dict]:
        """Catalog rows of the given ids (in that order) or of every video."""
        if ids is None:
            return self.catalog.query_dicts("SELECT * FROM videos ORDER BY video_id")
        rows = {r["video_id"]: r for r in self.catalog.query_dicts(
            "SELECT * FROM videos WHERE video_id IN (SELECT unnest(?))", [list(ids)])}
        missing = [i for i in ids if i not in rows]
        if missing:
            raise NotFound(f"unknown video id {missing[0]!r}; list ids with `embedstore info` or search by --video")
        return [rows[i] for i in ids]

    # -- vectors -------------------------------------------------------------------------------
    def encoder_info(self, encoder: str) -> dict:
        info = self.catalog.encoder(encoder)
        if info is None:
            known = ", ".join(r[0] for r in self.catalog.query("SELECT name FROM encoders ORDER BY name")) or "none"
            raise NotFound(
                f"store {self.path} has no vectors for encoder '{encoder}' (it has: {known}); "
                f"run `embedstore encode --store {self.path} --encoder {encoder}`"
            )
        return info

    @contextmanager
    def writer(self, provenance: dict, target: str = "videos", run: Run | None = None):
        """Yield `write(ids, vectors) -> added`, appending batch after batch; each batch is atomic."""
        if target not in TARGETS:
            raise BadInput(f"target must be one of {TARGETS}, got {target!r}")
        name, dim = provenance["encoder"], int(provenance["dim"])
        with self.catalog.transaction():
            self.catalog.register_encoder(provenance)
        done = self.catalog.embedded_ids(name, target)
        attrs = {"encoder": name, "dim": dim, "weights_sha256": provenance["weights_sha256"],
                 "package_version": provenance.get("package_version", "")}
        committed = self.catalog.committed_rows(name, target)
        with self.vectors.appender(name, target, dim, committed, attrs) as append:

            def write(ids: list[str], vectors: np.ndarray) -> int:
                if len(set(ids)) != len(ids):
                    raise BadInput("a batch names the same id twice; ids must be unique")
                arr = normalise(vectors, dim, f"{name} vectors")
                if len(arr) != len(ids):
                    raise BadInput(f"{len(ids)} ids but {len(arr)} vectors")
                keep = [i for i, item in enumerate(ids) if item not in done]
                if not keep:
                    return 0
                new_ids = [ids[i] for i in keep]
                try:  # rows appended past the catalog are dropped by the next writer: the batch is absent
                    first = append(arr[keep])
                    self.catalog.add_embeddings(name, target, new_ids, first, run.run_id if run else None)
                except Exception as exc:
                    if no_space(exc):
                        raise disk_full(f"{name} vectors") from None
                    raise
                done.update(new_ids)
                if run is not None:
                    run.added += len(new_ids)
                return len(new_ids)

            yield write

    def add_vectors(self, provenance: dict, ids: list[str], vectors: np.ndarray, target: str = "videos") -> int:
        """Append vectors for ids not yet embedded by this encoder (idempotent per id)."""
        with self.writer(provenance, target) as write:
            return write(list(ids), vectors)

    def get_vectors(self, encoder: str, ids: list[str], target: str = "videos") -> np.ndarray:
        self.encoder_info(encoder)
        rows = self.catalog.rows_for(encoder, target, list(ids))
        missing = [i for i in ids if i not in rows]
        if missing:
            raise NotFound(f"no {encoder} vector for {target[:-1]} id {missing[0]!r}; check the id or encode it first")
        return self.vectors.read_rows(encoder, target, np.array([rows[i] for i in ids]))

    def all_vectors(self, encoder: str, target: str = "videos") -> tuple[list[str], np.ndarray]:
        """Every committed vector with its id, in row order (rows past the catalog are ignored)."""
        ids, matrix = [], []
        for batch_ids, batch in self.iter_vectors(encoder, target, batch_size=65536):
            ids.extend(batch_ids)
            matrix.append(batch)
        dim = int(self.encoder_info(encoder)["dim"])
        return ids, (np.concatenate(matrix) if matrix else np.zeros((0, dim), np.float32))

    def iter_vectors(self, encoder: str, target: str = "videos", batch_size: int = 4096):
        """Yield (ids, vectors) batches in row order without loading the whole set."""
        self.encoder_info(encoder)
        mapping = self.catalog.embedding_map(encoder, target)
        for start in range(0, len(mapping), batch_size):
            chunk = mapping[start : start + batch_size]
            rows = np.array([r for _, r in chunk])
            contiguous = rows[-1] - rows[0] == len(rows) - 1
            data = (self.vectors.read_range(encoder, target, int(rows[0]), int(rows[-1]) + 1) if contiguous
                    else self.vectors.read_rows(encoder, target, rows))
            yield [i for i, _ in chunk], data

    def check(self, encoder: str, target: str = "videos") -> None:
        """Verify that the catalog's rows exist in vectors.h5; say so clearly when they do not."""
        n = self.catalog.committed_rows(encoder, target)
        with self.vectors.reader() as fh:
            key = f"{encoder}/{target}"
            have = fh[key].shape[0] if key in fh else 0
        if have < n:
            raise Conflict(f"catalog maps {n} {encoder} rows but vectors.h5 holds {have}; the store was copied partly")

    # -- summary -------------------------------------------------------------------------------
    def info(self) -> dict:
        counts = self.catalog.counts()
        sets = self.catalog.query_dicts(
            "SELECT e.name AS encoder, m.target, count(m.item_id) AS n, e.dim, e.weights_sha256 "
            "FROM encoders e LEFT JOIN embeddings m ON m.encoder = e.name GROUP BY ALL ORDER BY 1, 2"
        )
        indexes = sorted(p.name for p in self.indexes_dir.glob("*.faiss")) if self.indexes_dir.exists() else []
        size = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return {"path": str(self.path), "counts": counts, "vector_sets": sets, "indexes": indexes, "bytes": size}


def _salt_check(salt: str) -> str:
    """Tells keys apart without revealing one (a keyed hash of a fixed text)."""
    return hmac.new(salt.encode(), b"embedstore salt check", hashlib.sha256).hexdigest()[:16]


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, all at once (a temp file renamed into place)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
