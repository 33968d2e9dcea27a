"""Writes that are whole or absent, and a full disk said in one line.

Files beside the catalog (indexes, sidecars, views) are written to a temporary name and moved into
place; when the write fails the temporary file is removed, so the previous file stays as it was.
A full disk (ENOSPC, a quota, FAISS's and DuckDB's wrapped messages) becomes DiskFull.
"""
from __future__ import annotations

import errno
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from embedstore.errors import DiskFull

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def no_space(exc: BaseException) -> bool:
    return getattr(exc, "errno", None) in NO_SPACE or "No space left on device" in str(exc) or "Disk quota" in str(exc)


def disk_full(what: str) -> DiskFull:
    return DiskFull(f"no space left on the device while writing {what}; nothing was half-written "
                    f"(what was there before is unchanged): free space and run the command again")


@contextmanager
def whole_or_absent(tmp: Path, what: str) -> Iterator[None]:
    """Around writing `tmp` (later moved into place): on failure remove it; a full disk raises DiskFull."""
    try:
        yield
    except Exception as exc:
        Path(tmp).unlink(missing_ok=True)
        if no_space(exc):
            raise disk_full(what) from None
        raise
