"""Operational failures in one line: a store locked by another command, damaged index files, a full disk,
and a store folder that really is read-only (served by CLI and REST, loaders never write)."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from embedstore.cli import app
from embedstore.index.build import index_paths
from embedstore.service.app import create_app
from embedstore.service.settings import Settings
from embedstore.store import open_store
from tests.servers import serving


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


@pytest.fixture()
def store(served_store, tmp_path) -> Path:
    path = tmp_path / "s"
    shutil.copytree(served_store, path)
    return path


def first_id(path: Path) -> str:
    with open_store(path, read_only=True) as st:
        return sorted(st.catalog.video_ids())[0]


# -- locks ----------------------------------------------------------------------------------------
HOLD = """import sys
sys.argv = ["embedstore", "encode", "--store", sys.argv[1]]
from embedstore.store import open_store
store = open_store(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
store.close()
"""


def test_commands_beside_a_writer_say_which_command_and_pid_hold_the_store(store):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(store)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        for args in (["info"], ["search", "--id", "x"], ["encode", "--random-init"]):
            line = one_error_line(cli(*args, "--store", str(store)))
            assert f"`embedstore encode` (PID {holder.pid}) is writing to store {store}" in line, line
            assert "read-only commands" in line and "share a store with each other" in line
    finally:
        holder.communicate("\n", timeout=30)
    assert not (store / "writer.json").exists()  # the writer's record goes with it
    assert cli("info", "--store", str(store)).exit_code == 0


def test_ingest_beside_serve_names_serve(store, phantom_cohort):
    first_id_unlocked = first_id(store)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "embedstore", "serve", "--store", str(store), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        out = subprocess.run([sys.executable, "-m", "embedstore", "ingest", str(phantom_cohort), "--store", str(store)],
                             capture_output=True, text=True, timeout=120)
        erase = cli("delete", "--store", str(store), "--video", first_id_unlocked)
    finally:
        proc.terminate()
        proc.wait(30)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert f"`embedstore serve` (PID {proc.pid}) has store {store} open" in out.stderr, out.stderr
    assert f"`embedstore serve` (PID {proc.pid})" in one_error_line(erase)  # erasure says the service must stop first


def test_encode_refreshes_the_index_so_readers_need_not(store):
    with open_store(store) as st:  # one video loses its vector, as if it had been ingested after the last encode
        st.catalog.con.execute("DELETE FROM embeddings WHERE item_id = ?", [sorted(st.catalog.video_ids())[-1]])
    out = cli("encode", "--store", str(store), "--encoder", "r3d", "--random-init", "--quiet")
    assert out.exit_code == 0 and "encoded 1 videos" in out.stdout, out.output
    with open_store(store, read_only=True) as st:
        side = json.loads(index_paths(st, "r3d")[1].read_text())
        assert side["fingerprint"] == st.catalog.fingerprint("r3d", "videos") and side["n"] == 9
        assert json.loads((st.indexes_dir / "r3d.same-patient.json").read_text())["fingerprint"] == side["fingerprint"]


# -- damaged index files --------------------------------------------------------------------------
@pytest.mark.parametrize("cut", ["faiss", "json"])
def test_damaged_index_is_one_line_for_readers_503_for_serve_and_rebuilt_by_index(store, cut):
    with open_store(store, read_only=True) as st:
        index_file, sidecar = index_paths(st, "r3d")
    damaged = index_file if cut == "faiss" else sidecar
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])

    line = one_error_line(cli("search", "--store", str(store), "--id", first_id(store)))
    assert "index of r3d" in line and "damaged" in line and f"embedstore index --store {store} --encoder r3d" in line

    with serving(create_app(store, Settings())) as url:
        health = httpx.get(f"{url}/health")
        answer = httpx.post(f"{url}/search", json={"encoder": "r3d", "query": {"video_id": first_id(store)}, "k": 3})
    assert health.status_code == 200
    assert answer.status_code == 409 and "damaged" in answer.json()["error"]["message"], answer.text

    rebuilt = cli("index", "--store", str(store), "--encoder", "r3d", "--quiet")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert cli("search", "--store", str(store), "--id", first_id(store), "-k", "3").exit_code == 0


# -- a full disk ----------------------------------------------------------------------------------
@pytest.fixture()
def tmpfs(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_full_disk_during_index_leaves_the_old_index_and_says_so_in_one_line(store, tmpfs):
    small = tmpfs / "s"
    shutil.copytree(store, small)
    index_file, sidecar = small / "indexes" / "r3d.videos.faiss", small / "indexes" / "r3d.videos.json"
    before = index_file.read_bytes(), sidecar.read_bytes()
    filler = tmpfs / "filler"
    with open(filler, "wb", buffering=0) as fh:  # fill the disk, then give back less than one index file
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    filler.write_bytes(b"\0" * (filler.stat().st_size - 8192))

    line = one_error_line(cli("index", "--store", str(small), "--encoder", "r3d", "--factory", "Flat", "--quiet"))
    assert "no space left on the device while writing the index r3d.videos.faiss" in line
    assert (index_file.read_bytes(), sidecar.read_bytes()) == before
    assert not list((small / "indexes").glob("*.tmp*"))


# -- a read-only store folder ---------------------------------------------------------------------
@pytest.fixture()
def read_only_store(store, tmp_path):
    """A stale store (one vector added after its index and calibration) behind a read-only bind mount."""
    near = first_id(store)
    with open_store(store) as st:
        info = st.encoder_info("r3d")
        prov = {"encoder": "r3d", "dim": info["dim"], "weights": info["weights"], "weights_sha256": info["weights_sha256"],
                "preprocessing": info["preprocessing"], "package_version": info["package_version"]}
        st.add_videos([{"video_id": "late", "patient_id": "late-patient"}])
        vector = st.get_vectors("r3d", [near])[0] + 0.01
        st.add_vectors(prov, ["late"], vector[None])
    (store / "indexes" / "r3d.same-patient.json").unlink(missing_ok=True)
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "--bind", str(store), str(mount)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here (needs root with CAP_SYS_ADMIN)")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], check=True, capture_output=True)
        with pytest.raises(OSError):
            (mount / "probe").write_text("x")
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_read_only_store_is_fully_served_by_cli_and_rest(read_only_store):
    path = read_only_store
    a = first_id(path)
    files = sorted(p.name for p in path.rglob("*"))

    found = cli("search", "--store", str(path), "--id", "late", "-k", "1", "--json")
    assert found.exit_code == 0, found.output
    hit = json.loads(found.stdout)["hits"][0]
    assert hit["id"] == a  # the vector added after the index is searched (exactly), and finds its neighbour
    similar = cli("similar", a, "late", "--store", str(path), "--encoder", "r3d", "--json")
    assert similar.exit_code == 0, similar.output
    assert json.loads(similar.stdout)["cosine"] > 0.95

    with serving(create_app(path, Settings())) as url:
        search = httpx.post(f"{url}/search", json={"encoder": "r3d", "query": {"video_id": "late"}, "k": 1})
        pair = httpx.post(f"{url}/similarity", json={"encoder": "r3d", "a": a, "b": "late"})
    assert search.status_code == 200, search.text
    assert search.json()["results"][0]["id"] == a, search.text
    assert pair.status_code == 200 and pair.json()["cosine"] > 0.95, pair.text
    assert sorted(p.name for p in path.rglob("*")) == files  # nothing written
    assert np.isfinite(pair.json()["cosine"])


def test_full_disk_during_a_vector_batch_leaves_no_half_batch(tmp_path, monkeypatch):
    import duckdb

    from embedstore.errors import DiskFull
    from embedstore.store import catalog

    prov = {"encoder": "toy", "dim": 4, "weights": "random-init", "weights_sha256": "random-init",
            "preprocessing": {}, "package_version": "test"}
    vectors = np.eye(4, dtype=np.float32)
    with open_store(tmp_path / "s", create=True) as st:
        st.add_videos([{"video_id": f"v{i}"} for i in range(4)])
        st.add_vectors(prov, ["v0", "v1"], vectors[:2])

        def full(*args):
            raise duckdb.IOException("IO Error: Could not write file \"catalog.duckdb.wal\": No space left on device")

        monkeypatch.setattr(catalog.Catalog, "add_embeddings", full)
        with pytest.raises(DiskFull, match="no space left on the device while writing toy vectors") as exc:
            st.add_vectors(prov, ["v2", "v3"], vectors[2:])
        assert "\n" not in str(exc.value)
        monkeypatch.undo()
        assert st.all_vectors("toy")[0] == ["v0", "v1"]
        st.add_vectors(prov, ["v2", "v3"], vectors[2:])  # the next batch lands where the lost one began
        ids, got = st.all_vectors("toy")
    assert ids == ["v0", "v1", "v2", "v3"] and np.array_equal(got, vectors)
