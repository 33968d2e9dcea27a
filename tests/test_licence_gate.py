"""Export's licence gate: trained vectors of an encoder whose licence forbids redistribution (EchoPrime,
PanEcho, EchoCLIP) are refused unless --accept-licence records who accepted what; the card and the
manifest carry it. Random-init vectors hold nothing of the authors' and pass."""
from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from embedstore.cli import app
from embedstore.store import open_store

SHA = "cd" * 32


def store_with(path, encoder: str, sha: str):
    with open_store(path, create=True) as st:
        st.add_videos([{"video_id": f"v{i}", "split": "TRAIN"} for i in range(3)])
        prov = {"encoder": encoder, "dim": 4, "weights": "/srv/model_data/weights/x.pt", "weights_sha256": sha,
                "preprocessing": {}, "package_version": "0.1.0", "modalities": ["video"]}
        st.add_vectors(prov, ["v0", "v1", "v2"], np.eye(3, 4, dtype=np.float32) + 0.1)
    return path


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_no_redistribution_encoder_needs_an_acceptance(tmp_path):
    store = store_with(tmp_path / "s", "echoprime", SHA)
    refused = cli("export", "--store", store, "--encoder", "echoprime", "--out", tmp_path / "b", "--quiet",
                  "--source-data", "phantom")
    assert refused.exit_code == 2
    line = refused.stderr.strip()
    assert "\n" not in line and "may not be redistributed" in line and "--accept-licence" in line
    assert "academic" in line and not (tmp_path / "b").exists()
    ok = cli("export", "--store", store, "--encoder", "echoprime", "--out", tmp_path / "b", "--quiet",
             "--source-data", "phantom", "--accept-licence", "Dr A. Lee: written permission of the EchoPrime authors")
    assert ok.exit_code == 0, ok.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    accepted = manifest["licence"]["accepted"]
    assert accepted["by"] == "Dr A. Lee: written permission of the EchoPrime authors"
    assert "academic" in accepted["terms"] and accepted["at"]
    card = (tmp_path / "b" / "DATA_CARD.md").read_text()
    head = card.split("## What")[0]
    assert "echoprime licence forbids redistribution" in head and "Dr A. Lee" in head
    assert "Cedars-Sinai academic licence" in card


def test_panecho_gated_and_random_init_or_mit_pass(tmp_path):
    gated = store_with(tmp_path / "p", "panecho", SHA)
    assert cli("export", "--store", gated, "--encoder", "panecho", "--out", tmp_path / "pb", "--quiet").exit_code == 2
    rnd = store_with(tmp_path / "r", "panecho", "random-init")
    assert cli("export", "--store", rnd, "--encoder", "panecho", "--out", tmp_path / "rb", "--quiet").exit_code == 0
    mit = store_with(tmp_path / "m", "r3d-v0", SHA)
    assert cli("export", "--store", mit, "--encoder", "r3d-v0", "--out", tmp_path / "mb", "--quiet").exit_code == 0
    assert "accepted" not in json.loads((tmp_path / "mb" / "manifest.json").read_text())["licence"]
