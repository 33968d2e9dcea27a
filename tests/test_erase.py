"""`embedstore delete`: a patient's items leave the catalog, vectors, indexes and views; logged without
PHI; a kill -9 at any moment leaves the store consistent and the next run finishes the job."""
from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time

import faiss
import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from embedstore.cli import app
from embedstore.datasets.export import export
from embedstore.index import Searcher
from embedstore.index.build import build_index, index_paths
from embedstore.store import open_store


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture()
def store(served_store, tmp_path):
    path = tmp_path / "s"
    shutil.copytree(served_store, path)
    return path


def patients(path) -> list[str]:
    with open_store(path, read_only=True) as st:
        return [r[0] for r in st.catalog.query("SELECT DISTINCT patient_id FROM videos ORDER BY 1")]


def snapshot(path) -> dict:
    """Each video's vector, by id, and the catalog rows of each patient."""
    with open_store(path, read_only=True) as st:
        ids, vectors = st.all_vectors("r3d")
        owner = dict(st.catalog.query("SELECT video_id, patient_id FROM videos"))
        reports = dict(st.catalog.query("SELECT report_id, patient_id FROM reports"))
    return {"vectors": dict(zip(ids, vectors)), "owner": owner, "reports": reports}


def test_delete_patient_leaves_no_trace_in_search_export_views_or_index(store, tmp_path):
    before = snapshot(store)
    victim = patients(store)[0]
    gone = sorted(v for v, p in before["owner"].items() if p == victim)
    gone_reports = sorted(r for r, p in before["reports"].items() if p == victim)
    assert len(gone) == 3 and gone_reports
    rows = {}
    with open_store(store, read_only=True) as st:
        rows = st.catalog.rows_for("r3d", "videos", gone)
    assert list((store / "views").glob("r3d.*"))

    dry = cli("delete", "--store", str(store), "--patient", victim, "--dry-run")
    assert dry.exit_code == 0 and "would erase 3 videos" in dry.output
    assert snapshot(store)["owner"] == before["owner"]

    out = cli("delete", "--store", str(store), "--patient", victim, "--json")
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    assert summary["counts"] == {"videos": 3, "reports": len(gone_reports), "vectors": 3}

    after = snapshot(store)
    assert set(after["owner"]) == set(before["owner"]) - set(gone)
    assert victim not in after["reports"].values()
    for item, vector in after["vectors"].items():  # nobody else lost or changed a vector
        np.testing.assert_array_equal(vector, before["vectors"][item])
    with h5py.File(store / "vectors.h5", "r") as fh:  # the erased numbers are gone from the file
        assert not np.any(fh["r3d/videos"][sorted(rows.values())])
    files = b"".join(p.read_bytes() for p in store.rglob("*") if p.is_file())
    for item in gone:  # not a byte of them left anywhere in the store (vectors.h5, the index, views)
        assert before["vectors"][item].tobytes()[:64] not in files
    with open_store(store, read_only=True) as st:
        assert st.catalog.query("SELECT count(*) FROM patients WHERE patient_id = ?", [victim])[0][0] == 0
        log = st.catalog.query_dicts("SELECT * FROM erasures")
        searcher = Searcher(st, "r3d")
        assert searcher.size == 6 and searcher.sidecar["n"] == 6 and "stale_index" not in searcher.sidecar
        found = {h.id for item in after["owner"] for h in searcher.search_id(item, k=5).hits}
        manifest = export(st, "r3d", tmp_path / "bundle", progress=False)
    assert not found & set(gone) and manifest["count"] == 6
    assert faiss.read_index(str(index_paths_of(store)[0])).ntotal == 6
    assert not list((store / "views").glob("r3d.*"))
    assert len(log) == 1 and log[0]["status"] == "done" and json.loads(log[0]["counts"])["videos"] == 3
    text = json.dumps(log, default=str)
    assert victim not in text and not any(v in text for v in gone + gone_reports)
    bundle = b"".join(p.read_bytes() for p in (tmp_path / "bundle").rglob("*") if p.is_file())
    assert not any(v.encode() in bundle for v in gone)

    again = cli("delete", "--store", str(store), "--patient", victim)
    assert again.exit_code == 2 and again.output.count("\n") == 1 and "nothing to erase" in again.output


def index_paths_of(path):
    with open_store(path, read_only=True) as st:
        return index_paths(st, "r3d")


def test_delete_from_hnsw_drops_the_file_readers_search_exactly_and_index_rebuilds(store):
    with open_store(store, read_only=True, write_derived=True) as st:
        build_index(st, "r3d", factory="HNSW32", progress=False)
    victim_video = sorted(snapshot(store)["owner"])[4]
    assert cli("delete", "--store", str(store), "--video", victim_video).exit_code == 0
    index_file, sidecar = index_paths_of(store)
    assert not index_file.exists() and sidecar.exists()
    with open_store(store, read_only=True) as st:
        searcher = Searcher(st, "r3d")
        hits = searcher.search_id(sorted(snapshot(store)["owner"])[0], k=8).hits
    assert searcher.sidecar["stale_index"] and len(hits) == 7 and victim_video not in {h.id for h in hits}
    rebuilt = cli("index", "--store", str(store), "--encoder", "r3d", "--factory", "HNSW32", "--quiet")
    assert rebuilt.exit_code == 0 and faiss.read_index(str(index_file)).ntotal == 8


def test_delete_drops_earlier_run_failures_that_name_the_items(store):
    victim = sorted(snapshot(store)["owner"])[2]
    with open_store(store) as st:
        with st.run("encode", {}) as run:
            run.fail(victim, f"{victim}.avi: cannot decode frame 3")
            run.fail("other", "other.avi: cannot decode frame 3")
    assert cli("delete", "--store", str(store), "--video", victim).exit_code == 0
    with open_store(store, read_only=True) as st:
        failures = st.catalog.query("SELECT failed, failures FROM runs WHERE failed > 0")
    assert [(n, [f["item"] for f in json.loads(text)]) for n, text in failures] == [(1, ["other"])]


def test_delete_where_and_one_selector_only(store):
    out = cli("delete", "--store", str(store), "--where", "ef < 0 OR ef > 1000")
    assert out.exit_code == 2 and "nothing to erase" in out.output
    both = cli("delete", "--store", str(store), "--video", "x", "--patient", "y")
    assert both.exit_code == 2 and "exactly one" in both.output
    with open_store(store, read_only=True) as st:
        low = st.catalog.query("SELECT count(*) FROM videos WHERE ef < 50")[0][0]
    split = cli("delete", "--store", str(store), "--where", "ef < 50", "--json")
    assert split.exit_code == 0 and json.loads(split.output)["counts"]["videos"] == low > 0, split.output
    with open_store(store, read_only=True) as st:
        assert st.catalog.query("SELECT count(*) FROM videos WHERE ef < 50")[0][0] == 0


def test_kill_9_during_delete_loses_nothing_else(store):
    """Kill `delete` at random moments, patient after patient; every re-run completes and only the
    named patient's items ever go."""
    before = snapshot(store)
    cmd = [sys.executable, "-m", "embedstore", "delete", "--store", str(store), "--patient"]
    start = time.perf_counter()
    timing = subprocess.run(cmd + ["nobody"], capture_output=True, text=True)
    assert timing.returncode == 2 and timing.stderr.count("\n") == 1
    runtime = time.perf_counter() - start
    rng = random.Random(0)
    erased: set[str] = set()
    kills = 0
    for victim in patients(store)[:2]:
        for attempt in range(4):
            proc = subprocess.Popen(cmd + [victim], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                proc.wait(timeout=rng.uniform(0.3, 1.6) * runtime)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
            check_consistent(store, before, erased)
        final = subprocess.run(cmd + [victim], capture_output=True, text=True)
        assert final.returncode in (0, 2), final.stderr
        assert final.returncode == 0 or "nothing to erase" in final.stderr
        erased |= {v for v, p in before["owner"].items() if p == victim}
        check_consistent(store, before, erased, finished=True)
    assert kills >= 2, f"only {kills} kills landed; the loop did not test a crash"


def check_consistent(path, before: dict, erased: set[str], finished: bool = False) -> None:
    """Videos are either fully present (row, vector unchanged) or fully gone; only known victims go."""
    with open_store(path) as st:  # a writer: finishes an interrupted erasure, as the next command would
        ids, vectors = st.all_vectors("r3d")
        present = set(st.catalog.video_ids())
        pending = st.catalog.query("SELECT count(*) FROM erasures WHERE status = 'pending'")[0][0]
    assert pending == 0
    assert set(ids) == present and erased.isdisjoint(present) if finished else set(ids) == present
    lost = set(before["owner"]) - present
    assert len({before["owner"][v] for v in lost}) <= (len({before["owner"][v] for v in erased}) + 1)
    for item, vector in zip(ids, vectors):
        np.testing.assert_array_equal(vector, before["vectors"][item])
    with open_store(path, read_only=True) as st:
        searcher = Searcher(st, "r3d")
        assert searcher.size == len(present)
        hits = {h.id for h in searcher.search_id(sorted(present)[0], k=len(present) - 1).hits}
    assert hits == present - {sorted(present)[0]}


def test_compact_gives_back_erased_rows_and_keeps_every_vector(store):
    before = snapshot(store)
    victim = patients(store)[1]
    assert cli("delete", "--store", str(store), "--patient", victim).exit_code == 0
    kept = snapshot(store)["vectors"]
    assert victim.encode() in (store / "catalog.duckdb").read_bytes()  # DuckDB keeps deleted values in its pages
    out = cli("compact", "--store", str(store), "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) == {"rows_before": 9, "rows_after": 6, "renumbered": ["r3d/videos"]}
    with h5py.File(store / "vectors.h5", "r") as fh:
        assert fh["r3d/videos"].shape[0] == 6 and np.all(np.abs(fh["r3d/videos"][:]).sum(axis=1) > 0)
    after = snapshot(store)
    assert after["vectors"].keys() == kept.keys() and len(kept) == 6
    catalog = (store / "catalog.duckdb").read_bytes()  # the pseudonym is gone from the DuckDB pages too
    assert victim.encode() not in catalog and not list(store.glob("*.compact"))
    for item, vector in after["vectors"].items():
        np.testing.assert_array_equal(vector, before["vectors"][item])
    with open_store(store, read_only=True) as st:
        searcher = Searcher(st, "r3d")
        item = sorted(kept)[0]
        assert "stale_index" not in searcher.sidecar and searcher.search_id(item, k=1, exclude_self=False).hits[0].id == item


def test_compact_killed_after_its_catalog_commit_is_finished_by_the_next_writer(store, monkeypatch):
    from embedstore.errors import Conflict
    from embedstore.store import compact as compact_module

    assert cli("delete", "--store", str(store), "--patient", patients(store)[0]).exit_code == 0
    kept = snapshot(store)["vectors"]

    class Killed(BaseException):
        """As if killed between the catalog commit and the file move."""

    def crash(*args):
        raise Killed

    st = open_store(store)
    monkeypatch.setattr(compact_module.os, "replace", crash)
    with pytest.raises(Killed):
        compact_module.compact(st)
    monkeypatch.undo()
    st.close()
    with pytest.raises(Conflict, match="interrupted compaction"):
        open_store(store, read_only=True)
    open_store(store).close()  # a writer finishes the move
    after = snapshot(store)["vectors"]
    assert after.keys() == kept.keys()
    for item, vector in after.items():
        np.testing.assert_array_equal(vector, kept[item])
