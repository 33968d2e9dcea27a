"""The store: idempotent appends, id/row agreement, validation, and crash safety under kill -9."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from embedstore.errors import BadInput, Conflict, NotFound
from embedstore.store import normalise, open_store

PROV = {"encoder": "toy", "dim": 8, "weights": "random-init", "weights_sha256": "random-init",
        "preprocessing": {"frames": 4}, "package_version": "test", "modalities": ["video"]}


def vec(seed: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture()
def store(tmp_path):
    st = open_store(tmp_path / "s", create=True)
    yield st
    st.close()


def test_open_missing_store_says_how_to_create(tmp_path):
    with pytest.raises(NotFound, match="embedstore ingest"):
        open_store(tmp_path / "nope")


def test_vectors_are_idempotent_per_id_and_found_by_id(store):
    store.add_videos([{"video_id": f"v{i}", "patient_id": f"p{i // 2}"} for i in range(6)])
    assert store.add_vectors(PROV, ["v0", "v1", "v2"], np.stack([vec(0), vec(1), vec(2)])) == 3
    # v1 again (different numbers) is ignored; v3 is new.
    assert store.add_vectors(PROV, ["v1", "v3"], np.stack([vec(99), vec(3)])) == 1
    got = store.get_vectors("toy", ["v3", "v1", "v0"])
    np.testing.assert_array_equal(got, np.stack([vec(3), vec(1), vec(0)]))
    ids, matrix = store.all_vectors("toy")
    assert ids == ["v0", "v1", "v2", "v3"]
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1, atol=1e-6)
    assert store.info()["counts"]["patients"] == 3


def test_one_read_only_store_serves_many_threads_at_once(store, tmp_path):
    """Threads sharing a Store each get their own catalog results and vectors, as the REST service's
    worker threads do (one DuckDB connection refuses a second thread's call while busy)."""
    ids = [f"v{i}" for i in range(8)]
    store.add_videos([{"video_id": v, "patient_id": f"p{i}"} for i, v in enumerate(ids)])
    store.add_vectors(PROV, ids, np.stack([vec(i) for i in range(8)]))
    store.close()

    def reads(shared, i: int) -> None:
        for _ in range(100):
            assert shared.videos([ids[i]])[0]["patient_id"] == f"p{i}"
            np.testing.assert_array_equal(shared.get_vectors("toy", [ids[i]])[0], vec(i))

    with open_store(tmp_path / "s", read_only=True) as shared, ThreadPoolExecutor(4) as pool:
        list(pool.map(reads, [shared] * 8, range(8)))
        assert shared.catalog.query("SELECT count(*) FROM videos") == [(8,)]  # the opening thread's connection


def test_vectors_are_l2_normalised_and_validated(store):
    raw = np.array([[3.0, 4.0] + [0.0] * 6], dtype=np.float32)
    store.add_vectors(PROV, ["a"], raw)
    np.testing.assert_allclose(store.get_vectors("toy", ["a"])[0][:2], [0.6, 0.8], rtol=1e-6)
    with pytest.raises(BadInput, match="NaN"):
        store.add_vectors(PROV, ["b"], np.full((1, 8), np.nan))
    with pytest.raises(BadInput, match="dimension 5"):
        store.add_vectors(PROV, ["b"], np.ones((1, 5)))
    with pytest.raises(BadInput, match="all zeros"):
        normalise(np.zeros((2, 8)))
    with pytest.raises(BadInput, match="same id twice"):
        store.add_vectors(PROV, ["c", "c"], np.ones((2, 8)))
    assert store.catalog.committed_rows("toy", "videos") == 1


def test_unknown_ids_and_encoders_are_clear_errors(store):
    store.add_vectors(PROV, ["a"], vec(1)[None])
    with pytest.raises(NotFound, match="'zzz'"):
        store.get_vectors("toy", ["a", "zzz"])
    with pytest.raises(NotFound, match="embedstore encode"):
        store.get_vectors("other", ["a"])
    with pytest.raises(Conflict, match="another store"):
        store.add_vectors({**PROV, "weights_sha256": "abc"}, ["b"], vec(2)[None])


def test_run_records_status_and_counts(store):
    with store.run("encode", {"x": 1}) as run:
        run.added = 2
        run.fail("v9", "broken")
    with pytest.raises(RuntimeError):
        with store.run("encode", {}):
            raise RuntimeError("boom")
    rows = store.catalog.query("SELECT status, added, failed FROM runs ORDER BY started_at, run_id")
    assert sorted(rows) == sorted([("done", 2, 1), ("failed", 0, 1)])


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from embedstore.store import open_store
    prov = {"encoder": "toy", "dim": 64, "weights": "random-init", "weights_sha256": "random-init",
            "preprocessing": {}, "package_version": "test", "modalities": ["video"]}
    def vec(i):
        v = np.random.default_rng(i).normal(size=64).astype(np.float32)
        return v / np.linalg.norm(v)
    st = open_store(sys.argv[1], create=True)
    with st.writer(prov) as write:
        for b in range(int(sys.argv[2])):
            ids = [f"v{b * 50 + j:05d}" for j in range(50)]
            write(ids, np.stack([vec(b * 50 + j) for j in range(50)]))
            print(b, flush=True)
""")


def test_kill9_mid_write_keeps_every_committed_batch_and_resumes(tmp_path):
    path = tmp_path / "crash"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(path), "100000"], stdout=subprocess.PIPE, text=True)
    seen = 0
    deadline = time.time() + 60
    while seen < 40 and time.time() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
        if line.strip().isdigit():
            seen = int(line) + 1
    proc.kill()  # SIGKILL, mid-batch or mid-commit
    proc.wait()
    assert seen >= 40, "writer never got going"

    st = open_store(path)
    ids, matrix = st.all_vectors("toy")
    n = len(ids)
    assert n % 50 == 0 and n >= seen * 50, f"{n} rows for {seen} printed batches: a partial or lost batch"
    assert ids == [f"v{i:05d}" for i in range(n)]
    expected = np.stack([np.random.default_rng(i).normal(size=64) for i in range(n)]).astype(np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(matrix, expected, atol=1e-6)
    st.close()

    # Re-running resumes: only the missing batches are added, nothing is duplicated.
    total = n // 50 + 3
    subprocess.run([sys.executable, str(script), str(path), str(total)], check=True, capture_output=True)
    st = open_store(path, read_only=True)
    ids, matrix = st.all_vectors("toy")
    assert ids == [f"v{i:05d}" for i in range(total * 50)]
    assert st.catalog.committed_rows("toy", "videos") == total * 50
    st.check("toy")
    st.close()
