"""The store's mask reaches every place pixels leave video/, and vectors then follow the heart, not the screen."""
from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from embedstore.datasets.export import export
from embedstore.datasets.ingest import ingest
from embedstore.datasets.phantom_dicom import make_dicom_phantom
from embedstore.encode import encode_store, prepare_one, store_encoding
from embedstore.encoders import get_encoder
from embedstore.encoders.echoclip import EchoCLIPPreparer
from embedstore.encoders.r3d import R3DPreparer
from embedstore.encoders.videomae import VideoMAEPreparer
from embedstore.errors import Conflict
from embedstore.service.app import create_app
from embedstore.store import open_store
from embedstore.video.read import read_video
from embedstore.video.regions import MaskedPreparer
from tests.dicom_files import write_dicom
from tests.servers import serving

PREPARERS = {  # every encoder's preparer, with its published presets
    "r3d": R3DPreparer(4, 112), "r3d-v0 native": R3DPreparer(1, None), "videomae": VideoMAEPreparer(16, 224),
    "echoclip": EchoCLIPPreparer((224, 224)),
}


@pytest.fixture(scope="module")
def black_region(tmp_path_factory):
    """A phantom screen whose image region is black: any non-zero pixel after masking came from outside it."""
    root = tmp_path_factory.mktemp("black")
    info = make_dicom_phantom(root / "src", patients=1, videos_per_patient=1, studies_per_patient=1, frames=16)
    row = info["files"][0]
    screen = read_video(row["path"]).frames.copy()
    x0, y0, x1, y1 = row["region"]
    screen[:, y0:y1 + 1, x0:x1 + 1] = 0
    import pydicom

    header = {"SequenceOfUltrasoundRegions": pydicom.dcmread(row["path"]).SequenceOfUltrasoundRegions,
              "BurnedInAnnotation": "YES"}
    (root / "files").mkdir()
    # uncompressed: JPEG's chroma upsampling lets a text colour bleed 1 pixel (<= 2 levels) across the region edge
    path = write_dicom(root / "files" / "black.dcm", screen, syntax="explicit", photometric="RGB", header=header)
    assert read_video(path).frames.max() > 200, "text outside the region is there"
    return path


def test_no_encoder_input_holds_a_pixel_from_outside_the_region(black_region, tmp_path):
    for name, preparer in PREPARERS.items():
        _, masked = prepare_one(("v", str(black_region)), MaskedPreparer(preparer, "on"))
        _, unmasked = prepare_one(("v", str(black_region)), MaskedPreparer(preparer, "off"))
        assert isinstance(masked, np.ndarray), masked
        assert masked.max() == 0, f"{name}: burned-in pixels reached the prepared input"
        assert unmasked.max() > 100, f"{name}: the control should see the text"


def test_encode_feeds_the_model_masked_frames_and_records_the_setting(black_region, tmp_path):
    with open_store(tmp_path / "store", create=True) as store:
        assert ingest(black_region.parent, store, progress=False).added == 1
        encoder = get_encoder("r3d", random_init=True, scale="kinetics")  # blank frames still give a direction
        seen = []
        embed = encoder.embed_prepared
        encoder.embed_prepared = lambda inputs: (seen.extend(inputs), embed(inputs))[1]
        summary = encode_store(store, encoder, progress=False)
        assert summary.added == 1 and summary.provenance["preprocessing"]["mask"] == "on"
        assert store.encoder_info("r3d")["preprocessing"]["mask"] == "on"
        assert len(seen) == 1 and seen[0].max() == 0
        assert store_encoding(store, encoder)[1].setting == "on"
        with pytest.raises(Conflict, match="holds vectors prepared with mask on"):
            store.set_mask("off")
        manifest = export(store, "r3d", tmp_path / "bundle")
    deid = manifest["deidentification"]
    assert deid["patient_identity_removed"] == "YES" and deid["from_dicom"] == 1
    assert [m["code"] for m in deid["method_codes"]] == ["113100", "113101", "113107"]
    assert json.loads((tmp_path / "bundle" / "manifest.json").read_text())["deidentification"] == deid


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_bundles_carry_croissant_metadata_that_mlcroissant_validates(black_region, tmp_path, fmt):
    mlc = pytest.importorskip("mlcroissant")
    with open_store(tmp_path / "store", create=True) as store:
        ingest(black_region.parent, store, progress=False)
        encode_store(store, get_encoder("r3d", random_init=True, scale="kinetics"), progress=False)
        export(store, "r3d", tmp_path / "bundle", fmt=fmt, progress=False)
        (video,) = store.videos()
    record = tmp_path / "bundle" / "croissant.json"
    dataset = mlc.Dataset(jsonld=record)  # raises on any validation error
    assert not dataset.metadata.issues.errors, dataset.metadata.issues.report()
    text = record.read_text()
    assert "Patient Identity Removed YES" in text and "113101" in text and '"conformsTo": "http://mlcommons.org/croissant/1.1"' in text
    if fmt == "parquet":  # the record really finds the data
        rows = list(dataset.records("videos"))
        assert len(rows) == 1 and rows[0]["videos/video_id"].decode() == video["video_id"]
        assert len(rows[0]["videos/vector"]) == 400


def test_a_vector_set_from_before_masking_stays_unmasked(black_region, tmp_path):
    with open_store(tmp_path / "store", create=True) as store:
        ingest(black_region.parent, store, progress=False)
        encoder = get_encoder("r3d", random_init=True)
        (video,) = store.videos()
        legacy = encoder.provenance()  # recorded by a version without masking: no "mask" in preprocessing
        store.add_vectors(legacy, [video["video_id"]], np.ones((1, 400), np.float32))
        provenance, preparer = store_encoding(store, encoder)
        assert store.mask == "on" and preparer.setting == "off" and provenance["preprocessing"]["mask"] == "off"


def test_thumbnails_and_gifs_the_service_returns_hold_no_pixel_from_outside(black_region, tmp_path):
    store_path = tmp_path / "store"
    with open_store(store_path, create=True) as store:
        ingest(black_region.parent, store, progress=False)
        (video,) = store.videos()
    with serving(create_app(store_path)) as url, httpx.Client(base_url=url, timeout=120) as client:
        png = client.get(f"/videos/{video['video_id']}/thumbnail")
        gif = client.get(f"/videos/{video['video_id']}/thumbnail", params={"animated": True})
    assert png.status_code == 200 and gif.status_code == 200
    still = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"))
    assert still.shape == (256, 256, 3) and still.max() == 0  # the 352-pixel region, not the 480x640 screen
    animation = Image.open(io.BytesIO(gif.content))
    for i in range(animation.n_frames):
        animation.seek(i)
        assert np.asarray(animation.convert("RGB")).max() == 0


def test_no_mask_is_explicit_and_recorded(black_region, tmp_path):
    from typer.testing import CliRunner

    from embedstore.cli import app as cli

    out = CliRunner().invoke(cli, ["ingest", str(black_region.parent), "--store", str(tmp_path / "s"), "--no-mask",
                                   "--json"])
    assert out.exit_code == 0, out.output
    with open_store(tmp_path / "s", read_only=True) as store:
        assert store.mask == "off"
    with open_store(tmp_path / "default", create=True) as store:
        assert store.mask == "on"


def nearest_follows_layout(store, rows_by_name: dict) -> float:
    """Share of videos whose nearest neighbour (cosine, itself excluded) shows the same screen layout."""
    ids, vectors = store.all_vectors("r3d")
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    same_layout = same_heart = 0
    for i, video_id in enumerate(ids):
        me, other = rows_by_name[video_id], rows_by_name[ids[int(np.argmax(sims[i]))]]
        same_layout += me["layout"] == other["layout"]
        same_heart += me["video"] == other["video"]
    return same_layout / len(ids), same_heart / len(ids)


def test_with_masking_nearest_neighbours_follow_the_heart_not_the_screen_layout(tmp_path):
    info = make_dicom_phantom(tmp_path / "src", patients=4, videos_per_patient=1, studies_per_patient=1, frames=24,
                              layouts=("sonosite", "wide"), seed=3)
    rows = {row["name"]: row for row in info["files"]}
    shares = {}
    for setting in ("on", "off"):
        with open_store(tmp_path / setting, create=True) as store:
            summary = ingest(info["dicom_dir"], store, progress=False, mask=setting)
            assert summary.added == 8, summary.skipped
            encode_store(store, get_encoder("r3d", random_init=True), progress=False)
            by_id = {v["video_id"]: rows[v["video_id"]] for v in store.videos()}
            shares[setting] = nearest_follows_layout(store, by_id)
    print(f"nearest neighbour shows the same layout / the same heart: mask on {shares['on'][0]:.0%} / "
          f"{shares['on'][1]:.0%}, mask off {shares['off'][0]:.0%} / {shares['off'][1]:.0%}")
    assert shares["on"][1] == 1.0, "with masking, each video's nearest neighbour is its own heart on the other screen"
    assert shares["off"][0] >= 0.75, "control: without masking the screen layout dominates"
