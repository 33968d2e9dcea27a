"""Vectors' provenance (encoders/provenance.py): conflicts, rebuilding with non-default options, old stores,
and numeric precision (device, autocast dtype, TF32, torch version) per vector set and per run."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from embedstore.cli import app
from embedstore.encode import encode_store
from embedstore.encoders import get_encoder
from embedstore.encoders.provenance import check_compatible, rebuild
from embedstore.errors import Conflict
from embedstore.store import open_store
from embedstore.video.read import Video

from tests.test_encoders import TINY_CLIP, TINY_VIDEOMAE  # the tiny configs the encoder tests write


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("EMBEDSTORE_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("EMBEDSTORE_ECHOCLIP_R_VOCAB", raising=False)


def video(seed: int, frames: int = 8, size: int = 32) -> Video:
    return Video(np.random.default_rng(seed).integers(0, 256, (frames, size, size, 3), dtype=np.uint8), 50.0, "avi")


def as_stored(prov: dict) -> dict:
    """What the catalog gives back: a JSON round trip, `name` for `encoder`."""
    row = json.loads(json.dumps(prov))
    return {**row, "name": row.pop("encoder")}


@pytest.fixture(scope="module")
def mae() -> dict:
    return get_encoder("videomae", random_init=True, pooling="mean", config_overrides=TINY_VIDEOMAE,
                       device="cpu").provenance()


def test_conflicts_name_weights_dimension_and_preparation(mae):
    stored = as_stored(mae)
    with pytest.raises(Conflict, match="weights abc"):
        check_compatible(stored, {**mae, "weights_sha256": "abc"})
    with pytest.raises(Conflict, match=r"dim 99"):
        check_compatible(stored, {**mae, "dim": 99})
    for key, value in [("pooling", "max"), ("frames", 8), ("size", [64, 64])]:
        with pytest.raises(Conflict, match=f"prepares inputs differently.*{key}") as err:
            check_compatible(stored, {**mae, "preprocessing": {**mae["preprocessing"], key: value}})
        assert "\n" not in str(err.value)
    assert check_compatible(stored, mae) == []


def test_wording_and_precision_changes_only_warn(mae):
    stored = as_stored(mae)
    reworded = {**mae, "preprocessing": {**mae["preprocessing"], "resize": "bilinear, said otherwise"}}
    assert check_compatible(stored, reworded) == ["videomae: preparation wording changed since the store was written (resize)"]
    bf16 = {**mae, "preprocessing": {**mae["preprocessing"], "precision": "bf16"}}
    (warning,) = check_compatible(stored, bf16)
    assert "fp32" in warning and "bf16" in warning and "--precision fp32" in warning


def test_rebuild_with_non_default_options(mae):
    v = video(1)
    model = rebuild(as_stored(mae), device="cpu")
    assert model.spec["pooling"] == "mean" and model.options["config_overrides"] == TINY_VIDEOMAE
    original = get_encoder("videomae", random_init=True, pooling="mean", config_overrides=TINY_VIDEOMAE, device="cpu")
    np.testing.assert_allclose(model.embed_videos([v]), original.embed_videos([v]), atol=1e-6)
    native = rebuild(as_stored(get_encoder("r3d-v0", random_init=True, resize=False, device="cpu").provenance()))
    assert native.preparer.size is None and native.options["resize"] is False


def test_rebuild_echoclip_r_vocabulary_by_path_and_sha256(tmp_path):
    vocab = tmp_path / "template_vocab.txt"
    vocab.write_text("LV EJECTION FRACTION IS <#>%. \n", encoding="utf-8")
    enc = get_encoder("echoclip-r", random_init=True, model_cfg=TINY_CLIP, vocab=vocab, device="cpu")
    prov = enc.provenance()
    options = prov["preprocessing"]["options"]
    assert options["vocab"] == str(vocab.resolve()) and len(options["vocab_sha256"]) == 64
    rebuilt = rebuild(as_stored(prov), device="cpu")
    np.testing.assert_array_equal(rebuilt.tokenize(["LV EJECTION FRACTION IS 55%"]), enc.tokenize(["LV EJECTION FRACTION IS 55%"]))
    vocab.write_text("ANOTHER PHRASE. \n", encoding="utf-8")  # same path, other vocabulary
    with pytest.raises(Conflict, match="vocabulary file"):
        rebuild(as_stored(prov), device="cpu")


def test_stores_written_before_options_were_recorded_still_rebuild(mae):
    old = as_stored(mae)
    for key in ("options", "precision", "numerics"):
        old["preprocessing"].pop(key)
    model = rebuild(old, device="cpu", config_overrides=TINY_VIDEOMAE)
    assert model.spec["pooling"] == "mean"  # read back from the spec
    r3d = as_stored(get_encoder("r3d", random_init=True, device="cpu").provenance())
    for key in ("options", "precision", "numerics", "input_scale"):
        r3d["preprocessing"].pop(key)
    r3d["preprocessing"].update(scale="0-1", mean=[0.43216, 0.394666, 0.37645], std=[0.22803, 0.22145, 0.216989])
    assert rebuild(r3d, device="cpu").spec["input_scale"] == "kinetics"  # an old Kinetics-scale r3d set


def test_precision_recorded_default_fp32_for_r3d_v0_and_query_at_store_precision(tmp_path):
    v0 = get_encoder("r3d-v0", random_init=True, device="cpu")
    numerics = v0.provenance()["preprocessing"]["numerics"]
    assert v0.precision == "fp32" and numerics["precision"] == "fp32" and numerics["autocast_dtype"] is None
    assert set(numerics) >= {"device", "tf32", "torch_version"} and numerics["device"] == "cpu"
    fp32 = get_encoder("r3d", random_init=True, device="cpu")
    bf16 = get_encoder("r3d", random_init=True, device="cpu", precision="bf16")
    assert bf16.provenance()["preprocessing"]["numerics"]["autocast_dtype"] == "bfloat16"
    a, b = fp32.embed_videos([video(2, 8, 48)])[0], bf16.embed_videos([video(2, 8, 48)])[0]
    assert 0.99 < float(a @ b) < 1.0  # bf16 ran: close, not equal
    with open_store(tmp_path / "s", create=True) as store:
        assert encode_store(store, bf16, progress=False).warnings == []
        summary = encode_store(store, fp32, progress=False)  # extending a bf16 set at fp32
        (warning,) = summary.warnings
        assert "bf16" in warning and "fp32" in warning
        assert rebuild(store.encoder_info("r3d")).precision == "bf16"  # queries at the store's precision
        args = json.loads(store.catalog.query("SELECT args FROM runs ORDER BY started_at DESC LIMIT 1")[0][0])
        assert args["numerics"]["precision"] == "fp32" and args["numerics"]["torch_version"]


def test_encoders_command_shows_the_published_procedure():
    out = CliRunner().invoke(app, ["encoders"]).stdout
    blocks = {b.split()[0]: b for b in out.split("\n") if b and not b.startswith(" ")}
    assert set(blocks) == {"r3d", "r3d-v0", "videomae", "echoclip", "echoclip-r", "echoprime", "echoprime-text", "panecho",
                           "pixels"}
    assert "looks for: r3d_binary_111723.pt" in out and "r3d_o_sp4" not in out
    assert "precision: fp32" in out and "raw 0-255" in out and "a=-0.75" in out and "truncated" in out
    rows = {r["name"]: r for r in json.loads(CliRunner().invoke(app, ["encoders", "--json"]).stdout)}
    assert rows["r3d-v0"]["precision"] == "fp32" and rows["videomae"]["frames"].startswith("16")
    assert all({"input_scale", "frames", "resize", "precision", "weights_file"} <= set(r) for r in rows.values())


def test_encode_cli_precision_is_recorded_and_checked(tmp_path):
    store = str(tmp_path / "s")
    open_store(store, create=True).close()
    runner = CliRunner()
    out = runner.invoke(app, ["encode", "--store", store, "--encoder", "r3d", "--random-init", "--device", "cpu",
                              "--precision", "bf16", "--json", "--quiet"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["provenance"]["preprocessing"]["precision"] == "bf16"
    bad = runner.invoke(app, ["encode", "--store", store, "--encoder", "r3d", "--random-init", "--precision", "fp8"])
    assert bad.exit_code == 2 and "precision must be one of" in bad.output and "Traceback" not in bad.output
