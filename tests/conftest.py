"""Shared fixtures: small phantom cohorts and stores, made once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a hub: every weight they use is a file they wrote.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The default suite computes on the CPU even where a GPU is visible (its exact comparisons assume fp32
# CPU numerics); the @pytest.mark.gpu tests ask for CUDA by name.
os.environ.setdefault("EMBEDSTORE_DEVICE", "cpu")


def pytest_collection_modifyitems(config, items) -> None:
    """GPU tests skip, with the reason, where torch sees no CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False); bench/gpu_smoke.py runs them")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def phantom_cohort(tmp_path_factory) -> Path:
    """20 patients x 3 videos, 32 frames each: the issue's reference cohort, kept short for speed."""
    from embedstore.datasets.phantom import make_phantom

    out = tmp_path_factory.mktemp("phantom")
    make_phantom(out, patients=20, videos_per_patient=3, seed=1, frames=32)
    return out


@pytest.fixture(scope="session")
def ingested_store(phantom_cohort, tmp_path_factory) -> Path:
    """The phantom cohort ingested with its reports (read-only use: copy it before writing)."""
    from embedstore.datasets.ingest import ingest
    from embedstore.store import open_store

    path = tmp_path_factory.mktemp("stores") / "phantom"
    with open_store(path, create=True) as store:
        ingest(phantom_cohort, store, reports=phantom_cohort / "reports.csv", progress=False)
    return path


@pytest.fixture(scope="session")
def served_store(ingested_store, tmp_path_factory) -> Path:
    """The phantom store cut to 3 patients (9 videos), encoded with random-init r3d, indexed, with a
    PCA view: what the service and browser tests serve (read-only use)."""
    import shutil

    from embedstore.analysis.views import compute_view
    from embedstore.encode import encode_store
    from embedstore.encoders import get_encoder
    from embedstore.index.build import build_index
    from embedstore.store import open_store

    path = tmp_path_factory.mktemp("served") / "store"
    shutil.copytree(ingested_store, path)
    with open_store(path) as store:
        store.catalog.con.execute("DELETE FROM videos WHERE patient_id NOT IN "
                                  "(SELECT DISTINCT patient_id FROM videos ORDER BY 1 LIMIT 3)")
        encode_store(store, get_encoder("r3d", random_init=True, device="cpu"), progress=False)
    with open_store(path, read_only=True) as store:
        build_index(store, "r3d", progress=False)
        compute_view(store, "r3d", "pca")
    return path
