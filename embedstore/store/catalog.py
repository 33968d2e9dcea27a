"""catalog.duckdb: the rows (videos, patients, studies, reports, embeddings map, encoders, runs).

Every write is one DuckDB transaction, so a killed process leaves either all of a batch or none.
A Catalog may be shared between threads (the REST service does): each thread talks to DuckDB
through a cursor of its own, since one DuckDB connection is not thread-safe.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import duckdb

from embedstore.errors import BadInput, Conflict
from embedstore.store.holders import locked_error

SCHEMA_VERSION = "1"

VIDEO_COLUMNS = [
    "video_id", "source_path", "sha256", "patient_id", "study_id", "acquired_at", "view", "split",
    "n_frames", "fps", "height", "width", "format", "ef", "esv", "edv",
    "image_region", "series_id",
]

METADATA_TABLES = {"videos": ("videos", "video_id"), "reports": ("reports", "report_id"),
                   "studies": ("study_sections", "item_id")}
METADATA_COLUMNS = {"videos": (*VIDEO_COLUMNS, "added_at"),
                    "reports": ("report_id", "study_id", "video_id", "patient_id", "text"),
                    "studies": ("item_id", "study_id", "section", "patient_id", "n_videos")}

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS patients (patient_id VARCHAR PRIMARY KEY);
CREATE TABLE IF NOT EXISTS studies (study_id VARCHAR PRIMARY KEY, patient_id VARCHAR);
CREATE TABLE IF NOT EXISTS videos (
    video_id VARCHAR PRIMARY KEY, source_path VARCHAR, sha256 VARCHAR, patient_id VARCHAR,
    study_id VARCHAR, acquired_at TIMESTAMP, view VARCHAR, split VARCHAR, n_frames INTEGER,
    fps DOUBLE, height INTEGER, width INTEGER, format VARCHAR, ef DOUBLE, esv DOUBLE, edv DOUBLE,
    added_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS reports (
    report_id VARCHAR PRIMARY KEY, study_id VARCHAR, video_id VARCHAR, patient_id VARCHAR, text VARCHAR);
CREATE TABLE IF NOT EXISTS encoders (
    name VARCHAR PRIMARY KEY, dim INTEGER, weights VARCHAR, weights_sha256 VARCHAR,
    preprocessing JSON, package_version VARCHAR, modalities VARCHAR, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS embeddings (
    encoder VARCHAR, target VARCHAR, item_id VARCHAR, "row" BIGINT, run_id VARCHAR, created_at TIMESTAMP,
    PRIMARY KEY (encoder, target, item_id));
CREATE TABLE IF NOT EXISTS declared (
    video_id VARCHAR PRIMARY KEY, fps DOUBLE, n_frames INTEGER, height INTEGER, width INTEGER);
CREATE TABLE IF NOT EXISTS tracings (
    video_id VARCHAR PRIMARY KEY, ed_frame INTEGER, es_frame INTEGER, ed JSON, es JSON);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, command VARCHAR, args JSON, started_at TIMESTAMP, finished_at TIMESTAMP,
    status VARCHAR, added INTEGER, failed INTEGER, failures JSON, pid INTEGER, host VARCHAR);
ALTER TABLE runs ADD COLUMN IF NOT EXISTS pid INTEGER;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS host VARCHAR;
CREATE TABLE IF NOT EXISTS erasures (
    erasure_id VARCHAR PRIMARY KEY, erased_at TIMESTAMP, selector VARCHAR, counts JSON, hashed_ids JSON,
    pending JSON, status VARCHAR, finished_at TIMESTAMP);
ALTER TABLE videos ADD COLUMN IF NOT EXISTS image_region JSON;  -- video/regions.py: what the mask kept
ALTER TABLE videos ADD COLUMN IF NOT EXISTS series_id VARCHAR;  -- keyed hash of the Series Instance UID
"""


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Catalog:
    """Thin wrapper over one DuckDB database; SQL lives here and nowhere else."""

    def __init__(self, path: Path, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        # Read-only catalogs serve user filters (--where, REST): no file or network access from SQL.
        config = {"enable_external_access": False} if read_only else {}
        try:
            self._base = duckdb.connect(str(self.path), read_only=read_only, config=config)
        except duckdb.IOException as exc:
            locked = locked_error(self.path.parent, exc, read_only)
            if locked is None:
                raise
            raise locked from None
        self._local = threading.local()
        self._local.con = self._base  # the opening thread uses the connection itself
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._cursors_lock = threading.Lock()
        if not read_only:
            self.con.execute(SCHEMA)
            if self.get_meta("schema_version") is None:
                with self.transaction():
                    self.set_meta("schema_version", SCHEMA_VERSION)
                    self.set_meta("created_at", now().isoformat())
            self.close_dead_runs()

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """This thread's connection. One DuckDB connection must not serve two threads at once (a result is
        fetched from the connection after `execute`, so a second thread's query can swap it); its cursors are
        connections of their own to the same database, so every other thread gets one, kept for its lifetime."""
        try:
            return self._local.con
        except AttributeError:
            con = self._local.con = self._base.cursor()
            with self._cursors_lock:
                self._cursors.append(con)
            return con

    def close(self) -> None:
        with self._cursors_lock:
            for cursor in self._cursors:
                cursor.close()
            self._cursors.clear()
        self._base.close()

    # -- helpers -------------------------------------------------------------------------------
    def transaction(self):
        return _Transaction(self.con)

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        return self.con.execute(sql, list(params)).fetchall()

    def query_dicts(self, sql: str, params: Iterable[Any] = ()) -> list[dict]:
        cur = self.con.execute(sql, list(params))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def get_meta(self, key: str) -> str | None:
        row = self.con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])

    def delete_meta(self, key: str) -> None:
        self.con.execute("DELETE FROM meta WHERE key = ?", [key])

    # -- videos, patients, studies, reports ----------------------------------------------------
    def known_sha256(self) -> dict[str, str]:
        return dict(self.query("SELECT sha256, video_id FROM videos WHERE sha256 IS NOT NULL"))

    def video_ids(self) -> set[str]:
        return {r[0] for r in self.query("SELECT video_id FROM videos")}

    def add_videos(self, rows: list[dict]) -> int:
        """Insert new video rows (unknown keys refused) with their patients and studies; returns count."""
        if not rows:
            return 0
        for row in rows:
            extra = set(row) - set(VIDEO_COLUMNS)
            if extra:
                raise BadInput(f"unknown video column(s) {sorted(extra)}; known: {VIDEO_COLUMNS}")
        data = {c: [row.get(c) for row in rows] for c in VIDEO_COLUMNS}
        data["added_at"] = [now()] * len(rows)
        with self.transaction():
            self._insert("videos", data)
            self._link_people(rows)
        return len(rows)

    def update_labels(self, rows: list[dict]) -> int:
        """Set label columns (ef, esv, edv, split, patient_id, study_id) of videos already known."""
        allowed = {"ef", "esv", "edv", "split", "patient_id", "study_id", "fps", "n_frames", "height", "width"}
        n = 0
        with self.transaction():
            for row in rows:
                cols = [c for c in row if c in allowed and row[c] is not None]
                if not cols:
                    continue
                sets = ", ".join(f"{c} = ?" for c in cols)
                self.con.execute(f"UPDATE videos SET {sets} WHERE video_id = ?", [row[c] for c in cols] + [row["video_id"]])
                n += 1
            self._link_people(rows)
        return n

    def set_declared(self, rows: list[dict]) -> int:
        """Frame rate, frame count and size a list (FileList.csv) declares, kept beside the decoded ones."""
        rows = [r for r in rows if any(r.get(c) is not None for c in ("fps", "n_frames", "height", "width"))]
        if rows:
            with self.transaction():
                self._insert("declared", {c: [r.get(c) for r in rows] for c in ("video_id", "fps", "n_frames", "height",
                                                                                  "width")}, replace=True)
        return len(rows)

    def set_tracings(self, rows: list[dict]) -> int:
        """ED/ES frames and traced LV outlines (VolumeTracings.csv) of known videos; a re-import replaces them."""
        if rows:
            with self.transaction():
                self._insert("tracings", {"video_id": [r["video_id"] for r in rows],
                                          "ed_frame": [r["ed_frame"] for r in rows], "es_frame": [r["es_frame"] for r in rows],
                                          "ed": [json.dumps(r["ed"]) for r in rows], "es": [json.dumps(r["es"]) for r in rows]},
                             replace=True)
        return len(rows)

    def tracing(self, video_id: str) -> dict | None:
        """{ed_frame, es_frame, ed, es} of one video ([[x1, y1, x2, y2], ...], long axis first), or None."""
        if not self._has_table("tracings"):  # a store written before tracings were imported, opened read-only
            return None
        rows = self.query_dicts("SELECT ed_frame, es_frame, ed, es FROM tracings WHERE video_id = ?", [video_id])
        return {**rows[0], "ed": json.loads(rows[0]["ed"]), "es": json.loads(rows[0]["es"])} if rows else None

    def declared(self, video_id: str) -> dict | None:
        """What the list declared for one video (fps, n_frames, height, width), or None."""
        if not self._has_table("declared"):
            return None
        rows = self.query_dicts("SELECT fps, n_frames, height, width FROM declared WHERE video_id = ?", [video_id])
        return rows[0] if rows else None

    def _has_table(self, name: str) -> bool:
        return bool(self.query("SELECT 1 FROM information_schema.tables WHERE table_name = ?", [name]))

    def _table_columns(self, name: str) -> set[str]:
        return {r[0] for r in self.query("SELECT column_name FROM information_schema.columns WHERE table_name = ?", [name])}

    def _link_people(self, rows: list[dict]) -> None:
        patients = sorted({r["patient_id"] for r in rows if r.get("patient_id")})
        studies = sorted({(r["study_id"], r.get("patient_id")) for r in rows if r.get("study_id")})
        if patients:
            self._insert("patients", {"patient_id": patients}, ignore=True)
        if studies:
            self._insert("studies", {"study_id": [s[0] for s in studies], "patient_id": [s[1] for s in studies]},
                         ignore=True)

    def _insert(self, table: str, columns: dict[str, list], ignore: bool = False, replace: bool = False) -> None:
        """One INSERT ... SELECT from an Arrow table: executemany costs DuckDB milliseconds a row."""
        import pyarrow as pa

        name = f"_bulk_{table}"
        self.con.register(name, pa.table(columns))
        cols = ", ".join(f'"{c}"' for c in columns)
        try:
            mode = "OR IGNORE " if ignore else "OR REPLACE " if replace else ""
            self.con.execute(f"INSERT {mode}INTO {table} ({cols}) SELECT {cols} FROM {name}")
        finally:
            self.con.unregister(name)

    def add_reports(self, rows: list[dict]) -> int:
        """Insert reports not yet present (by report_id); returns how many were new."""
        known = {r[0] for r in self.query("SELECT report_id FROM reports")}
        new = [r for r in rows if r["report_id"] not in known]
        if new:
            with self.transaction():
                cols = ("report_id", "study_id", "video_id", "patient_id", "text")
                self._insert("reports", {c: [r.get(c) for r in new] for c in cols})
                self._link_people(new)
        return len(new)

    # -- encoders and embeddings ---------------------------------------------------------------
    def encoder(self, name: str) -> dict | None:
        rows = self.query_dicts("SELECT * FROM encoders WHERE name = ?", [name])
        if not rows:
            return None
        row = rows[0]
        row["preprocessing"] = json.loads(row["preprocessing"]) if row["preprocessing"] else {}
        row["modalities"] = row["modalities"].split(",") if row["modalities"] else []
        return row

    def register_encoder(self, prov: dict) -> None:
        """Record an encoder's provenance once; refuse a second, different set under the same name."""
        old = self.encoder(prov["encoder"])
        if old is not None:
            if old["weights_sha256"] != prov["weights_sha256"] or old["dim"] != prov["dim"]:
                raise Conflict(
                    f"store already holds '{prov['encoder']}' vectors from weights {old['weights_sha256'][:12]} "
                    f"(dim {old['dim']}); these are {prov['weights_sha256'][:12]} (dim {prov['dim']}): use another store"
                )
            return
        self.con.execute(
            "INSERT INTO encoders VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [prov["encoder"], prov["dim"], prov["weights"], prov["weights_sha256"],
             json.dumps(prov.get("preprocessing", {}), sort_keys=True), prov.get("package_version", ""),
             ",".join(prov.get("modalities", ["video"])), now()],
        )

    def embedded_ids(self, encoder: str, target: str) -> set[str]:
        return {r[0] for r in self.query("SELECT item_id FROM embeddings WHERE encoder = ? AND target = ?", [encoder, target])}

    def committed_rows(self, encoder: str, target: str) -> int:
        row = self.con.execute(
            'SELECT coalesce(max("row") + 1, 0) FROM embeddings WHERE encoder = ? AND target = ?', [encoder, target]
        ).fetchone()
        return int(row[0])

    def add_embeddings(self, encoder: str, target: str, ids: list[str], first_row: int, run_id: str | None) -> None:
        import pyarrow as pa

        n = len(ids)
        data = {"encoder": [encoder] * n, "target": [target] * n, "item_id": list(ids),
                "row": pa.array(range(first_row, first_row + n), pa.int64()),
                "run_id": pa.array([run_id] * n, pa.string()), "created_at": [now()] * n}
        with self.transaction():
            self._insert("embeddings", data)

    def rows_for(self, encoder: str, target: str, ids: list[str]) -> dict[str, int]:
        if not ids:
            return {}
        found = self.query(
            'SELECT item_id, "row" FROM embeddings WHERE encoder = ? AND target = ? AND item_id IN (SELECT unnest(?))',
            [encoder, target, list(ids)],
        )
        return dict(found)

    def embedding_map(self, encoder: str, target: str) -> list[tuple[str, int]]:
        """(item_id, row) of every committed vector, in row order."""
        return self.query(
            'SELECT item_id, "row" FROM embeddings WHERE encoder = ? AND target = ? ORDER BY "row"', [encoder, target]
        )

    def fingerprint(self, encoder: str, target: str) -> str:
        """Changes whenever vectors of (encoder, target) are added or replaced."""
        n, last, ids_hash = self.con.execute(
            'SELECT count(*), coalesce(max("row"), -1), coalesce(sum(hash(item_id, "row")), 0) FROM embeddings '
            "WHERE encoder = ? AND target = ?",
            [encoder, target],
        ).fetchone()
        return f"{n}:{last}:{int(ids_hash) & 0xFFFFFFFFFFFF:x}"

    def labels_fingerprint(self, encoder: str) -> str:
        """Changes whenever the patients of videos with an `encoder` vector change (what a calibration is fitted on)."""
        n, ids_hash = self.con.execute(
            "SELECT count(*), coalesce(sum(hash(e.item_id, v.patient_id)), 0) FROM embeddings e "
            "JOIN videos v ON v.video_id = e.item_id WHERE e.encoder = ? AND e.target = 'videos' AND v.patient_id IS NOT NULL",
            [encoder],
        ).fetchone()
        return f"{n}:{int(ids_hash) & 0xFFFFFFFFFFFF:x}"

    # -- named questions of the layers above (SQL stays here) --------------------------------
    def pending_videos(self, encoder: str) -> list[tuple[str, str]]:
        """(video_id, source_path) of videos with a file and no `encoder` vector yet, by id."""
        return [(r[0], r[1]) for r in self.query(
            "SELECT video_id, source_path FROM videos v WHERE source_path IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM embeddings e WHERE e.encoder = ? AND e.target = 'videos' AND e.item_id = v.video_id) "
            "ORDER BY video_id", [encoder])]

    def report_texts(self) -> list[tuple[str, str]]:
        """(report_id, text) of every report, by id."""
        return self.query("SELECT report_id, text FROM reports ORDER BY report_id")

    def report_links(self) -> dict[str, tuple[str | None, str | None]]:
        """report_id -> (study_id, video_id)."""
        return {r[0]: (r[1], r[2]) for r in self.query("SELECT report_id, study_id, video_id FROM reports")}

    def reports_with_links(self) -> list[tuple[str | None, str | None, str]]:
        """(study_id, video_id, text) of every report, by report id."""
        return self.query("SELECT study_id, video_id, text FROM reports ORDER BY report_id")

    def embedded_dicoms(self, encoder: str) -> int:
        """How many of `encoder`'s video vectors come from DICOM files."""
        return int(self.query("SELECT count(*) FROM embeddings e JOIN videos v ON v.video_id = e.item_id "
                              "WHERE e.encoder = ? AND e.target = 'videos' AND v.format = 'dicom'", [encoder])[0][0])

    def embedded_files(self, encoder: str, limit: int) -> list[tuple[str, str]]:
        """(video_id, source_path) of the first `limit` videos, in vector row order, with an `encoder` vector and a path."""
        return self.query(
            "SELECT e.item_id, v.source_path FROM embeddings e JOIN videos v ON v.video_id = e.item_id "
            "WHERE e.encoder = ? AND e.target = 'videos' AND v.source_path IS NOT NULL ORDER BY e.\"row\" LIMIT ?",
            [encoder, limit])

    def video_by_sha256(self, sha256: str, encoder: str) -> str | None:
        """The first id (by id) of a video with these file bytes and an `encoder` vector."""
        row = self.query(
            "SELECT v.video_id FROM videos v JOIN embeddings e ON e.item_id = v.video_id "
            "WHERE v.sha256 = ? AND e.encoder = ? AND e.target = 'videos' ORDER BY v.video_id LIMIT 1",
            [sha256, encoder])
        return row[0][0] if row else None

    def labelled_patients(self, encoder: str) -> list[tuple[str, str]]:
        """(video_id, patient_id) of videos with an `encoder` vector and a patient, in vector row order."""
        return self.query(
            "SELECT e.item_id, v.patient_id FROM embeddings e JOIN videos v ON v.video_id = e.item_id "
            "WHERE e.encoder = ? AND e.target = 'videos' AND v.patient_id IS NOT NULL ORDER BY e.\"row\"", [encoder])

    def video_columns(self, ids: list[str], columns: list[str]) -> list[tuple]:
        """(video_id, *columns) of the given ids that have a row (any order); columns must be videos columns."""
        unknown = [c for c in columns if c not in VIDEO_COLUMNS]
        if unknown:
            raise BadInput(f"unknown videos column(s) {unknown}; known: {', '.join(VIDEO_COLUMNS)}")
        return self.query(f"SELECT video_id, {', '.join(columns)} FROM videos WHERE video_id IN (SELECT unnest(?))",
                          [list(ids)])

    def metadata_rows(self, encoder: str, target: str, columns: Sequence[str]):
        """Arrow table of every committed (encoder, target) vector in row order: "row", "item_id" and the given
        columns of its catalog row (nulls where it has none)."""
        table, key = METADATA_TABLES[target]
        unknown = [c for c in columns if c not in METADATA_COLUMNS[target]]
        if unknown:
            raise BadInput(f"unknown {table} column(s) {unknown}")
        present = self._table_columns(table)  # a store opened read-only may predate a column: nulls
        select = ", ".join(f"t.{c}" if c in present else f"NULL AS {c}" for c in columns)
        with self.con.cursor() as cursor:  # a cursor of its own: the catalog may hold an unfinished result
            return cursor.sql(
                f'SELECT e."row", e.item_id, {select} FROM embeddings e LEFT JOIN {table} t ON t.{key} = e.item_id '
                'WHERE e.encoder = $encoder AND e.target = $target ORDER BY e."row"',
                params={"encoder": encoder, "target": target}).to_arrow_table()

    # -- runs ----------------------------------------------------------------------------------
    def start_run(self, command: str, args: dict) -> str:
        run_id = f"{now():%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
        with self.transaction():
            self.con.execute(
                "INSERT INTO runs (run_id, command, args, started_at, finished_at, status, added, failed, failures, pid, host) "
                "VALUES (?, ?, ?, ?, NULL, 'running', 0, 0, '[]', ?, ?)",
                [run_id, command, json.dumps(args, default=str, sort_keys=True), now(), os.getpid(), socket.gethostname()],
            )
        return run_id

    def close_dead_runs(self) -> int:
        """Mark 'interrupted' the runs still 'running' whose process is gone (killed, crashed, power cut).

        Called on every writable open. A run of this host whose PID no longer exists, and a run recorded
        before PIDs were (none can still be running: this open holds the store's write lock), are closed;
        a run of another host is left as it is, since its process cannot be checked from here.
        """
        host, me = socket.gethostname(), os.getpid()
        dead = [run_id for run_id, pid, run_host in self.query("SELECT run_id, pid, host FROM runs WHERE status = 'running'")
                if pid is None or (run_host == host and pid != me and not _alive(pid))]
        if dead:
            note = json.dumps([{"item": "(run)", "error": "the process ended without recording its end (killed or crashed)"}])
            with self.transaction():
                self.con.execute("UPDATE runs SET status = 'interrupted', finished_at = ?, failures = ? "
                                 "WHERE run_id IN (SELECT unnest(?))", [now(), note, dead])
        return len(dead)

    def finish_run(self, run_id: str, status: str, added: int, failures: list[dict]) -> None:
        with self.transaction():
            self.con.execute(
                "UPDATE runs SET finished_at = ?, status = ?, added = ?, failed = ?, failures = ? WHERE run_id = ?",
                [now(), status, added, len(failures), json.dumps(failures), run_id],
            )

    def counts(self) -> dict[str, int]:
        tables = ["videos", "patients", "studies", "reports", "embeddings", "encoders", "runs"]
        return {t: int(self.con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in tables}

    # -- audits and splits (embedstore.analysis.audit) -----------------------------------------
    def video_table(self, columns: tuple[str, ...]) -> dict[str, list]:
        """Columns of every video in id order, one list each: an audit reads them once, not per pair."""
        unknown = [c for c in columns if c not in VIDEO_COLUMNS]
        if unknown:
            raise BadInput(f"unknown video column(s) {unknown}; known: {VIDEO_COLUMNS}")
        select = ", ".join(f'"{c}"' for c in columns)
        with self.con.cursor() as cursor:  # a cursor of its own: this connection may hold an unfinished result
            return cursor.sql(f"SELECT {select} FROM videos ORDER BY video_id").to_arrow_table().to_pydict()

    def set_splits(self, ids: list[str], splits: list[str]) -> int:
        """Set the split of the given videos in one transaction (all or none); returns how many rows changed."""
        import pyarrow as pa

        with self.transaction():  # registered inside it, as _insert does: the connection may hold a finished result
            self.con.register("_new_splits", pa.table({"video_id": list(ids), "split": list(splits)}))
            try:
                changed = self.con.execute(
                    "SELECT count(*) FROM videos v JOIN _new_splits n USING (video_id) "
                    "WHERE v.split IS DISTINCT FROM n.split").fetchall()[0][0]
                self.con.execute("UPDATE videos SET split = n.split FROM _new_splits n WHERE videos.video_id = n.video_id")
            finally:
                self.con.unregister("_new_splits")
        return int(changed)


    # -- views (EchoPrime view classifier) -----------------------------------------------------
    def videos_to_classify(self, all_videos: bool = False) -> list[tuple[str, str]]:
        """(video_id, source_path) of videos with a file and (unless `all_videos`) no view yet."""
        return [(r[0], r[1]) for r in self.query(
            "SELECT video_id, source_path FROM videos WHERE source_path IS NOT NULL"
            + ("" if all_videos else " AND view IS NULL") + " ORDER BY video_id")]

    def set_views(self, rows: list[tuple[str, str, float]]) -> int:
        """Write (video_id, view, confidence) rows in one transaction; adds videos.view_confidence once."""
        import pyarrow as pa

        if not rows:
            return 0
        table = pa.table({"video_id": [r[0] for r in rows], "view": [r[1] for r in rows],
                          "confidence": pa.array([float(r[2]) for r in rows], pa.float64())})
        with self.transaction():
            self.con.execute("ALTER TABLE videos ADD COLUMN IF NOT EXISTS view_confidence DOUBLE")
            self.con.register("_bulk_views", table)
            try:
                self.con.execute("UPDATE videos SET view = b.view, view_confidence = b.confidence "
                                 "FROM _bulk_views b WHERE videos.video_id = b.video_id")
            finally:
                self.con.unregister("_bulk_views")
        return len(rows)

    # -- study vectors (EchoPrime sections) ----------------------------------------------------
    def study_videos(self, encoder: str) -> list[tuple[str, str, str | None, str | None]]:
        """(video_id, study_id, patient_id, view) of every video in a study with an `encoder` video vector."""
        return self.query(
            "SELECT v.video_id, v.study_id, v.patient_id, v.view FROM videos v JOIN embeddings e ON e.item_id = v.video_id "
            "WHERE e.encoder = ? AND e.target = 'videos' AND v.study_id IS NOT NULL ORDER BY v.study_id, v.video_id",
            [encoder])

    def add_study_sections(self, rows: list[dict]) -> None:
        """Rows of study_sections (item_id = study_id/section): what a `studies` vector stands for."""
        self.con.execute("CREATE TABLE IF NOT EXISTS study_sections (item_id VARCHAR PRIMARY KEY, study_id VARCHAR, "
                         "section VARCHAR, patient_id VARCHAR, n_videos INTEGER)")
        if rows:
            cols = ("item_id", "study_id", "section", "patient_id", "n_videos")
            self._insert("study_sections", {c: [r[c] for r in rows] for c in cols}, ignore=True)

    def study_labels(self, columns: tuple[str, ...]) -> dict[str, dict[str, float]]:
        """Per study, the mean of each label column over its videos (NULLs left out; absent when all NULL)."""
        allowed = {"ef", "esv", "edv"}
        if not set(columns) <= allowed:
            raise BadInput(f"study labels come from {', '.join(sorted(allowed))}; got {', '.join(columns)}")
        select = ", ".join(f"avg({c})" for c in columns)
        out: dict[str, dict[str, float]] = {}
        for row in self.query(f"SELECT study_id, {select} FROM videos WHERE study_id IS NOT NULL GROUP BY study_id"):
            out[row[0]] = {c: float(v) for c, v in zip(columns, row[1:]) if v is not None}
        return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


# -- erasure (store/erase.py) ---------------------------------------------------------------------
ERASE_BY = {"patient": "patient_id", "study": "study_id", "video": "video_id"}


def erasure_items(catalog: Catalog, kind: str, value: str, video_ids: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(video ids, report ids) that `--patient/--study/--video value` names (or the given video ids, for --where).

    A report goes with an erased video, and with an erased patient or study even when it names no video."""
    if video_ids is None:
        video_ids = [r[0] for r in catalog.query(f"SELECT video_id FROM videos WHERE {ERASE_BY[kind]} = ? ORDER BY 1", [value])]
    column = ERASE_BY.get(kind) if kind in ("patient", "study") else None
    reports = catalog.query(
        "SELECT report_id FROM reports WHERE video_id IN (SELECT unnest(?))"
        + (f" OR {column} = ?" if column else "") + " ORDER BY 1",
        [list(video_ids)] + ([value] if column else []))
    return list(video_ids), [r[0] for r in reports]


def erase_rows(catalog: Catalog, video_ids: list[str], report_ids: list[str], record: dict) -> dict[str, list[int]]:
    """Delete the items' catalog rows (embeddings, videos, reports, then patients and studies left with nothing)
    and log the erasure, in one transaction. Returns the vector rows freed, by "encoder/target" (also kept
    in the log row as `pending` until store/erase.py has scrubbed them)."""
    with catalog.transaction():
        freed: dict[str, list[int]] = {}
        sections = _study_sections_of(catalog, video_ids, report_ids)  # study vectors made from what goes
        for encoder, target, row in catalog.query(
                'SELECT encoder, target, "row" FROM embeddings WHERE (target = \'videos\' AND item_id IN (SELECT unnest(?))) '
                'OR (target = \'reports\' AND item_id IN (SELECT unnest(?))) '
                'OR (target = \'studies\' AND item_id IN (SELECT unnest(?))) ORDER BY 1, 2, 3',
                [video_ids, report_ids, sections]):
            freed.setdefault(f"{encoder}/{target}", []).append(int(row))
        _scrub_failures(catalog, set(video_ids) | set(report_ids) | {r[0] for r in catalog.query(
            "SELECT source_path FROM videos WHERE video_id IN (SELECT unnest(?)) AND source_path IS NOT NULL", [video_ids])})
        people = catalog.query(
            "SELECT patient_id, study_id FROM videos WHERE video_id IN (SELECT unnest(?)) "
            "UNION SELECT patient_id, study_id FROM reports WHERE report_id IN (SELECT unnest(?))", [video_ids, report_ids])
        catalog.con.execute("DELETE FROM embeddings WHERE (target = 'videos' AND item_id IN (SELECT unnest(?))) "
                            "OR (target = 'reports' AND item_id IN (SELECT unnest(?))) "
                            "OR (target = 'studies' AND item_id IN (SELECT unnest(?)))", [video_ids, report_ids, sections])
        if sections:
            catalog.con.execute("DELETE FROM study_sections WHERE item_id IN (SELECT unnest(?))", [sections])
        catalog.con.execute("DELETE FROM videos WHERE video_id IN (SELECT unnest(?))", [video_ids])
        catalog.con.execute("DELETE FROM reports WHERE report_id IN (SELECT unnest(?))", [report_ids])
        patients = sorted({p for p, _ in people if p is not None})
        studies = sorted({s for _, s in people if s is not None})
        catalog.con.execute(
            "DELETE FROM studies WHERE study_id IN (SELECT unnest(?)) AND study_id NOT IN "
            "(SELECT study_id FROM videos WHERE study_id IS NOT NULL UNION SELECT study_id FROM reports WHERE study_id IS NOT NULL)",
            [studies])
        catalog.con.execute(
            "DELETE FROM patients WHERE patient_id IN (SELECT unnest(?)) AND patient_id NOT IN "
            "(SELECT patient_id FROM videos WHERE patient_id IS NOT NULL UNION SELECT patient_id FROM reports "
            "WHERE patient_id IS NOT NULL)", [patients])
        counts = {**record["counts"], "patients": len(patients), "studies": len(studies),
                  "vectors": sum(len(v) for v in freed.values())}
        catalog.con.execute(
            "INSERT INTO erasures VALUES (?, ?, ?, ?, ?, ?, 'pending', NULL)",
            [record["erasure_id"], now(), record["selector"], json.dumps(counts), json.dumps(record["hashed_ids"]),
             json.dumps(freed)])
    return freed


def _study_sections_of(catalog: Catalog, video_ids: list[str], report_ids: list[str]) -> list[str]:
    """Item ids of the study (section) vectors built from any of these videos' or reports' studies: a study
    vector sums its videos, so it goes with any of them."""
    if not catalog.query("SELECT 1 FROM information_schema.tables WHERE table_name = 'study_sections'"):
        return []
    return [r[0] for r in catalog.query(
        "SELECT item_id FROM study_sections WHERE study_id IN (SELECT study_id FROM videos WHERE video_id IN "
        "(SELECT unnest(?)) UNION SELECT study_id FROM reports WHERE report_id IN (SELECT unnest(?))) ORDER BY 1",
        [video_ids, report_ids])]


def _scrub_failures(catalog: Catalog, names: set[str]) -> None:
    """Drop the failures of earlier runs that name an erased item (by id or source path) from `runs`."""
    for run_id, failures in catalog.query("SELECT run_id, failures FROM runs WHERE failed > 0"):
        kept = [f for f in json.loads(failures or "[]")
                if f.get("item") not in names and not any(n in str(f.get("error", "")) for n in names)]
        if len(kept) != len(json.loads(failures or "[]")):
            catalog.con.execute("UPDATE runs SET failures = ?, failed = ? WHERE run_id = ?", [json.dumps(kept), len(kept), run_id])


def pending_erasures(catalog: Catalog) -> list[tuple[str, dict[str, list[int]]]]:
    """(erasure id, freed rows) of erasures whose vectors, indexes and views are not yet all cleaned."""
    return [(r[0], json.loads(r[1])) for r in catalog.query(
        "SELECT erasure_id, pending FROM erasures WHERE status = 'pending' ORDER BY erased_at")]


def finish_erasure(catalog: Catalog, erasure_id: str) -> None:
    with catalog.transaction():
        catalog.con.execute("UPDATE erasures SET status = 'done', pending = '{}', finished_at = ? WHERE erasure_id = ?",
                            [now(), erasure_id])


def erasure_log(catalog: Catalog) -> list[dict]:
    rows = catalog.query_dicts("SELECT erasure_id, erased_at, selector, counts, hashed_ids, status, finished_at "
                               "FROM erasures ORDER BY erased_at")
    for row in rows:
        row["counts"], row["hashed_ids"] = json.loads(row["counts"]), json.loads(row["hashed_ids"])
    return rows


def renumber_rows(catalog: Catalog, encoder: str, target: str, item_ids: list[str], new_rows: list[int]) -> None:
    """Point the items' embeddings at new rows (store/compact.py; the caller holds the transaction)."""
    import pyarrow as pa

    catalog.con.register("_renumber", pa.table({"item_id": item_ids, "new_row": pa.array(new_rows, pa.int64())}))
    try:
        catalog.con.execute('UPDATE embeddings SET "row" = m.new_row FROM _renumber m '
                            "WHERE embeddings.item_id = m.item_id AND embeddings.encoder = ? AND embeddings.target = ?",
                            [encoder, target])
    finally:
        catalog.con.unregister("_renumber")


def copy_database(catalog: Catalog, target: Path) -> None:
    """Copy every table into a new database file: DuckDB keeps deleted values in its pages until their
    row group is rewritten, a fresh copy holds only the live rows."""
    catalog.con.execute("ATTACH ? AS fresh", [str(target)])
    try:
        catalog.con.execute(f"COPY FROM DATABASE {catalog.path.stem} TO fresh")
    finally:
        catalog.con.execute("DETACH fresh")


def delete_meta(catalog: Catalog, key: str) -> None:
    catalog.con.execute("DELETE FROM meta WHERE key = ?", [key])


def vector_sets(catalog: Catalog) -> list[tuple[str, str]]:
    return catalog.query("SELECT DISTINCT encoder, target FROM embeddings ORDER BY 1, 2")


def live_rows(catalog: Catalog, encoder: str, target: str) -> set[int]:
    return {int(r[0]) for r in catalog.query('SELECT "row" FROM embeddings WHERE encoder = ? AND target = ?', [encoder, target])}


class _Transaction:
    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con

    def __enter__(self):
        self.con.execute("BEGIN TRANSACTION")
        return self.con

    def __exit__(self, exc_type, exc, tb):
        self.con.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
