"""Opening a store: the folder checks, then the Store, then whatever a crash left half done."""
from __future__ import annotations

from pathlib import Path

from embedstore import config
from embedstore.errors import BadInput, NotFound
from embedstore.store.compact import finish_swap
from embedstore.store.erase import finish_pending
from embedstore.store.store import Store


def open_store(path: str | Path | None = None, create: bool = False, read_only: bool = False,
               write_derived: bool = False) -> Store:
    """Open the store folder at `path` (default $EMBEDSTORE_HOME); `create` makes a new one.

    read_only: share the store with other readers and write nothing; write_derived (with read_only):
    also (re)write indexes, views and calibrations. Here, not in Store, so that compact.py and erase.py,
    which work on a Store, are not imported by it."""
    path = Path(path) if path is not None else config.home()
    if not (path / "catalog.duckdb").exists():
        if not create:
            raise NotFound(f"no store at {path}; create one with `embedstore ingest SOURCE --store {path}`")
        if read_only:
            raise BadInput("cannot create a store read-only")
        path.mkdir(parents=True, exist_ok=True)
    store = Store(path, read_only=read_only, write_derived=write_derived)
    try:  # work a crash interrupted: a compaction's file swap (readers refuse it), an erasure's cleanup (writers)
        finish_swap(store)
        if not read_only:
            finish_pending(store)
    except BaseException:
        store.close()
        raise
    return store
