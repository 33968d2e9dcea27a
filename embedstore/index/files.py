"""Index files: where they live, how they are written (whole or not at all) and read (memory-mapped for
the large kind).

Below both index/build.py and index/large.py. Files are written to a temporary name, flushed to disk and
moved into place, so a reader never sees half an index or sidecar.
"""
from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

import faiss

from embedstore.index.factory import is_large
from embedstore.store import Store
from embedstore.store.atomic import whole_or_absent

# The large kind's IVF lists and exact vectors stay in the file, paged in as queries touch them.
# (IO_FLAG_MMAP maps only the IVF lists; faiss 1.15 refuses both flags together.) A mapped index is read-only.
IO_FLAGS = faiss.IO_FLAG_MMAP_IFC


def index_paths(store: Store, encoder: str, target: str = "videos") -> tuple[Path, Path]:
    """(index file, sidecar file) of one vector set."""
    stem = f"{encoder}.{target}"
    return store.indexes_dir / f"{stem}.faiss", store.indexes_dir / f"{stem}.json"


def build_command(store: Store, encoder: str, target: str = "videos") -> str:
    """The command line that builds this index (quoted in errors)."""
    extra = f" --target {target}" if target != "videos" else ""
    return f"embedstore index --store {store.path} --encoder {encoder}{extra}"


def read_mapped(path: Path) -> faiss.Index:
    """The index memory-mapped: only what a query touches is paged in."""
    return faiss.read_index(str(path), IO_FLAGS)


def read_index(path: Path, sidecar: dict) -> faiss.Index:
    """Any built index: memory-mapped when it is the kind built here, else read into RAM."""
    return read_mapped(path) if is_large(sidecar["factory"]) else faiss.read_index(str(path))


def save_index(store: Store, index: faiss.Index, sidecar: dict) -> dict:
    """Write index then sidecar, each atomically (a crash in between leaves a mismatch that load rebuilds); returns the sidecar."""
    index_path, sidecar_path = index_paths(store, sidecar["encoder"], sidecar["target"])
    index_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = index_path.with_name(f"{index_path.name}.tmp{os.getpid()}")
    with whole_or_absent(tmp, f"the index {index_path.name}"):
        faiss.write_index(index, str(tmp))
        fsync(tmp)
    os.replace(tmp, index_path)
    sidecar = {**sidecar, "index_bytes": index_path.stat().st_size}
    write_json_atomic(sidecar_path, sidecar)
    return sidecar


def write_json_atomic(path: Path, data: dict) -> None:
    """Replace `path` with `data` as JSON in one step (temporary file + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{threading.get_ident()}")  # a name per writer: threads may race
    with whole_or_absent(tmp, path.name):
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        fsync(tmp)
    os.replace(tmp, path)


def fsync(path: Path) -> None:
    """Flush a file to disk before it replaces another, so a power cut cannot leave an empty file."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
