"""Erasure (withdrawn consent, a data-protection request): a patient's, study's or video's items leave the store.

Why in this order, and why it survives kill -9:
1. One catalog transaction deletes the rows (embeddings, videos, reports, then patients and studies
   left with nothing) and appends the erasure to the `erasures` log with the freed vector rows as
   `pending`. From its commit on, no search, export, view or evaluation can reach the items: they all
   start from the catalog. Before it, nothing has changed.
2. Then the files that still hold the items' numbers are cleaned, each step idempotent: the freed
   HDF5 rows are overwritten with zeros (rows a later writer reused are left alone), the ids are
   removed from every index whose FAISS type can remove them (IDMap over Flat, IVF) and saved
   atomically; an index that cannot (HNSW, the memory-mapped IVF-PQ) loses its .faiss file, so
   readers search exactly until `embedstore index` rebuilds it; the same-patient calibration and the
   views of the encoders touched are deleted.
3. The log row is marked done. A killed run leaves it pending; the next writer to open the store
   (any command that writes) finishes it before doing anything else.
The log holds counts, HMAC-hashed ids (the store's salt as key) and times, never the ids themselves.
The space of zeroed rows comes back with `embedstore compact`.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timezone

import numpy as np

from embedstore.errors import BadInput, NotFound
from embedstore.store import catalog as cat
from embedstore.store.store import Store

KINDS = ("patient", "study", "video", "where")


def erase(store: Store, *, patient: str | None = None, study: str | None = None, video: str | None = None,
          where: str | None = None, dry_run: bool = False) -> dict:
    """Erase the items one selector names; with dry_run only count them. Returns counts and the log id."""
    given = {k: v for k, v in {"patient": patient, "study": study, "video": video, "where": where}.items() if v is not None}
    if len(given) != 1:
        raise BadInput(f"give exactly one of --patient, --study, --video, --where (got {', '.join(given) or 'none'})")
    if store.read_only:
        raise BadInput("erasure needs the store opened for writing")
    kind, value = next(iter(given.items()))  # interrupted erasures were finished when the store opened
    if kind == "where":
        from embedstore.store.expressions import matching_ids  # the one --where sandbox

        video_ids, report_ids = cat.erasure_items(store.catalog, kind, value, matching_ids(store.catalog, "videos", value))
    else:
        video_ids, report_ids = cat.erasure_items(store.catalog, kind, value)
    vectors = sum(len(store.catalog.rows_for(e, t, video_ids if t == "videos" else report_ids))
                  for e in _encoders(store) for t in ("videos", "reports"))
    counts = {"videos": len(video_ids), "reports": len(report_ids)}
    summary = {"selector": kind, "dry_run": dry_run, "counts": {**counts, "vectors": vectors}}
    if not video_ids and not report_ids:
        raise NotFound(f"no videos or reports match --{kind} {value!r}; nothing to erase "
                       f"(--patient and --study take the pseudonymised ids shown by `embedstore search`)")
    if dry_run:
        return {**summary, "erasure_id": None}
    key = store.salt.encode()
    record = {"erasure_id": f"erasure-{secrets.token_hex(6)}", "selector": kind, "counts": counts,
              "hashed_ids": sorted(hmac.new(key, i.encode(), hashlib.sha256).hexdigest()[:32] for i in video_ids + report_ids)}
    freed = cat.erase_rows(store.catalog, video_ids, report_ids, record)
    clean(store, freed)
    cat.finish_erasure(store.catalog, record["erasure_id"])
    store.catalog.con.execute("CHECKPOINT")  # deleted rows leave the write-ahead log for the database file
    return {**summary, "erasure_id": record["erasure_id"],
            "counts": {**counts, "vectors": sum(len(r) for r in freed.values())}}


def finish_pending(store: Store) -> None:
    """Clean up after erasures a crash interrupted (their catalog rows are already gone)."""
    for erasure_id, freed in cat.pending_erasures(store.catalog):
        clean(store, freed)
        cat.finish_erasure(store.catalog, erasure_id)


def clean(store: Store, freed: dict[str, list[int]]) -> None:
    """Zero the freed vector rows, take them out of the indexes, delete calibrations and views of the encoders."""
    from embedstore.index.similar import calibration_path

    encoders = set()
    for name, rows in freed.items():
        encoder, target = name.split("/")
        encoders.add(encoder)
        live = cat.live_rows(store.catalog, encoder, target)
        store.vectors.scrub(encoder, target, [r for r in rows if r not in live])
        remove_from_index(store, encoder, target, np.array(sorted(set(rows) - live), dtype=np.int64))
    for encoder in encoders:
        for path in [calibration_path(store, encoder),
                     *(store.views_dir.glob(f"{encoder}.*") if store.views_dir.exists() else [])]:
            path.unlink(missing_ok=True)


def remove_from_index(store: Store, encoder: str, target: str, rows: np.ndarray) -> None:
    """remove_ids where FAISS can (IDMap over Flat, IVF); otherwise drop the .faiss file (the sidecar stays)."""
    import faiss

    from embedstore.index import build, factory, files

    index_path, sidecar_path = files.index_paths(store, encoder, target)
    if not index_path.exists() or len(rows) == 0:
        return
    try:
        sidecar = build.read_sidecar(store, encoder, target)
        if factory.is_large(sidecar["factory"]):
            raise RuntimeError("a memory-mapped index is rebuilt, not edited")
        index = faiss.read_index(str(index_path))
        index.remove_ids(faiss.IDSelectorBatch(rows))
    except Exception:  # noqa: BLE001 - HNSW ("not implemented"), a damaged file: either way the file must go
        index_path.unlink(missing_ok=True)
        return
    live = np.array(sorted(cat.live_rows(store.catalog, encoder, target)), dtype=np.int64)
    fresh = index.ntotal == len(live)  # else it was already missing newer rows: stay stale, writers refresh it
    files.save_index(store, index, {
        **sidecar, "n": int(index.ntotal), "last_row": int(live.max()) if len(live) else -1,
        "fingerprint": store.catalog.fingerprint(encoder, target) if fresh else sidecar["fingerprint"],
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def _encoders(store: Store) -> list[str]:
    return [r["name"] for r in store.catalog.query_dicts("SELECT name FROM encoders ORDER BY name")]
