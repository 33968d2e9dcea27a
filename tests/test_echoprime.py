"""EchoPrime: the video encoder (mvit_v2_s, 512-d), its preparation, and the view classifier.

Random-weight checkpoints are written by the tests in the released layouts (bare state dicts under
model_data/weights/, the older Lightning view_classifier.ckpt). The models are large and the CPU is
shared: each model is built and run once per module (mvit_v2_s takes exactly 16x224x224, batch 1).
Hand-worked values: the crop/trim rows and columns, the bicubic a=-0.75 step response, the
normalisation and the zero padding.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from embedstore.encoders import get_encoder, list_encoders
from embedstore.encoders.echoprime import EchoPrimePreparer, build_mvit, crop_and_trim, normalise
from embedstore.encoders.views import VIEWS, ViewClassifier, classifier_state, classify_store
from embedstore.errors import BadInput, WeightsNotFound
from embedstore.video.read import Video
from tests.test_encoders import assert_one_line, assert_unit_rows, offline, video  # noqa: F401 (offline: autouse)


@pytest.fixture(scope="module")
def model_data(tmp_path_factory):
    """An EchoPrime model_data folder: weights/echo_prime_encoder.pt (bare mvit_v2_s + 512 head)."""
    folder = tmp_path_factory.mktemp("echoprime") / "model_data"
    (folder / "weights").mkdir(parents=True)
    torch.manual_seed(3)
    torch.save(build_mvit().state_dict(), folder / "weights" / "echo_prime_encoder.pt")
    return folder


@pytest.fixture(scope="module")
def embedded(model_data):
    """The encoder loaded from model_data and one video embedded (the module's one mvit forward)."""
    enc = get_encoder("echoprime", weights=model_data, device="cpu")
    clip = video(5, frames=40, h=120, w=160)
    return enc, clip, enc.embed_videos([clip])


def test_crop_and_trim_hand_worked():
    # 480x640: (640-480)/2 = 80 off left and right -> 480 square; int(0.1*480) = 48 off each side.
    assert crop_and_trim((480, 640)) == (slice(48, 432), slice(128, 512))
    # 112x112: no crop; int(11.2) = 11 off each side.
    assert crop_and_trim((112, 112)) == (slice(11, 101), slice(11, 101))
    # 101x112: round(5.5) = 6 off each side -> 100 wide (the authors' symmetric cut); int(10.1) = int(10.0) = 10.
    assert crop_and_trim((101, 112)) == (slice(10, 91), slice(16, 96))
    # 100x113: round(6.5) = 6 (halves to even) -> 101 wide; int(10.1) = 10 off the columns, 10 off the rows.
    assert crop_and_trim((100, 113)) == (slice(10, 90), slice(16, 97))


def test_bicubic_is_opencv_inter_cubic_without_antialiasing():
    """560x560 frame, trimmed by 56 per side to 448, halved to 224: each output sample sits midway between two
    source pixels, weights (-0.09375, 0.59375, 0.59375, -0.09375) for a = -0.75. A step 0 -> 200 at source column
    280 (trimmed 224) gives ..., 0, 0 (from -18.75, clamped), 219 (218.75: overshoot), 200, ...; an antialiased
    (PIL-style) resize would spread the step over several columns instead."""
    frames = np.zeros((1, 560, 560, 3), dtype=np.uint8)
    frames[:, :, 280:] = 200
    out = EchoPrimePreparer()(Video(frames, 50.0, "avi"))
    assert out.shape == (3, 1, 224, 224) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0, 100, 109:115], [0, 0, 0, 219, 200, 200])


def test_preparation_keeps_frames_0_2_to_30_then_normalises_and_zero_pads():
    frames = np.stack([np.full((112, 112, 3), i, dtype=np.uint8) for i in range(40)])
    prepared = EchoPrimePreparer()(Video(frames, 50.0, "avi"))
    assert prepared.shape == (3, 16, 224, 224)
    np.testing.assert_array_equal(prepared[0, :, 0, 0], np.arange(0, 32, 2))
    short = EchoPrimePreparer()(Video(frames[:5], 50.0, "avi"))  # frames 0, 2, 4
    assert short.shape == (3, 3, 224, 224)
    value = np.full((1, 3, 3, 2, 2), 0, dtype=np.uint8)
    value[:, 0] = 77  # (77 - 29.110628) / 47.989223 = 0.997923...
    x = normalise(torch.from_numpy(value))
    assert tuple(x.shape) == (1, 3, 16, 2, 2)
    assert x[0, 0, 0, 0, 0].item() == pytest.approx((77 - 29.110628) / 47.989223, abs=1e-6)
    assert x[0, 1, 2, 0, 0].item() == pytest.approx(-28.076836 / 46.456997, abs=1e-6)
    assert torch.count_nonzero(x[:, :, 3:]) == 0  # padding is zero after normalising, not -mean/std


def test_encoder_loads_the_released_layout_and_embeds(embedded, model_data):
    enc, _, vectors = embedded
    assert_unit_rows(vectors, 1, 512)
    saved = torch.load(model_data / "weights" / "echo_prime_encoder.pt")
    for key, value in enc.model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    prov = enc.provenance()
    assert prov["weights"].endswith("weights/echo_prime_encoder.pt") and prov["dim"] == 512
    assert prov["preprocessing"]["mean"] == [29.110628, 28.076836, 29.096405]
    assert "academic" in prov["preprocessing"]["licence"] and "no redistribution" in prov["preprocessing"]["licence"]


@pytest.mark.slow
def test_encoder_is_deterministic(embedded):
    enc, clip, vectors = embedded
    np.testing.assert_allclose(enc.embed_videos([clip]), vectors, atol=1e-6)


def test_found_in_embedstore_weights_model_data_folder(model_data, offline):  # noqa: F811
    import shutil

    shutil.copytree(model_data, offline / "echoprime")
    row = {r["name"]: r for r in list_encoders()}["echoprime"]
    assert row["weights"] == str(offline / "echoprime" / "weights" / "echo_prime_encoder.pt")
    assert row["dim"] == 512 and "academic" in row["licence"] and "no redistribution" in row["licence"]


def test_missing_file_names_it_and_where_it_looked(offline):  # noqa: F811
    with pytest.raises(WeightsNotFound) as err:
        get_encoder("echoprime")
    message = str(err.value)
    assert_one_line(message)
    assert "weights/echo_prime_encoder.pt" in message and str(offline / "echoprime") in message
    with pytest.raises(WeightsNotFound) as err:
        ViewClassifier()
    assert "weights/view_classifier.pt" in str(err.value) and str(offline / "echoprime") in str(err.value)


def test_wrong_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "model_data" / "weights" / "echo_prime_encoder.pt"
    bad.parent.mkdir(parents=True)
    torch.save({"module.head.1.weight": torch.zeros(512, 768)}, bad)
    with pytest.raises(BadInput) as err:
        get_encoder("echoprime", weights=tmp_path / "model_data")
    assert_one_line(str(err.value))
    assert "unexpected module.head.1.weight" in str(err.value) and "mvit_v2_s" in str(err.value)


# --- view classifier -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def view_weights(tmp_path_factory):
    """Both released layouts of one random convnext_base classifier."""
    from torchvision.models import convnext_base

    folder = tmp_path_factory.mktemp("views")
    torch.manual_seed(4)
    net = convnext_base(weights=None)
    net.classifier[-1] = torch.nn.Linear(1024, 11)
    state = net.state_dict()
    (folder / "bare" / "weights").mkdir(parents=True)
    (folder / "lightning").mkdir()
    torch.save(state, folder / "bare" / "weights" / "view_classifier.pt")
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()} | {"loss.weight": torch.ones(11)},
                "epoch": 7}, folder / "lightning" / "view_classifier.ckpt")
    return folder, state


def test_both_view_classifier_layouts_give_the_same_weights(view_weights):
    folder, state = view_weights
    bare = classifier_state(torch.load(folder / "bare" / "weights" / "view_classifier.pt"), folder)
    lightning = classifier_state(torch.load(folder / "lightning" / "view_classifier.ckpt"), folder)
    assert bare.keys() == lightning.keys() == state.keys()
    assert all(torch.equal(bare[k], lightning[k]) for k in state)


def test_views_fill_the_catalog_and_filter(view_weights, ingested_store, tmp_path):
    import shutil

    from embedstore.store import open_store

    folder, state = view_weights
    path = tmp_path / "store"
    shutil.copytree(ingested_store, path)
    with open_store(path) as store:
        store.catalog.con.execute("DELETE FROM videos WHERE video_id NOT IN (SELECT video_id FROM videos ORDER BY 1 LIMIT 3)")
        summary = classify_store(store, model_data=folder / "lightning", device="cpu", progress=False)
        rows = store.catalog.query("SELECT video_id, view, view_confidence FROM videos ORDER BY 1")
        again = classify_store(store, model_data=folder / "lightning", device="cpu", progress=False)
    assert summary.classified == 3 and not summary.failed and sum(summary.counts.values()) == 3
    assert summary.weights["weights"].endswith("view_classifier.ckpt")
    assert all(view in VIEWS and 1 / 11 <= conf <= 1 for _, view, conf in rows)
    assert again.classified == 0  # only videos without a view are classified again
    with open_store(path, read_only=True) as store:
        view = rows[0][1]
        n = store.catalog.query("SELECT count(*) FROM videos WHERE view = ?", [view])[0][0]
        assert n == sum(1 for r in rows if r[1] == view)


def test_pickled_objects_are_not_loaded_and_the_fix_is_named(tmp_path):
    import argparse

    from embedstore.encoders.state import load_torch_file

    path = tmp_path / "view_classifier.ckpt"
    torch.save({"state_dict": {"model.x": torch.zeros(1)}, "hyper_parameters": argparse.Namespace(lr=1)}, path)
    with pytest.raises(BadInput) as err:
        load_torch_file(path, "a view classifier")
    assert_one_line(str(err.value))
    assert "not loaded (they could run code)" in str(err.value) and "weights_only=False)['state_dict']" in str(err.value)
