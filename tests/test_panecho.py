"""PanEcho: the released {'weights': ...} dict loaded non-strictly (time encoding recomputed, task heads
left out), the 4-clip preparation, and the backbone on tiny frames (ConvNeXt accepts any size >= 32)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from embedstore.encoders import get_encoder
from embedstore.encoders.panecho import PanEchoPreparer, build_backbone, clip_starts
from embedstore.errors import BadInput, WeightsNotFound
from embedstore.video.read import Video
from tests.test_encoders import assert_one_line, assert_unit_rows, offline  # noqa: F401 (offline: autouse)


@pytest.fixture(scope="module")
def panecho_file(tmp_path_factory):
    """panecho.pt as released: {'weights': backbone state dict + a stored time encoding + task heads}."""
    torch.manual_seed(6)
    state = build_backbone().state_dict()
    state["encoder.time_encoder.pe"] = torch.full_like(state["encoder.time_encoder.pe"], 9.0)  # must be dropped
    state["EF_head.1.weight"], state["EF_head.1.bias"] = torch.zeros(1, 768), torch.zeros(1)
    state["AVStenosis_head.1.weight"] = torch.zeros(3, 768)
    path = tmp_path_factory.mktemp("panecho") / "panecho.pt"
    torch.save({"weights": state}, path)
    return path, state


@pytest.fixture(scope="module")
def encoder(panecho_file):
    return get_encoder("panecho", weights=panecho_file[0], device="cpu")


def test_loads_backbone_drops_time_encoding_and_heads(encoder, panecho_file):
    _, saved = panecho_file
    own = encoder.model.state_dict()
    assert not any("_head" in k for k in own)
    for key, value in own.items():
        if key != "encoder.time_encoder.pe":
            assert torch.equal(value, saved[key]), key
    pe = own["encoder.time_encoder.pe"]
    assert tuple(pe.shape) == (1, 16, 768)
    # sin on even, cos on odd features: pe[t, 2i] = sin(t / 10000^(2i/768))
    assert pe[0, 1, 0].item() == pytest.approx(math.sin(1.0))
    assert pe[0, 1, 1].item() == pytest.approx(math.cos(1.0))
    assert pe[0, 3, 2].item() == pytest.approx(math.sin(3 / 10000 ** (2 / 768)), abs=1e-6)
    assert pe[0, 0, 767].item() == pytest.approx(1.0)
    assert "CC BY-NC-SA 4.0" in encoder.provenance()["preprocessing"]["licence"]


def test_clip_starts_and_preparation():
    assert clip_starts(100) == [0, 28, 56, 84]
    assert clip_starts(20) == [0, 1, 2, 4]  # linspace(0, 4, 4) = 0, 1.33, 2.67, 4, truncated
    assert clip_starts(16) == [0, 0, 0, 0]
    frames = np.zeros((10, 112, 150, 3), dtype=np.uint8)
    frames[..., 0] = 255  # red in RGB
    frames[:, :, :, 1] = np.arange(10)[:, None, None]
    out = PanEchoPreparer()(Video(frames, 50.0, "avi"))
    assert out.shape == (4, 3, 16, 224, 224) and out.dtype == np.uint8
    assert (out[:, 2] == 255).all() and (out[:, 0] == 0).all()  # BGR: red is the last channel
    np.testing.assert_array_equal(out[0, 1, :, 100, 100], list(range(10)) + [9] * 6)  # short video: last frame repeated


def test_backbone_embeds_and_averages_clips(encoder):
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (2, 4, 3, 16, 32, 32), dtype=np.uint8)
    vectors = encoder.embed_prepared([clips[0], clips[1]])
    assert_unit_rows(vectors, 2, 768)
    np.testing.assert_allclose(encoder.embed_prepared([clips[0]]), vectors[:1], atol=1e-5)
    # the same clip four times is that clip's vector: averaging is over clips
    same = np.repeat(clips[0][:1], 4, axis=0)
    one = encoder.embed_prepared([same])
    x = (torch.from_numpy(same[:1]).float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1)
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(encoder.model(x), dim=-1).numpy()
    np.testing.assert_allclose(one, ref, atol=1e-5)


def test_missing_and_wrong_files(offline, tmp_path):  # noqa: F811
    with pytest.raises(WeightsNotFound) as err:
        get_encoder("panecho")
    assert_one_line(str(err.value))
    assert "panecho.pt" in str(err.value) and str(offline / "panecho") in str(err.value)
    bare = tmp_path / "panecho.pt"
    torch.save({"encoder.transformer.layers.0.linear1.weight": torch.zeros(768, 768)}, bare)
    with pytest.raises(BadInput, match="has no 'weights' dict"):
        get_encoder("panecho", weights=bare)


def test_no_download_at_build(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("panecho must not download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    build_backbone()
