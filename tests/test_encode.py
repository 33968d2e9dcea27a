"""`embedstore encode`: resumable after kill -9, bad videos reported, runs recorded."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from embedstore.encode import encode_store
from embedstore.encoders import get_encoder
from embedstore.store import open_store
from embedstore.video.read import read_video


def committed_h5_rows(path) -> int:
    try:
        with h5py.File(path / "vectors.h5", "r", libver="latest", swmr=True) as fh:
            return fh["r3d/videos"].shape[0] if "r3d/videos" in fh else 0
    except (OSError, KeyError):
        return 0


def test_encode_killed_half_way_resumes_to_exactly_one_vector_per_video(ingested_store, tmp_path):
    store = tmp_path / "s"
    shutil.copytree(ingested_store, store)
    cmd = [sys.executable, "-m", "embedstore", "encode", "--store", str(store), "--encoder", "r3d",
           "--random-init", "--batch-size", "2", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while committed_h5_rows(store) < 16 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open_store(store, read_only=True) as st:
        done_first = st.catalog.committed_rows("r3d", "videos")
    # HDF5 rows are appended before their catalog commit: the catalog may lag the file by the batch in flight.
    assert 16 - 2 <= done_first < 60, f"kill landed at {done_first} of 60 vectors; expected mid-run"

    second = subprocess.run(cmd, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert f"encoded {60 - done_first} videos" in second.stdout and f"{done_first} already done" in second.stdout
    with open_store(store, read_only=True) as st:
        ids, vectors = st.all_vectors("r3d")
        runs = st.catalog.query("SELECT status, added FROM runs WHERE command = 'encode' ORDER BY started_at")
        all_ids = sorted(st.catalog.video_ids())
    assert sorted(ids) == all_ids and len(ids) == 60 == len(set(ids))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    # The killed run never finished: the second run's writable open marked it interrupted; the second added the rest.
    assert [r[0] for r in runs] == ["interrupted", "done"] and runs[1][1] == 60 - done_first

    # Vectors from before and after the kill come from the same (seeded) random model.
    enc = get_encoder("r3d", random_init=True)
    with open_store(store, read_only=True) as st:
        first_id, path = st.catalog.query("SELECT video_id, source_path FROM videos ORDER BY video_id LIMIT 1")[0]
        again = enc.embed_videos([read_video(path, mask="on")])[0]  # the store default: masked
        np.testing.assert_allclose(st.get_vectors("r3d", [first_id])[0], again, atol=1e-4)


def test_bad_videos_are_reported_and_do_not_stop_the_run(ingested_store, tmp_path):
    store = tmp_path / "s"
    shutil.copytree(ingested_store, store)
    with open_store(store) as st:
        victims = st.catalog.query("SELECT video_id, source_path FROM videos ORDER BY video_id LIMIT 2")
        # Point two rows at broken copies (a zero-byte file and a text file).
        for (video_id, _), content in zip(victims, [b"", b"not a video"]):
            bad = tmp_path / f"{video_id}.avi"
            bad.write_bytes(content)
            st.catalog.con.execute("UPDATE videos SET source_path = ? WHERE video_id = ?", [str(bad), video_id])
        summary = encode_store(st, get_encoder("r3d", random_init=True), batch_size=4, progress=False)
        assert summary.added == 58
        assert sorted(f["item"] for f in summary.failed) == sorted(v for v, _ in victims)
        assert all("\n" not in f["error"] and ".avi" in f["error"] for f in summary.failed)
        run = st.catalog.query("SELECT status, added, failed FROM runs WHERE command = 'encode'")
        assert run == [("done", 58, 2)]
        # Running again adds nothing new and still reports the two bad files.
        again = encode_store(st, get_encoder("r3d", random_init=True), batch_size=4, progress=False)
        assert again.added == 0 and len(again.failed) == 2 and again.already == 58


def test_reports_need_a_text_encoder(ingested_store, tmp_path):
    store = tmp_path / "s"
    shutil.copytree(ingested_store, store)
    from embedstore.errors import BadInput

    with open_store(store) as st, pytest.raises(BadInput, match="no text tower"):
        encode_store(st, get_encoder("r3d", random_init=True), target="reports", progress=False)


def test_a_blank_video_fails_alone_and_the_batch_is_written(phantom_cohort, tmp_path):
    """Random-init r3d on raw 0-255 input has no biases: an all-black clip gives an all-zero vector,
    which has no direction. That video fails, named; its batch-mates are stored."""
    import shutil

    import numpy as np

    from embedstore.datasets.ingest import ingest
    from embedstore.encode import encode_store
    from embedstore.encoders import get_encoder
    from embedstore.store import open_store
    from embedstore.video.write import write_video

    folder = tmp_path / "videos"
    folder.mkdir()
    for path in sorted((phantom_cohort / "Videos").glob("*.avi"))[:3]:
        shutil.copy(path, folder / path.name)
    write_video(folder / "blank.avi", np.zeros((16, 112, 112, 3), np.uint8), fps=50)
    with open_store(tmp_path / "s", create=True) as store:
        store.set_mask("off")
        ingest(folder, store, progress=False)
        summary = encode_store(store, get_encoder("r3d", random_init=True, device="cpu"), batch_size=4, progress=False)
        assert summary.added == 3 and [f["item"] for f in summary.failed] == ["blank"]
        assert "all-zero" in summary.failed[0]["error"]
        assert len(store.all_vectors("r3d")[0]) == 3


def test_unknown_engine_is_one_line_and_writes_nothing(tmp_path):
    from typer.testing import CliRunner

    from embedstore.cli import app

    with open_store(tmp_path / "s", create=True) as st:
        st.add_videos([{"video_id": "v0"}])
    before = sorted((p.name, p.stat().st_size) for p in (tmp_path / "s").rglob("*") if p.name != "catalog.duckdb.wal")
    out = CliRunner().invoke(app, ["encode", "--store", str(tmp_path / "s"), "--encoder", "pixels", "--engine", "spark"])
    assert out.exit_code == 2 and out.stderr == "error: unknown engine 'spark'; choose one of local, ray\n", out.output
    with open_store(tmp_path / "s", read_only=True) as st:
        assert st.catalog.query("SELECT count(*) FROM runs")[0][0] == 0 and not st.catalog.encoder("pixels")
    assert sorted((p.name, p.stat().st_size) for p in (tmp_path / "s").rglob("*") if p.name != "catalog.duckdb.wal") == before
