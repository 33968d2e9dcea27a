"""vectors.h5: one float32 [N, D] dataset per (encoder, target), appended in SWMR mode.

Why SWMR: HDF5 written the ordinary way can be left unreadable by a kill -9 in the middle of a
write. In single-writer/multiple-reader mode the library orders its metadata flushes so the file
stays readable at every instant; after a crash only the "open for write" flag remains, and
`recover` copies the committed rows into a fresh file and swaps it in atomically. Which rows are
committed is decided by the catalog, never by the dataset's length.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

CHUNK_ROWS = 256


def key(encoder: str, target: str) -> str:
    return f"{encoder}/{target}"


def _is_unclosed(exc: OSError) -> bool:
    return "consistency flags" in str(exc) or "already open for write" in str(exc)


class VectorFile:
    """The store's HDF5 file. Readers open it briefly; one writer appends at a time."""

    def __init__(self, path: Path):
        self.path = Path(path)

    # -- reading -------------------------------------------------------------------------------
    @contextmanager
    def reader(self) -> Iterator[h5py.File]:
        """Open read-only; SWMR read also works on a file a crashed writer left flagged."""
        with h5py.File(self.path, "r", libver="latest", swmr=True) as fh:
            yield fh

    def read_rows(self, encoder: str, target: str, rows: np.ndarray) -> np.ndarray:
        """Rows in the order asked (h5py wants increasing indices, so sort, read, unsort)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.zeros((0, self.dim(encoder, target)), dtype=np.float32)
        order = np.argsort(rows, kind="stable")
        uniq, inverse = np.unique(rows[order], return_inverse=True)
        with self.reader() as fh:
            dset = fh[key(encoder, target)]
            if len(uniq) > 64 and uniq[-1] - uniq[0] < 4 * len(uniq):
                block = dset[int(uniq[0]) : int(uniq[-1]) + 1]
                data = block[uniq - uniq[0]]
            else:
                data = dset[uniq]
        out = np.empty((len(rows), data.shape[1]), dtype=np.float32)
        out[order] = data[inverse]
        return out

    def read_range(self, encoder: str, target: str, start: int, stop: int) -> np.ndarray:
        with self.reader() as fh:
            return fh[key(encoder, target)][start:stop]

    def dim(self, encoder: str, target: str) -> int:
        with self.reader() as fh:
            return int(fh[key(encoder, target)].shape[1])

    def attrs(self, encoder: str, target: str) -> dict:
        if not self.path.exists():
            return {}
        with self.reader() as fh:
            k = key(encoder, target)
            return dict(fh[k].attrs) if k in fh else {}

    # -- writing -------------------------------------------------------------------------------
    def _open_write(self) -> h5py.File:
        if not self.path.exists():
            h5py.File(self.path, "w", libver="latest").close()
        try:
            return h5py.File(self.path, "a", libver="latest")
        except OSError as exc:
            if not _is_unclosed(exc):
                raise
            self.recover()
            return h5py.File(self.path, "a", libver="latest")

    @contextmanager
    def appender(self, encoder: str, target: str, dim: int, committed: int, attrs: dict):
        """Yield `append(array) -> first_row`; rows past `committed` (a crashed batch) are dropped first."""
        fh = self._open_write()
        try:
            k = key(encoder, target)
            if k not in fh:
                fh.create_dataset(
                    k, shape=(0, dim), maxshape=(None, dim), dtype="f4", chunks=(CHUNK_ROWS, dim)
                )
            dset = fh[k]
            for name, value in attrs.items():
                dset.attrs[name] = value
            if dset.shape[0] != committed:
                dset.resize((committed, dim))
            fh.swmr_mode = True

            def append(values: np.ndarray) -> int:
                start = dset.shape[0]
                dset.resize((start + len(values), dim))
                dset[start:] = values
                dset.flush()
                fh.flush()
                return start

            yield append
        finally:
            fh.close()

    def scrub(self, encoder: str, target: str, rows: list[int]) -> int:
        """Overwrite rows with zeros in place (an erased item's numbers leave the file); returns how many."""
        if not rows or not self.path.exists():
            return 0
        fh = self._open_write()
        try:
            k = key(encoder, target)
            if k not in fh:
                return 0
            dset = fh[k]
            rows = sorted(r for r in set(rows) if r < dset.shape[0])
            for row in rows:  # one at a time: erasures are small, and h5py wants increasing indices anyway
                dset[row] = 0
            fh.flush()
            return len(rows)
        finally:
            fh.close()

    def recover(self) -> None:
        """Copy a crash-flagged file into a clean one and swap it in atomically."""
        tmp = self.path.with_suffix(".h5.recover")
        with h5py.File(self.path, "r", libver="latest", swmr=True) as src, h5py.File(tmp, "w", libver="latest") as dst:
            src.visititems(lambda name, obj: _copy(name, obj, dst))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


def _copy(name: str, obj, dst: h5py.File) -> None:
    if isinstance(obj, h5py.Dataset):
        out = dst.create_dataset(
            name, data=obj[()], maxshape=(None, obj.shape[1]), chunks=(CHUNK_ROWS, obj.shape[1])
        )
        for attr, value in obj.attrs.items():
            out.attrs[attr] = value
