"""sha256 of files: the digest that names weights, stored videos and released files.

Streamed in 1 MiB blocks. The last HASHES_CACHED digests are kept by (path, size, mtime), so the weights
hashed for each provenance record, or a query video hashed again, cost nothing the second time, while
an ingest of a million videos keeps no more than that.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

HASHES_CACHED = 1024
BLOCK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return _digest(str(resolved), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=HASHES_CACHED)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()
