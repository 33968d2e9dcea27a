"""File digests: right bytes, streamed past one block, reused only while the file is unchanged."""
from __future__ import annotations

import hashlib
import os

from embedstore import hashing


def test_digest_is_the_files_sha256_and_follows_a_rewrite(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"abc")
    # FIPS 180-2's example: sha256("abc")
    assert hashing.sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    hits = hashing._digest.cache_info().hits
    assert hashing.sha256_file(str(path)) == hashing.sha256_file(path)  # path as str or Path: one entry, reused
    assert hashing._digest.cache_info().hits == hits + 2
    path.write_bytes(b"abd")  # same size: the new mtime makes it a new entry
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert hashing.sha256_file(path) == hashlib.sha256(b"abd").hexdigest()


def test_digest_streams_files_longer_than_a_block(tmp_path):
    data = bytes(range(256)) * (3 * hashing.BLOCK // 256 + 7)  # three blocks and a partial one
    path = tmp_path / "video.avi"
    path.write_bytes(data)
    assert hashing.sha256_file(path) == hashlib.sha256(data).hexdigest()
