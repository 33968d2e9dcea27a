"""Encoders: loading from random-weight checkpoints written in each published layout, offline.

Every test runs with EMBEDSTORE_WEIGHTS, HF_HOME and TORCH_HOME pointed at empty temporary folders
(so nothing on this machine is found by accident) and on the CPU. Tolerances: the same input twice
gives identical vectors up to 1e-6; a batch and single calls agree to 1e-4 (different batch shapes
take different float summation orders).
"""
from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from embedstore.encoders import Encoder, get_encoder, list_encoders
from embedstore.encoders.echoclip import EchoCLIP, frame_embeddings, zero_shot_ef
from embedstore.errors import BadInput, NotFound, WeightsNotFound
from embedstore.video.read import Video

TINY_VIDEOMAE = dict(image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=32,
                     num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CLIP_MEAN, CLIP_STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
PROVENANCE_KEYS = {"encoder", "dim", "weights", "weights_sha256", "preprocessing", "package_version", "modalities"}


def video(seed: int, frames: int = 40, h: int = 112, w: int = 112) -> Video:
    rng = np.random.default_rng(seed)
    return Video(rng.integers(0, 256, (frames, h, w, 3), dtype=np.uint8), 50.0, "avi")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_unit_rows(vectors: np.ndarray, n: int, dim: int) -> None:
    assert vectors.shape == (n, dim) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def assert_one_line(message: str) -> None:
    assert message and "\n" not in message


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path) -> Path:
    """Empty weights folder and caches; CPU. Returns the EMBEDSTORE_WEIGHTS folder."""
    root = tmp_path / "weights"
    root.mkdir()
    monkeypatch.setenv("EMBEDSTORE_WEIGHTS", str(root))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("EMBEDSTORE_DEVICE", "cpu")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "EMBEDSTORE_ECHOCLIP_R_VOCAB"):
        monkeypatch.delenv(var, raising=False)
    return root


def install(root: Path, encoder: str, source: Path) -> Path:
    """Copy a checkpoint file or folder to <root>/<encoder>/ as a user would."""
    target = root / encoder
    if source.is_dir():
        shutil.copytree(source, target)
        return target
    target.mkdir(parents=True)
    return Path(shutil.copy(source, target / source.name))


def hf_cache(hf_home: Path, repo: str, folder: Path) -> Path:
    """Place `folder` in the Hugging Face hub cache layout (refs/main -> snapshots/<commit>/)."""
    repo_dir = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo_dir / "snapshots" / commit)
    return repo_dir / "snapshots" / commit


# --- checkpoints in the published layouts ---------------------------------------------------------


@pytest.fixture(scope="module")
def r3d_files(tmp_path_factory) -> dict[str, Path]:
    """torchvision r3d_18 state dict, the released wrapper (+ 400->1 head), and the wrapper under 'state_dict'."""
    from torchvision.models.video import r3d_18

    out = tmp_path_factory.mktemp("r3d")
    torch.manual_seed(0)
    net = r3d_18(weights=None)
    wrapper = torch.nn.Module()
    wrapper.preloaded_model = net
    wrapper.new_layer1 = torch.nn.Linear(400, 1)
    files = {"plain": out / "r3d_18-b3b3357e.pth", "wrapper": out / "r3d_binary_111723.pt", "nested": out / "nested.pt"}
    torch.save(net.state_dict(), files["plain"])
    torch.save(wrapper.state_dict(), files["wrapper"])
    torch.save({"state_dict": wrapper.state_dict(), "epoch": 4}, files["nested"])
    return files


@pytest.fixture(scope="module")
def videomae_dir(tmp_path_factory) -> Path:
    from transformers import VideoMAEConfig, VideoMAEModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("videomae") / "videomae-base"
    VideoMAEModel(VideoMAEConfig(**TINY_VIDEOMAE)).save_pretrained(folder)
    return folder


def _clip_folder(folder: Path, safetensors: bool) -> Path:
    from open_clip import CLIP

    torch.manual_seed(0)
    model = CLIP(**TINY_CLIP)
    folder.mkdir(parents=True)
    config = {"model_cfg": TINY_CLIP, "preprocess_cfg": {"mean": CLIP_MEAN, "std": CLIP_STD}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    if safetensors:
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    else:
        torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def echoclip_dir(tmp_path_factory) -> Path:
    return _clip_folder(tmp_path_factory.mktemp("clip") / "echo-clip", safetensors=False)


@pytest.fixture(scope="module")
def echoclip_r_dir(tmp_path_factory) -> Path:
    return _clip_folder(tmp_path_factory.mktemp("clip") / "echo-clip-r", safetensors=True)


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "template_vocab.txt"
    path.write_text("LV EJECTION FRACTION IS <#>%. \n<#> DILATED LEFT VENTRICLE. \n", encoding="utf-8")
    return path


# --- R3D -------------------------------------------------------------------------------------------


def test_r3d_layouts_give_identical_vectors(r3d_files):
    videos = [video(1, frames=16), video(2, frames=16)]
    # same scale for all three (a torchvision-layout file alone would be fed Kinetics mean/std)
    vectors = {kind: get_encoder("r3d", weights=path, scale="0-255").embed_videos(videos)
               for kind, path in r3d_files.items()}
    assert_unit_rows(vectors["plain"], 2, 400)
    np.testing.assert_allclose(vectors["wrapper"], vectors["plain"], atol=1e-5)
    np.testing.assert_allclose(vectors["nested"], vectors["plain"], atol=1e-5)
    assert not np.allclose(vectors["plain"][0], vectors["plain"][1], atol=1e-3)


def test_r3d_found_in_embedstore_weights_and_torch_hub_cache(r3d_files, offline, tmp_path):
    videos = [video(3, frames=16)]
    expected = get_encoder("r3d", weights=r3d_files["wrapper"]).embed_videos(videos)
    installed = install(offline, "r3d", r3d_files["wrapper"])
    enc = get_encoder("r3d")
    prov = enc.provenance()
    assert prov["weights"] == str(installed) and prov["weights_sha256"] == sha256(installed)
    np.testing.assert_allclose(enc.embed_videos(videos), expected, atol=1e-6)
    # torchvision's Kinetics file in torch hub's checkpoints folder serves when EMBEDSTORE_WEIGHTS has nothing
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    cached = Path(shutil.copy(r3d_files["plain"], hub / "r3d_18-b3b3357e.pth"))
    assert get_encoder("r3d-v0").provenance()["weights"] == str(cached)


def test_r3d_same_video_twice_and_batch_equals_singles(r3d_files):
    enc = get_encoder("r3d", weights=r3d_files["plain"])
    a, b = video(4, frames=16), video(5, frames=16)
    batch = enc.embed_videos([a, b, a])
    np.testing.assert_allclose(batch[0], batch[2], atol=1e-6)
    singles = np.concatenate([enc.embed_videos([a]), enc.embed_videos([b])])
    np.testing.assert_allclose(batch[:2], singles, atol=1e-4)


def test_r3d_presets_prepare_as_documented():
    v = video(6, frames=10)
    paper = get_encoder("r3d", random_init=True)
    assert paper.preparer(v).shape == (3, 3, 112, 112) and paper.preparer(v).dtype == np.uint8  # frames 0, 4, 8
    np.testing.assert_array_equal(paper.preparer(v), v.frames[::4].transpose(3, 0, 1, 2))
    assert paper.spec["mean"] is None and paper.spec["scale"] == "0-255"  # random init: the authors' raw scale
    v0 = get_encoder("r3d-v0", random_init=True)
    np.testing.assert_array_equal(v0.preparer(v), v.frames.transpose(3, 0, 1, 2))  # every frame, raw
    assert v0.spec["mean"] is None and v0.spec["scale"] == "0-255"
    assert v0.preparer(video(7, frames=5, h=64, w=80)).shape == (3, 5, 112, 112)
    native = get_encoder("r3d-v0", random_init=True, resize=False)
    assert native.preparer(video(7, frames=5, h=64, w=80)).shape == (3, 5, 64, 80)
    assert native.provenance()["preprocessing"]["size"] is None


def test_r3d_v0_variable_lengths_batch_equals_singles(r3d_files):
    enc = get_encoder("r3d-v0", weights=r3d_files["wrapper"], batch_size=4)
    videos = [video(8, frames=6), video(9, frames=9), video(10, frames=6)]
    batch = enc.embed_videos(videos)
    assert_unit_rows(batch, 3, 400)
    singles = np.concatenate([enc.embed_videos([v]) for v in videos])
    np.testing.assert_allclose(batch, singles, atol=1e-4)


def test_r3d_bad_checkpoints_one_line_errors(tmp_path, r3d_files):
    wrong_keys = tmp_path / "wrong.pt"
    torch.save({"backbone.weight": torch.zeros(3), "head.bias": torch.zeros(1)}, wrong_keys)
    with pytest.raises(BadInput) as err:
        get_encoder("r3d", weights=wrong_keys)
    assert_one_line(str(err.value))
    assert "preloaded_model" in str(err.value) and "stem" in str(err.value)

    state = torch.load(r3d_files["plain"], weights_only=True)
    state["fc.weight"], state["fc.bias"] = torch.zeros(2, 512), torch.zeros(2)
    wrong_shape = tmp_path / "two_class.pt"
    torch.save(state, wrong_shape)
    with pytest.raises(BadInput, match="wrong shape fc.bias, fc.weight") as err:
        get_encoder("r3d", weights=wrong_shape)
    assert_one_line(str(err.value))

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(BadInput, match="not a loadable checkpoint") as err:
        get_encoder("r3d", weights=garbage)
    assert_one_line(str(err.value))


def test_video_only_encoder_has_no_text_tower():
    with pytest.raises(BadInput, match="has no text tower; use echoclip or echoclip-r"):
        get_encoder("r3d", random_init=True).embed_texts(["LV EJECTION FRACTION IS 55%."])


# --- registry, resolution, provenance ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected_file, fetch",
    [
        ("r3d", "r3d_binary_111723.pt", "embedder/r3d_binary_111723.pt"),
        ("r3d-v0", "r3d_binary_111723.pt", "embedder/r3d_binary_111723.pt"),
        ("videomae", "config.json", "hf download MCG-NJU/videomae-base --local-dir"),
        ("echoclip", "open_clip_config.json", "hf download mkaichristensen/echo-clip --local-dir"),
        ("echoclip-r", "open_clip_pytorch_model.bin", "hf download mkaichristensen/echo-clip-r --local-dir"),
    ],
)
def test_no_weights_offline_says_what_and_how(name, expected_file, fetch, offline):
    with pytest.raises(WeightsNotFound) as err:
        get_encoder(name)
    message = str(err.value)
    assert_one_line(message)
    assert expected_file in message and fetch in message and str(offline / name) in message


def test_explicit_path_that_does_not_exist(tmp_path):
    with pytest.raises(WeightsNotFound, match="does not exist"):
        get_encoder("videomae", weights=tmp_path / "missing")


def test_unknown_encoder_lists_the_known_ones():
    with pytest.raises(NotFound) as err:
        get_encoder("x")
    assert str(err.value) == (
        "unknown encoder 'x'; known: r3d, r3d-v0, videomae, echoclip, echoclip-r, echoprime, echoprime-text, panecho,"
        " pixels; run `embedstore encoders`"
    )


def test_unknown_option_is_refused():
    with pytest.raises(BadInput, match="no option poolng"):
        get_encoder("videomae", random_init=True, poolng="mean", config_overrides=TINY_VIDEOMAE)


@pytest.mark.parametrize(
    "name, options, dim, modalities",
    [
        ("r3d", {}, 400, ["video"]),
        ("videomae", {"config_overrides": TINY_VIDEOMAE}, 32, ["video"]),
        ("echoclip-r", {"model_cfg": TINY_CLIP}, 16, ["text", "video"]),
    ],
)
def test_random_init_is_marked_in_provenance(name, options, dim, modalities):
    enc = get_encoder(name, random_init=True, **options)
    prov = enc.provenance()
    assert set(prov) == PROVENANCE_KEYS
    assert prov["weights"] == "random-init" and prov["weights_sha256"] == "random-init"
    assert (prov["encoder"], prov["dim"], prov["modalities"]) == (name, dim, modalities)
    assert prov["package_version"] == "0.1.0"
    assert json.loads(json.dumps(prov)) == prov
    assert_unit_rows(enc.embed_videos([video(11, frames=12)]), 1, dim)


def test_list_encoders_builds_no_model_and_shows_found_weights(monkeypatch, offline, r3d_files):
    installed = install(offline, "r3d", r3d_files["wrapper"])

    def no_build(self, *args, **kwargs):
        raise AssertionError("list_encoders must not build a model")

    monkeypatch.setattr(Encoder, "__init__", no_build)
    rows = {row["name"]: row for row in list_encoders()}
    assert list(rows) == ["r3d", "r3d-v0", "videomae", "echoclip", "echoclip-r", "echoprime", "echoprime-text", "panecho",
                          "pixels"]
    assert rows["r3d"]["weights"] == str(installed)
    assert rows["videomae"]["weights"] == "not found"
    assert rows["echoclip-r"]["modalities"] == ["text", "video"] and rows["echoclip"]["dim"] == 512
    assert all(row["licence"] and json.dumps(row["spec"]) for row in rows.values())


def test_preparers_are_picklable_and_model_free():
    encoders = [
        get_encoder("r3d", random_init=True),
        get_encoder("videomae", random_init=True, config_overrides=TINY_VIDEOMAE),
        get_encoder("echoclip", random_init=True, model_cfg=TINY_CLIP),
    ]
    v = video(12, frames=8, h=60, w=80)
    for enc in encoders:
        blob = pickle.dumps(enc.preparer)
        assert len(blob) < 2000  # parameters only: no model inside
        np.testing.assert_array_equal(pickle.loads(blob)(v), enc.preparer(v))


# --- VideoMAE ------------------------------------------------------------------------------------


def test_videomae_from_hf_folder(videomae_dir, offline):
    videos = [video(13), video(14)]
    enc = get_encoder("videomae", weights=videomae_dir)
    assert enc.spec["frames"] == 4 and enc.spec["size"] == [32, 32] and enc.preparer(videos[0]).shape == (4, 3, 32, 32)
    vectors = enc.embed_videos(videos + [videos[0]])
    assert_unit_rows(vectors, 3, 32)
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)
    np.testing.assert_allclose(vectors[:2], np.concatenate([enc.embed_videos([v]) for v in videos]), atol=1e-4)

    installed = install(offline, "videomae", videomae_dir)
    via_env = get_encoder("videomae")
    assert via_env.provenance()["weights"] == str(installed / "model.safetensors")
    assert via_env.provenance()["weights_sha256"] == sha256(installed / "model.safetensors")
    np.testing.assert_allclose(via_env.embed_videos(videos), vectors[:2], atol=1e-6)

    mean = get_encoder("videomae", weights=videomae_dir, pooling="mean")
    assert mean.provenance()["preprocessing"]["pooling"] == "mean" and enc.provenance()["preprocessing"]["pooling"] == "max"
    assert not np.allclose(mean.embed_videos(videos), vectors[:2], atol=1e-3)


def test_videomae_from_hub_cache(videomae_dir, tmp_path):
    snapshot = hf_cache(tmp_path / "hf", "MCG-NJU/videomae-base", videomae_dir)
    enc = get_encoder("videomae")
    assert enc.provenance()["weights"] == str(snapshot / "model.safetensors")
    assert_unit_rows(enc.embed_videos([video(15)]), 1, 32)


def test_videomae_partial_checkpoint_is_refused(videomae_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = Path(shutil.copytree(videomae_dir, tmp_path / "partial"))
    state = load_file(str(folder / "model.safetensors"))
    del state[next(k for k in state if k.endswith("attention.attention.query.weight"))]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(BadInput, match="refusing a partly random model") as err:
        get_encoder("videomae", weights=folder)
    assert_one_line(str(err.value))


# --- EchoCLIP / EchoCLIP-R --------------------------------------------------------------------------


def test_echoclip_from_hub_format_folder(echoclip_dir, offline):
    videos = [video(16), video(17, frames=25, h=100, w=140)]
    enc = get_encoder("echoclip", weights=echoclip_dir)
    assert enc.spec["mean"] == CLIP_MEAN and enc.spec["std"] == CLIP_STD and enc.spec["size"] == [32, 32]
    vectors = enc.embed_videos(videos + [videos[0]])
    assert_unit_rows(vectors, 3, 16)
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)
    np.testing.assert_allclose(vectors[:2], np.concatenate([enc.embed_videos([v]) for v in videos]), atol=1e-4)
    # video vector = re-normalised mean of the normalised frame vectors
    frames = enc.embed_frames(enc.preparer(videos[0]))
    mean = frames.mean(axis=0)
    np.testing.assert_allclose(vectors[0], mean / np.linalg.norm(mean), atol=1e-5)

    installed = install(offline, "echoclip", echoclip_dir)
    via_env = get_encoder("echoclip")
    assert via_env.provenance()["weights_sha256"] == sha256(installed / "open_clip_pytorch_model.bin")
    np.testing.assert_allclose(via_env.embed_videos(videos), vectors[:2], atol=1e-6)


def test_echoclip_text_tower(echoclip_dir):
    enc = get_encoder("echoclip", weights=echoclip_dir)
    texts = enc.embed_texts(["SEVERE DILATED LEFT VENTRICLE.", "LV EJECTION FRACTION IS 55%."])
    assert_unit_rows(texts, 2, enc.embed_videos([video(18)]).shape[1])
    assert not np.allclose(texts[0], texts[1], atol=1e-3)


def test_echoclip_from_hub_cache(echoclip_r_dir, tmp_path):
    snapshot = hf_cache(tmp_path / "hf", "mkaichristensen/echo-clip-r", echoclip_r_dir)
    enc = get_encoder("echoclip-r")
    assert enc.provenance()["weights"] == str(snapshot / "open_clip_model.safetensors")
    assert_unit_rows(enc.embed_videos([video(19)]), 1, 16)


def test_echoclip_r_template_tokens_and_vocab_lookup(echoclip_r_dir, vocab, monkeypatch):
    enc = get_encoder("echoclip-r", weights=echoclip_r_dir)
    with pytest.raises(WeightsNotFound) as err:
        enc.embed_texts(["LV EJECTION FRACTION IS 55%."])
    assert_one_line(str(err.value))
    assert "EMBEDSTORE_ECHOCLIP_R_VOCAB" in str(err.value)

    with_option = get_encoder("echoclip-r", weights=echoclip_r_dir, vocab=str(vocab))
    # two phrases -> values start at 7, BOS = 7 + 132 = 139, EOS = 140
    assert with_option.tokenize(["LV ejection fraction is 55%."])[0, :4].tolist() == [139, 5, 7 + 5 + 55, 140]
    texts = with_option.embed_texts(["LV ejection fraction is 55%.", "Severe dilated left ventricle."])
    assert_unit_rows(texts, 2, 16)
    assert not np.allclose(texts[0], texts[1], atol=1e-3)

    monkeypatch.setenv("EMBEDSTORE_ECHOCLIP_R_VOCAB", str(vocab))
    np.testing.assert_allclose(enc.__class__(weights=echoclip_r_dir).embed_texts(["LV ejection fraction is 55%."]),
                               texts[:1], atol=1e-6)


def test_echoclip_checkpoint_that_does_not_fit_its_config(echoclip_dir, tmp_path):
    folder = Path(shutil.copytree(echoclip_dir, tmp_path / "mismatch"))
    state = torch.load(folder / "open_clip_pytorch_model.bin", weights_only=True)
    state["text_projection"] = torch.zeros(32, 8)
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    with pytest.raises(BadInput, match="does not fit the model") as err:
        get_encoder("echoclip", weights=folder)
    assert_one_line(str(err.value))


def test_echoclip_default_random_init_is_convnext_base():
    enc = get_encoder("echoclip", random_init=True)
    assert enc.dim == 512 and enc.spec["size"] == [224, 224] and enc.context_length == 77
    assert type(enc.model.visual).__name__ == "TimmModel"


def test_frame_embeddings_take_the_zero_shot_frames(echoclip_dir):
    enc = get_encoder("echoclip", weights=echoclip_dir)
    assert_unit_rows(frame_embeddings(enc, video(20, frames=50)), 20, 16)  # 0, 2, ..., 38
    assert_unit_rows(frame_embeddings(enc, video(21, frames=9)), 5, 16)  # 0, 2, 4, 6, 8
    with pytest.raises(BadInput, match="needs echoclip"):
        frame_embeddings(get_encoder("r3d", random_init=True), video(22))


def test_zero_shot_ef_runs_on_a_model(echoclip_dir):
    enc = get_encoder("echoclip", weights=echoclip_dir)
    ef = zero_shot_ef(enc, [video(23), video(24, frames=12)])
    assert ef.shape == (2,) and np.all((ef >= 0) & (ef <= 100))


def test_zero_shot_ef_ranking_procedure(echoclip_dir, monkeypatch):
    """Prompts for value v lie at angle v degrees on a circle, frames at 60 degrees: the nearest
    prompts rank first, the top 20% (40 of 202) span 60 +- 10, so the median is 60."""
    enc = get_encoder("echoclip", weights=echoclip_dir)

    def embed_texts(prompts):
        angles = np.radians([float(re.search(r"(\d+)%", p).group(1)) for p in prompts])
        return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)

    def embed_frames(prepared):
        return np.tile(np.array([[np.cos(np.radians(60)), np.sin(np.radians(60))]], np.float32), (len(prepared), 1))

    monkeypatch.setattr(enc, "embed_texts", embed_texts)
    monkeypatch.setattr(enc, "embed_frames", embed_frames)
    assert isinstance(enc, EchoCLIP)
    np.testing.assert_allclose(zero_shot_ef(enc, [video(25, frames=10)]), [60.0], atol=0.5)
