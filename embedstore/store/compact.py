"""`embedstore compact`: give back the space of erased (zeroed) vector rows by rewriting vectors.h5 densely.

Why it survives kill -9: the new file is written aside (`vectors.h5.compact`) and synced; then one
catalog transaction points every embedding at its new row and records the swap in `meta`; then the
file is moved into place and the record cleared. A crash before the commit leaves the old file and
rows (the aside file is removed next time); after it, the next writer finishes the move
(`finish_swap`), and a reader refuses the store until one has. Indexes of renumbered sets have
other FAISS ids, so their files are rebuilt here; views and calibrations see a new fingerprint.
Last, the catalog is copied into a fresh file and swapped in (DuckDB keeps the values of deleted rows
in its pages until they are rewritten), so erased ids and pseudonyms leave catalog.duckdb too.
"""
from __future__ import annotations

import os

import h5py
import numpy as np

from embedstore.errors import Conflict
from embedstore.store import catalog as cat
from embedstore.store.atomic import whole_or_absent
from embedstore.store.store import Store
from embedstore.store.vectors import CHUNK_ROWS, key

SWAP = "compact_swap"
BATCH = 65_536


def finish_swap(store: Store) -> None:
    """Complete a compaction a crash interrupted after its catalog commit (writers), or refuse (readers)."""
    if store.catalog.get_meta(SWAP) is None:
        return
    if store.read_only:
        raise Conflict(f"store {store.path} holds an interrupted compaction; finish it with "
                       f"`embedstore compact --store {store.path}`")
    aside = store.path / store.catalog.get_meta(SWAP)
    if aside.exists():
        os.replace(aside, store.vectors.path)
    with store.catalog.transaction():
        cat.delete_meta(store.catalog, SWAP)


def compact(store: Store) -> dict:
    """Rewrite vectors.h5 with only the rows the catalog maps, numbered 0..n-1; returns rows before and after."""
    from embedstore.index.build import index_paths, load_index

    aside = store.vectors.path.with_name("vectors.h5.compact")
    aside.unlink(missing_ok=True)
    sets = cat.vector_sets(store.catalog)
    if not store.vectors.path.exists():
        return {"rows_before": 0, "rows_after": 0, "renumbered": []}
    with store.vectors.reader() as src:
        before = sum(src[key(e, t)].shape[0] for e, t in sets if key(e, t) in src)
    maps = {(e, t): store.catalog.embedding_map(e, t) for e, t in sets}
    with whole_or_absent(aside, "the compacted vectors.h5"):
        with store.vectors.reader() as src, h5py.File(aside, "w", libver="latest") as dst:
            for (encoder, target), mapping in maps.items():
                old = src[key(encoder, target)]
                dim = old.shape[1]
                out = dst.create_dataset(key(encoder, target), shape=(len(mapping), dim), maxshape=(None, dim),
                                         dtype="f4", chunks=(CHUNK_ROWS, dim))
                for name, value in old.attrs.items():
                    out.attrs[name] = value
                rows = np.array([r for _, r in mapping], dtype=np.int64)
                for start in range(0, len(rows), BATCH):
                    out[start : start + BATCH] = old[rows[start : start + BATCH]]
        with open(aside, "rb") as fh:
            os.fsync(fh.fileno())
    renumbered = [(e, t) for (e, t), m in maps.items() if [r for _, r in m] != list(range(len(m)))]
    with store.catalog.transaction():
        for encoder, target in renumbered:
            ids = [i for i, _ in maps[(encoder, target)]]
            cat.renumber_rows(store.catalog, encoder, target, ids, list(range(len(ids))))
        store.catalog.set_meta(SWAP, aside.name)
    finish_swap(store)
    for encoder, target in renumbered:  # FAISS ids are rows: these indexes are rebuilt
        index_file, sidecar = index_paths(store, encoder, target)
        index_file.unlink(missing_ok=True)
        if sidecar.exists():
            load_index(store, encoder, target)
    rewrite_catalog(store)
    after = sum(len(m) for m in maps.values())
    return {"rows_before": before, "rows_after": after, "renumbered": [f"{e}/{t}" for e, t in renumbered]}


def rewrite_catalog(store: Store) -> None:
    """Swap catalog.duckdb for a fresh copy, so values of deleted rows leave the file (a crash leaves the old one)."""
    fresh = store.catalog.path.with_name("catalog.duckdb.compact")
    fresh.unlink(missing_ok=True)
    with whole_or_absent(fresh, "the compacted catalog.duckdb"):
        cat.copy_database(store.catalog, fresh)
        with open(fresh, "rb") as fh:
            os.fsync(fh.fileno())
    store.catalog.close()
    os.replace(fresh, store.catalog.path)
    store.catalog = cat.Catalog(store.catalog.path)
