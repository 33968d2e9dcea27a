"""GPUs: install choices, what `info` reports, exact search on arrays, batches of equal shapes, out of
memory as a clear error, Ray actor planning; and the @pytest.mark.gpu tests that only a CUDA machine runs
(bench/gpu_smoke.py runs them with the GPU benchmarks)."""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from embedstore.cli import app
from embedstore.datasets.ingest import ingest
from embedstore.datasets.phantom import make_phantom
from embedstore.encode import ShapeBuckets, encode_store
from embedstore.encoders import get_encoder
from embedstore.encode.ray import plan_actors
from embedstore.errors import BadInput, OutOfMemory
from embedstore.index.exact import knn
from embedstore.store import open_store

ROOT = Path(__file__).resolve().parents[1]
FAISS = re.compile(r"^(faiss-[a-z0-9-]+)==(.+)$")


def test_every_install_holds_one_faiss_build_of_one_version():
    """faiss-cpu and faiss-gpu both install the `faiss` module: no install set may name both."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("faiss")]
    extras = project["optional-dependencies"]
    builds = {name: [FAISS.match(d).groups() for d in deps if d.startswith("faiss")] for name, deps in extras.items()}
    assert builds["cpu"] == [("faiss-cpu", builds["gpu"][0][1])] and builds["gpu"][0][0] == "faiss-gpu"
    assert all(not found for name, found in builds.items() if name not in ("cpu", "gpu"))
    makefile = (ROOT / "Makefile").read_text()
    assert "pip uninstall -q -y faiss-cpu" in makefile.split("install-gpu:")[1].split("\n\n")[0]


def test_info_says_which_faiss_build_and_gpus(ingested_store):
    result = CliRunner().invoke(app, ["info", "--store", str(ingested_store), "--json"])
    assert result.exit_code == 0, result.output
    runtime = json.loads(result.output)["runtime"]
    import faiss

    assert runtime["faiss_version"] == faiss.__version__
    assert runtime["faiss_build"] == ("gpu" if hasattr(faiss, "StandardGpuResources") else "cpu")
    assert runtime["cuda_available"] == torch.cuda.is_available()
    text = CliRunner().invoke(app, ["info", "--store", str(ingested_store)]).output
    assert f"faiss {faiss.__version__} ({runtime['faiss_build']} build, {runtime['faiss_gpus']} GPUs)" in text


def test_exact_knn_is_the_top_k_inner_products_and_pads_short_bases():
    rng = np.random.default_rng(0)
    base, queries = rng.normal(size=(300, 16)).astype(np.float32), rng.normal(size=(7, 16)).astype(np.float32)
    scores, ids = knn(queries, base, 5, use_gpu=False)
    truth = np.argsort(-(queries @ base.T), axis=1)[:, :5]
    assert (ids == truth).all()
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ base.T, truth, 1), rtol=1e-5)
    scores, ids = knn(queries, base[:3], 5, use_gpu=False)
    assert ids.shape == (7, 5) and (ids[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()


def test_shape_buckets_hand_out_full_batches_of_one_shape_and_stay_bounded():
    buckets = ShapeBuckets(batch_size=2, hold=2)  # at most 4 inputs wait
    shapes = [(4,), (6,), (4,), (6,), (5,), (7,), (8,), (9,), (4,)]
    out = []
    for i, shape in enumerate(shapes):
        out += list(buckets.add(str(i), np.zeros(shape)))
        assert buckets.waiting < 4
    out += list(buckets.drain())
    assert [ids for ids, _ in out[:2]] == [["0", "2"], ["1", "3"]]  # alternating lengths still batch in pairs
    assert all(len({x.shape for x in inputs}) == 1 for _, inputs in out)
    assert sorted(i for ids, _ in out for i in ids) == sorted(str(i) for i in range(len(shapes)))


@pytest.fixture(scope="module")
def mixed_lengths(tmp_path_factory) -> Path:
    """A store whose videos alternate between two lengths (16 and 24 frames) in id order."""
    root = tmp_path_factory.mktemp("mixed")
    path = root / "store"
    with open_store(path, create=True) as store:
        for seed, frames in ((5, 16), (6, 24)):
            make_phantom(root / f"c{frames}", patients=3, videos_per_patient=1, seed=seed, frames=frames)
            ingest(root / f"c{frames}", store, progress=False)
    return path


def test_encode_runs_full_batches_of_mixed_lengths_and_matches_one_by_one(mixed_lengths, tmp_path):
    import shutil

    encoder = get_encoder("r3d", random_init=True, device="cpu")
    forward, batch_sizes = encoder._forward, []
    encoder._forward = lambda batch: (batch_sizes.append(len(batch)), forward(batch))[1]
    copy = tmp_path / "s"
    shutil.copytree(mixed_lengths, copy)
    with open_store(copy) as store:
        assert encode_store(store, encoder, batch_size=3, workers=1, progress=False).added == 6
        ids, vectors = store.all_vectors("r3d")
    assert batch_sizes == [3, 3]  # the old loop ran 1-2 videos per forward here
    with open_store(mixed_lengths, read_only=True) as store:
        from embedstore.video.read import read_video

        paths = {v["video_id"]: v["source_path"] for v in store.videos()}
    single = np.concatenate([encoder.embed_prepared([encoder.preparer(read_video(paths[i], mask="on"))]) for i in ids])
    np.testing.assert_allclose(vectors, single, atol=1e-5)


def test_out_of_memory_is_one_line_and_frees_the_cache(monkeypatch):
    encoder = get_encoder("r3d", random_init=True, device="cpu")

    def oom(batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    freed = []
    monkeypatch.setattr(encoder, "_forward", oom)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(True))
    with pytest.raises(OutOfMemory) as info:
        encoder.embed_prepared([np.zeros((3, 2, 112, 112), np.uint8)])
    assert info.value.status == 503 and "\n" not in info.value.message and "--batch-size" in info.value.message
    assert freed == [True]


@pytest.mark.parametrize("resources, gpw, decode, device, expected", [
    ({"CPU": 2}, 1.0, 1.0, "auto", (1, 0.0, "cpu")),
    ({"CPU": 16, "GPU": 4}, 1.0, 1.0, "auto", (4, 1.0, "cuda")),
    ({"CPU": 3, "GPU": 4}, 1.0, 1.0, "auto", (2, 1.0, "cuda")),  # decoding keeps a CPU: 2 actors, not 4
    ({"CPU": 16, "GPU": 4}, 0.5, 1.0, "auto", (8, 0.5, "cuda")),
    ({"CPU": 16, "GPU": 4}, 1.0, 1.0, "cpu", (8, 0.0, "cpu")),
])
def test_ray_actors_fit_the_cluster_and_honour_the_device(resources, gpw, decode, device, expected, monkeypatch):
    monkeypatch.delenv("EMBEDSTORE_DEVICE", raising=False)
    assert plan_actors(resources, gpw, decode, device) == expected


@pytest.mark.parametrize("resources, gpw, device, words", [
    ({"CPU": 1}, 1.0, "auto", "1 CPUs"),
    ({"CPU": 8, "GPU": 1}, 2.0, "auto", "more than the 1 GPUs"),
    ({"CPU": 8}, 1.0, "cuda", "0 GPUs"),
])
def test_ray_plans_that_cannot_run_are_refused_in_one_line(resources, gpw, device, words, monkeypatch):
    monkeypatch.delenv("EMBEDSTORE_DEVICE", raising=False)
    with pytest.raises(BadInput, match=words):
        plan_actors(resources, gpw, 1.0, device)


# -- on a CUDA GPU only (skipped here with the reason; bench/gpu_smoke.py runs them) ---------------------
def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["r3d", "videomae", "echoclip"])
def test_cuda_vectors_match_cpu_vectors(name, phantom_cohort):
    from embedstore.video.read import read_video

    videos = [read_video(p) for p in sorted((phantom_cohort / "Videos").glob("*.avi"))[:2]]
    cpu = get_encoder(name, random_init=True, device="cpu").embed_videos(videos)
    cuda = get_encoder(name, random_init=True, device="cuda").embed_videos(videos)
    assert _cosines(cpu, cuda).min() >= 0.999


@pytest.mark.gpu
def test_cuda_batches_match_single_videos(phantom_cohort):
    from embedstore.video.read import read_video

    encoder = get_encoder("r3d", random_init=True, device="cuda")
    inputs = [encoder.preparer(read_video(p)) for p in sorted((phantom_cohort / "Videos").glob("*.avi"))[:4]]
    batch = encoder.embed_prepared(inputs)
    single = np.concatenate([encoder.embed_prepared([x]) for x in inputs])
    assert _cosines(batch, single).min() >= 0.999


@pytest.mark.gpu
def test_gpu_exact_search_equals_cpu():
    from embedstore.devices import faiss_gpus

    if faiss_gpus() == 0:
        pytest.skip("the faiss build sees no GPU (`make install-gpu` installs faiss-gpu)")
    rng = np.random.default_rng(1)
    base, queries = rng.normal(size=(20_000, 64)).astype(np.float32), rng.normal(size=(50, 64)).astype(np.float32)
    cpu_scores, cpu_ids = knn(queries, base, 10, use_gpu=False)
    gpu_scores, gpu_ids = knn(queries, base, 10, use_gpu=True)
    assert (cpu_ids == gpu_ids).mean() >= 0.999
    np.testing.assert_allclose(cpu_scores, gpu_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_ray_encodes_on_a_gpu_actor_like_the_cpu(mixed_lengths, tmp_path):
    import shutil

    ray = pytest.importorskip("ray")
    stores = {}
    for engine, device in (("local", "cpu"), ("ray", "cuda")):
        stores[engine] = tmp_path / engine
        shutil.copytree(mixed_lengths, stores[engine])
        result = CliRunner().invoke(app, ["encode", "--store", str(stores[engine]), "--encoder", "r3d", "--random-init",
                                          "--engine", engine, "--device", device, "--quiet"])
        assert result.exit_code == 0, result.output
    with open_store(stores["local"], read_only=True) as a, open_store(stores["ray"], read_only=True) as b:
        (ids_a, va), (ids_b, vb) = a.all_vectors("r3d"), b.all_vectors("r3d")
        (args,), = b.catalog.query("SELECT args FROM runs WHERE command = 'encode'")
    assert ids_a == ids_b and _cosines(va, vb).min() >= 0.999
    assert json.loads(args)["device"] == "cuda"
    if ray.is_initialized():
        ray.shutdown()


@pytest.mark.gpu
def test_batch_search_on_the_gpus_equals_the_cpu_index(tmp_path, monkeypatch):
    from embedstore.devices import faiss_gpus
    from embedstore.index import Searcher, build_index
    from embedstore.index import search as search_module
    from tests.test_index import make_store

    if faiss_gpus() == 0:
        pytest.skip("the faiss build sees no GPU (`make install-gpu` installs faiss-gpu)")
    store, _, vectors = make_store(tmp_path / "s", 3000)
    with store:
        build_index(store, "toy", progress=False)
        searcher = Searcher(store, "toy")
        on_gpu = searcher.search_many(vectors=vectors[:100], k=10)
        monkeypatch.setattr(search_module, "faiss_gpus", lambda: 0)
        on_cpu = searcher.search_many(vectors=vectors[:100], k=10)
    assert [[h.id for h in r.hits] for r in on_gpu] == [[h.id for h in r.hits] for r in on_cpu]
