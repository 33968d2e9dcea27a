"""catalog.duckdb: the rows (videos, patients, studies, reports, embeddings map, encoders, runs).

Every write is one DuckDB transaction, so a killed process leaves either all of a batch or none.
A Catalog may be shared between threads (the REST service does): each thread talks to DuckDB
through a cursor of its own, since one DuckDB connection is not thread-safe.
"""
from __future__ import annotations

import json
import secrets
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import duckdb

from embedstore.errors import BadInput, Conflict

SCHEMA_VERSION = "1"

VIDEO_COLUMNS = [
    "video_id", "source_path", "sha256", "patient_id", "study_id", "acquired_at", "view", "split",
    "n_frames", "fps", "height", "width", "format", "ef", "esv", "edv",
    "image_region",
]

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
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, command VARCHAR, args JSON, started_at TIMESTAMP, finished_at TIMESTAMP,
    status VARCHAR, added INTEGER, failed INTEGER, failures JSON);
ALTER TABLE videos ADD COLUMN IF NOT EXISTS image_region JSON;  -- video/regions.py: what the mask kept
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
        self._base = duckdb.connect(str(self.path), read_only=read_only, config=config)
        self._local = threading.local()
        self._local.con = self._base  # the opening thread uses the connection itself
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._cursors_lock = threading.Lock()
        if not read_only:
            self.con.execute(SCHEMA)
            if self.get_meta("salt") is None:
                with self.transaction():
                    self.set_meta("salt", secrets.token_hex(16))
                    self.set_meta("schema_version", SCHEMA_VERSION)
                    self.set_meta("created_at", now().isoformat())

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

    def _link_people(self, rows: list[dict]) -> None:
        patients = sorted({r["patient_id"] for r in rows if r.get("patient_id")})
        studies = sorted({(r["study_id"], r.get("patient_id")) for r in rows if r.get("study_id")})
        if patients:
            self._insert("patients", {"patient_id": patients}, ignore=True)
        if studies:
            self._insert("studies", {"study_id": [s[0] for s in studies], "patient_id": [s[1] for s in studies]},
                         ignore=True)

    def _insert(self, table: str, columns: dict[str, list], ignore: bool = False) -> None:
        """One INSERT ... SELECT from an Arrow table: executemany costs DuckDB milliseconds a row."""
        import pyarrow as pa

        name = f"_bulk_{table}"
        self.con.register(name, pa.table(columns))
        cols = ", ".join(f'"{c}"' for c in columns)
        try:
            self.con.execute(f"INSERT {'OR IGNORE ' if ignore else ''}INTO {table} ({cols}) SELECT {cols} FROM {name}")
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

    # -- runs ----------------------------------------------------------------------------------
    def start_run(self, command: str, args: dict) -> str:
        run_id = f"{now():%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
        with self.transaction():
            self.con.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, NULL, 'running', 0, 0, '[]')",
                [run_id, command, json.dumps(args, default=str, sort_keys=True), now()],
            )
        return run_id

    def finish_run(self, run_id: str, status: str, added: int, failures: list[dict]) -> None:
        with self.transaction():
            self.con.execute(
                "UPDATE runs SET finished_at = ?, status = ?, added = ?, failed = ?, failures = ? WHERE run_id = ?",
                [now(), status, added, len(failures), json.dumps(failures), run_id],
            )

    def counts(self) -> dict[str, int]:
        tables = ["videos", "patients", "studies", "reports", "embeddings", "encoders", "runs"]
        return {t: int(self.con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in tables}


class _Transaction:
    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con

    def __enter__(self):
        self.con.execute("BEGIN TRANSACTION")
        return self.con

    def __exit__(self, exc_type, exc, tb):
        self.con.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
