"""`embedstore train r3d`: the loss goes down, the checkpoint loads as the r3d encoder, resume continues
at the right epoch, and bad labels or splits fail in one line before any model is built.

Kept fast (r3d_18 costs seconds per step on two cores): 16-frame phantom videos at 10 fps (a whole
beat, so EF labels mean what they say; 4 model frames at period 4), 2-frame training clips,
4 TRAIN / 2 VAL / 2 TEST videos, and one CLI training run of 2 epochs shared by the tests.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from embedstore.cli import app
from embedstore.encoders import get_encoder
from embedstore.errors import BadInput, Conflict, WeightsNotFound
from embedstore.store import open_store
from embedstore.training.checkpoint import epoch_files, load
from embedstore.training.config import TrainConfig
from embedstore.training.data import Example, epoch_order
from embedstore.training.loop import train_r3d
from embedstore.video.read import read_video

TRAIN_VIDEOS = 4
RECIPE = ["--label", "ef < 50", "--lr", "1e-3", "--accumulate", "1", "--init", "random", "--clip-length", "2"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """8 patients x 2 videos; per EF class 2 TRAIN, 1 VAL, 1 TEST video, the rest without a split."""
    from embedstore.datasets.ingest import ingest
    from embedstore.datasets.phantom import make_phantom

    root = tmp_path_factory.mktemp("train")
    make_phantom(root / "cohort", patients=8, videos_per_patient=2, seed=1, frames=16, fps=10)
    with open_store(root / "store", create=True) as st:
        ingest(root / "cohort", st, progress=False)
        rows = st.catalog.query("SELECT video_id, ef < 50 FROM videos ORDER BY video_id")
        st.catalog.con.execute("UPDATE videos SET split = NULL")
        plan = []
        for low in (True, False):
            ids = [v for v, is_low in rows if is_low == low]
            plan += [{"video_id": v, "split": s} for v, s in zip(ids, ("TRAIN", "TRAIN", "VAL", "TEST"))]
        st.catalog.update_labels(plan)
    return root / "store"


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory) -> dict:
    """One CLI run: 2 epochs from a seeded random init, lr 1e-3 so a few steps move the loss."""
    out = tmp_path_factory.mktemp("ckpt") / "r3d-ef.pt"
    result = CliRunner().invoke(app, ["train", "r3d", "--store", str(store), *RECIPE, "--epochs", "2",
                                      "--out", str(out), "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    return {"out": out, "metrics": json.loads(result.stdout), "stderr": result.stderr}


def copy_store(store: Path, tmp_path: Path) -> Path:
    shutil.copytree(store, tmp_path / "store")
    return tmp_path / "store"


def assert_one_line(message: str) -> None:
    assert message and "\n" not in message.strip() and "Traceback" not in message


def test_loss_goes_down_and_everything_is_recorded(trained, store):
    metrics = trained["metrics"]
    losses = [h["train_loss"] for h in metrics["history"]]
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert losses[-1] < losses[0], losses
    assert metrics["counts"]["TRAIN"] == {"n": TRAIN_VIDEOS, "positive": 2} and metrics["counts"]["TEST"]["n"] == 2
    assert set(metrics["test"]) >= {"auc", "auprc", "accuracy", "precision", "recall", "specificity", "f1"}
    # the paper's rule: the threshold that maximises VAL accuracy, applied to TEST
    assert metrics["test"]["threshold"] == metrics["val"]["threshold"] and "maximises accuracy on VAL" in metrics["threshold"]
    assert metrics["init"] == {"init": "random", "weights": "random-init", "weights_sha256": "random-init"}
    assert "WARNING: --init random" in trained["stderr"]
    assert json.loads(Path(metrics["metrics_file"]).read_text()) == metrics
    assert set(epoch_files(trained["out"])) == {2, metrics["best_epoch"]}  # the latest and the best are kept
    with open_store(store, read_only=True) as st:
        runs = st.catalog.query_dicts("SELECT status, args FROM runs WHERE command = 'train'")
    assert len(runs) == 1 and runs[0]["status"] == "done"
    assert json.loads(runs[0]["args"])["init"] == "random" and metrics["run_id"]


def test_checkpoint_loads_through_the_r3d_encoder(trained, store):
    saved = torch.load(trained["out"], map_location="cpu", weights_only=True)
    state = saved["state_dict"]
    assert saved["input_scale"] == "0-255"  # trained on raw 0-255 floats, as the authors
    assert {k.split(".")[0] for k in state} == {"preloaded_model", "new_layer1"}
    assert state["new_layer1.weight"].shape == (1, 400)
    with open_store(store, read_only=True) as st:
        video = read_video(st.videos()[0]["source_path"])
    tuned = get_encoder("r3d", weights=trained["out"], device="cpu")
    assert tuned.provenance()["weights_sha256"] == trained["metrics"]["checkpoint_sha256"]
    start = get_encoder("r3d", random_init=True, device="cpu")  # the seed-0 init the run started from
    a, b = tuned.embed_videos([video])[0], start.embed_videos([video])[0]
    assert np.isclose(np.linalg.norm(a), 1, atol=1e-5) and float(a @ b) < 0.999


def test_resume_continues_at_the_next_epoch_with_the_optimizer_state(trained, store, tmp_path):
    for path in epoch_files(trained["out"]).values():  # hard links: checkpoints are replaced, never written into
        (tmp_path / path.name).hardlink_to(path)
    out = tmp_path / trained["out"].name
    cfg = TrainConfig(lr=1e-3, accumulate=1, init="random", clip_length=2, epochs=3, device="cpu")
    with open_store(copy_store(store, tmp_path)) as st:
        with pytest.raises(Conflict, match="--resume"):
            train_r3d(st, cfg, out, progress=False)
        with pytest.raises(BadInput, match="lr 0.001 -> 0.01"):
            train_r3d(st, TrainConfig(**{**cfg.__dict__, "lr": 1e-2}), out, resume=True, progress=False)
        metrics = train_r3d(st, cfg, out, resume=True, progress=False)
    before = trained["metrics"]["history"]
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3] and metrics["history"][:2] == before
    adam = load(out.with_name(f"{out.name}.epoch3"))["optimizer"]["state"]
    assert {int(s["step"]) for s in adam.values()} == {3 * TRAIN_VIDEOS}  # one step per video, never reset


@pytest.mark.parametrize("label, says", [
    ("ef <", "not a single SQL expression"),
    ("no_such_column < 50", "no_such_column"),
    ("ef", "not yes/no"),
    ("ef < 50; DELETE FROM videos", "more than one statement"),
    ("ef < (SELECT count(*) FROM read_csv('/etc/hostname'))", "subqueries are not allowed"),
    (" ", "empty"),
])
def test_bad_label_is_one_line(store, label, says):
    result = CliRunner().invoke(app, ["train", "r3d", "--store", str(store), "--label", label, "--out", "unused.pt"])
    assert result.exit_code == 2 and says in result.stderr
    assert_one_line(result.stderr)
    with open_store(store, read_only=True) as st:
        assert st.catalog.counts()["videos"] == 16


@pytest.mark.parametrize("change, says", [
    ("UPDATE videos SET split = NULL WHERE split = 'VAL'", "no VAL videos"),
    ("UPDATE videos SET split = 'TEST' WHERE split = 'TRAIN'", "no TRAIN videos"),
    ("UPDATE videos SET split = NULL WHERE split = 'TRAIN' AND ef < 50", "false for all 2 TRAIN videos"),
])
def test_missing_split_rows_are_one_line(store, tmp_path, change, says):
    path = copy_store(store, tmp_path)
    with open_store(path) as st:
        st.catalog.con.execute(change)
        with pytest.raises(BadInput, match=says) as err:
            train_r3d(st, TrainConfig(init="random"), tmp_path / "c.pt", progress=False)
    assert_one_line(str(err.value))


def test_missing_kinetics_weights_say_how_to_get_them(store, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("EMBEDSTORE_WEIGHTS", raising=False)
    with open_store(copy_store(store, tmp_path)) as st, pytest.raises(WeightsNotFound) as err:
        train_r3d(st, TrainConfig(), tmp_path / "c.pt", progress=False)
    assert "r3d_18-b3b3357e.pth" in str(err.value) and "--init random" in str(err.value)
    assert_one_line(str(err.value))


@pytest.mark.parametrize("balance", ["oversample", "undersample"])
def test_balance_evens_the_classes(balance):
    examples = [Example(f"v{i}", "", float(i < 3)) for i in range(10)]
    order = epoch_order(examples, balance, np.random.default_rng(0))
    positives = sum(e.label for e in order)
    assert positives == len(order) - positives == (7 if balance == "oversample" else 3)
