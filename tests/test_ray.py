"""`embedstore encode --engine ray`: same vectors as the local engine, worker failures retried, resumable.

One local Ray instance for the module (2 CPUs, no dashboard, no network). The store is the phantom
cohort cut to SUBSET videos so the module stays well under two minutes on two cores.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

ray = pytest.importorskip("ray")

from embedstore.cli import app  # noqa: E402
from embedstore.encode import encode_store, pending_videos, store_encoding  # noqa: E402
from embedstore.encoders import get_encoder  # noqa: E402
from embedstore.encoders.r3d import R3D  # noqa: E402
from embedstore.encode.ray import EncoderRecipe, encode_store_ray, shard_stream, staging_dir  # noqa: E402
from embedstore.store import open_store  # noqa: E402

SUBSET = 12
SHARD = 4  # 3 blocks


class FlakyR3D(R3D):
    """Test-only r3d whose first model call, over all actors, fails: raises, or kills its worker process."""

    defaults = {**R3D.defaults, "fail_marker": "", "fail_how": "raise"}

    def embed_prepared(self, inputs: list[np.ndarray]) -> np.ndarray:
        marker = Path(self.options["fail_marker"])
        if not marker.exists():
            marker.touch()
            if self.options["fail_how"] == "exit":
                os._exit(1)  # the actor's process dies, as on a lost node
            raise RuntimeError("simulated actor failure")
        return super().embed_prepared(inputs)


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def small_store(ingested_store, tmp_path_factory) -> Path:
    """The ingested phantom cohort cut to its first SUBSET videos (read-only: copy before writing)."""
    path = tmp_path_factory.mktemp("ray") / "store"
    shutil.copytree(ingested_store, path)
    with open_store(path) as st:
        st.catalog.con.execute(f"DELETE FROM videos WHERE video_id NOT IN "
                               f"(SELECT video_id FROM videos ORDER BY video_id LIMIT {SUBSET})")
    return path


@pytest.fixture(scope="module")
def local_vectors(small_store, tmp_path_factory) -> tuple[list[str], np.ndarray]:
    """What the local engine stores for the small store: ids in row order and their vectors."""
    path = tmp_path_factory.mktemp("local") / "store"
    shutil.copytree(small_store, path)
    with open_store(path) as st:
        encode_store(st, get_encoder("r3d", random_init=True), batch_size=4, progress=False)
        return st.all_vectors("r3d")


def copy_store(small_store: Path, tmp_path: Path) -> Path:
    shutil.copytree(small_store, tmp_path / "s")
    return tmp_path / "s"


def assert_same_as_local(path: Path, local_vectors) -> None:
    """Every video once, in id order, with the local engine's vector; no shard left in staging."""
    ids, vectors = local_vectors
    with open_store(path, read_only=True) as st:
        got_ids, got = st.all_vectors("r3d")
        staging = staging_dir(st, "r3d")
    assert got_ids == list(ids) and len(set(got_ids)) == len(ids)
    np.testing.assert_allclose(got, vectors, atol=1e-4)
    assert not list(staging.glob("*")), sorted(staging.glob("*"))


def test_cli_ray_engine_gives_the_local_engine_vectors(local_ray, small_store, local_vectors, tmp_path):
    path = copy_store(small_store, tmp_path)
    result = CliRunner().invoke(app, ["encode", "--store", str(path), "--encoder", "r3d", "--random-init",
                                      "--engine", "ray", "--gpus-per-worker", "1", "--cpus-per-decode", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"encoded {SUBSET} videos" in result.output and "0 failed" in result.output
    assert_same_as_local(path, local_vectors)
    assert ray.is_initialized()  # a Ray the caller started is left running
    with open_store(path, read_only=True) as st:
        (status, added, args), = st.catalog.query("SELECT status, added, args FROM runs WHERE command = 'encode'")
    assert status == "done" and added == SUBSET and '"engine": "ray"' in args


def test_an_actor_call_that_raises_is_retried_and_a_bad_video_is_reported(local_ray, small_store, local_vectors, tmp_path):
    path = copy_store(small_store, tmp_path)
    marker = tmp_path / "failed-once"
    bad = tmp_path / "broken.avi"
    bad.write_bytes(b"not a video")
    with open_store(path) as st:
        victim = local_vectors[0][-1]
        st.catalog.con.execute("UPDATE videos SET source_path = ? WHERE video_id = ?", [str(bad), victim])
        flaky = FlakyR3D(random_init=True, fail_marker=str(marker))
        summary = encode_store_ray(st, flaky, batch_size=4, shard_size=SHARD, progress=False)
        run = st.catalog.query("SELECT status, added, failed FROM runs WHERE command = 'encode'")
    assert marker.exists(), "the simulated failure never happened"
    assert [f["item"] for f in summary.failed] == [victim] and "broken.avi" in summary.failed[0]["error"]
    assert summary.added == SUBSET - 1 and run == [("done", SUBSET - 1, 1)]
    ids, vectors = local_vectors
    assert_same_as_local(path, (ids[:-1], vectors[:-1]))


@pytest.mark.slow
def test_a_lost_worker_is_replaced_and_its_block_retried(local_ray, small_store, local_vectors, tmp_path):
    path = copy_store(small_store, tmp_path)
    marker = tmp_path / "died-once"
    with open_store(path) as st:
        summary = encode_store_ray(st, FlakyR3D(random_init=True, fail_marker=str(marker), fail_how="exit"),
                                   batch_size=4, shard_size=SHARD, progress=False)
    assert marker.exists() and summary.added == SUBSET and summary.failed == []
    assert_same_as_local(path, local_vectors)


def test_rerun_merges_a_dead_runs_shards_and_encodes_only_what_is_missing(local_ray, small_store, local_vectors, tmp_path):
    path = copy_store(small_store, tmp_path)
    ids, vectors = local_vectors
    encoder = get_encoder("r3d", random_init=True)
    with open_store(path) as st:
        provenance, preparer = store_encoding(st, encoder)  # what the engines record and read through (the mask)
        st.add_vectors(provenance, ids[:4], vectors[:4])  # committed by an earlier run
        items, _ = pending_videos(st, "r3d")
        # a run whose workers finished 4 videos but whose driver died before merging them
        shards = list(shard_stream(items[:4], EncoderRecipe.of(encoder), preparer, staging_dir(st, "r3d"),
                                   "dead-run", 4, 2, 0, 1))
        # their files are gone now: re-encoding them instead of merging would fail
        for video_id, _ in items[:4]:
            st.catalog.con.execute("UPDATE videos SET source_path = '/nonexistent.avi' WHERE video_id = ?", [video_id])
        summary = encode_store_ray(st, encoder, batch_size=4, shard_size=SHARD, progress=False)
    assert len(shards) == 2
    assert summary.failed == [] and summary.already == 4 and summary.added == SUBSET - 4
    assert_same_as_local(path, local_vectors)



@pytest.mark.slow
def test_a_ray_started_by_embedstore_is_local_and_shut_down_after():
    code = ("import os, ray\n"
            "from embedstore.encode.ray import ray_session\n"
            "with ray_session(None):\n"
            "    assert ray.is_initialized() and os.environ['RAY_USAGE_STATS_ENABLED'] == '0'\n"
            "assert not ray.is_initialized()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_USAGE_STATS_ENABLED")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
