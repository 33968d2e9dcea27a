"""Only the ultrasound image leaves video/: DICOM regions (0018,6011), the fan mask, the phantom's vendor screens."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from scipy import ndimage

from embedstore.datasets.phantom_dicom import LAYOUTS, SCREEN, make_dicom_phantom, screen_fan
from embedstore.errors import BadInput, VideoError
from embedstore.video.read import read_video
from embedstore.video.regions import choose_region, mask_video
from tests.dicom_files import write_dicom


@pytest.fixture(scope="module")
def screens(tmp_path_factory) -> dict:
    """One phantom video on both vendor screens, as DICOM (with a Doppler strip) and as AVI; drawn with
    the reference preset, whose sector is lit to its edge, so the share of the fan a mask keeps is measurable."""
    return make_dicom_phantom(tmp_path_factory.mktemp("screens"), patients=1, videos_per_patient=1,
                              studies_per_patient=1, frames=24, layouts=("sonosite", "wide"), doppler=True, avi=True,
                              reference=True)


def region_item(box: tuple[int, int, int, int], spatial: int = 1, data_type: int = 1) -> Dataset:
    item = Dataset()
    item.RegionSpatialFormat, item.RegionDataType, item.RegionFlags = spatial, data_type, 0
    item.RegionLocationMinX0, item.RegionLocationMinY0, item.RegionLocationMaxX1, item.RegionLocationMaxY1 = box
    return item


def moving_cine(t: int = 6, h: int = 48, w: int = 64) -> np.ndarray:
    """Noise in a centre box (moves), a bright static bar at the top (burned-in text)."""
    rng = np.random.default_rng(1)
    frames = np.zeros((t, h, w, 3), np.uint8)
    frames[:, 12:40, 16:48] = rng.integers(30, 220, (t, 28, 32, 1), dtype=np.uint8)
    frames[:, 2:6, 4:60] = 230
    return frames


def test_phantom_dicom_screens_carry_text_ecg_and_regions_in_the_vendor_layout(screens):
    row = next(f for f in screens["files"] if f["layout"] == "sonosite")
    ds = pydicom.dcmread(row["path"])
    assert (ds.Rows, ds.Columns) == SCREEN and ds.file_meta.TransferSyntaxUID.name == "JPEG Baseline (Process 1)"
    assert ds.BurnedInAnnotation == "YES" and str(ds.PatientName) == row["patient_name"]
    first, doppler = ds.SequenceOfUltrasoundRegions
    assert (first.RegionLocationMinX0, first.RegionLocationMinY0, first.RegionLocationMaxX1,
            first.RegionLocationMaxY1) == LAYOUTS["sonosite"].region_box()
    assert (first.RegionSpatialFormat, first.RegionDataType, doppler.RegionDataType) == (1, 1, 3)
    raw = read_video(row["path"])
    x0, y0, x1, y1 = row["region"]
    outside = np.ones(SCREEN, bool)
    outside[y0:y1 + 1, x0:x1 + 1] = False
    lit = raw.frames.max(axis=(0, 3)) > 100
    assert lit[:40, :140].sum() > 200, "burned-in name and date at the top-left corner"
    assert lit[:, 500:].sum() > 200, "text down the right edge"
    green = (raw.frames[..., 1].astype(int) - raw.frames[..., 0]).max(axis=0) > 100
    assert green[398:441, 144:496].sum() > 100, "an ECG trace under the sector"
    changing = (np.abs(np.diff(raw.frames[..., 1].astype(int), axis=0)) > 40).any(axis=0)
    assert (changing & green)[398:441].sum() > 20, "the ECG sweeps, as on a monitor"
    assert not (lit & ~outside & ~screen_fan("sonosite")).any(), "nothing burned into the region outside the fan"


@pytest.mark.parametrize("layout", ["sonosite", "wide"])
def test_dicom_regions_keep_only_the_2d_region_and_skip_the_doppler_strip(screens, layout):
    row = next(f for f in screens["files"] if f["layout"] == layout)
    raw = read_video(row["path"])
    video = read_video(row["path"], mask="on")
    x0, y0, x1, y1 = row["region"]
    assert video.meta["mask"] == {"setting": "on", "source": "region", "region": {
        "index": 0, "x0": x0, "y0": y0, "x1": x1, "y1": y1, "spatial_format": 1, "data_type": 1}}
    assert np.array_equal(video.frames, raw.frames[:, y0:y1 + 1, x0:x1 + 1])
    off = read_video(row["path"], mask="off")
    assert off.meta["mask"] == {"setting": "off"} and np.array_equal(off.frames, raw.frames)


@pytest.mark.parametrize("layout", ["sonosite", "wide"])
def test_fan_mask_on_avi_screens_removes_text_and_ecg_and_keeps_the_fan(screens, layout):
    row = next(f for f in screens["files"] if f["layout"] == layout)
    raw = read_video(row["avi"])
    video = read_video(row["avi"], mask="on")
    fan = screen_fan(layout)
    assert video.meta["mask"]["source"] == "fan"
    near_fan = ndimage.binary_dilation(fan, iterations=2)
    overlay = (raw.frames.max(axis=(0, 3)) > 40) & ~near_fan  # text, toolbar, ECG, Doppler strip
    assert overlay.sum() > 5000
    assert not (video.frames.max(axis=(0, 3))[overlay] > 0).any(), "burned-in text or the ECG survived the mask"
    signal = (raw.frames.max(axis=(0, 3)) > 0) & fan  # fan pixels lit in some frame
    share = (video.frames.max(axis=(0, 3)) > 0)[signal].mean()
    print(f"{layout}: fan mask keeps {share:.2%} of the fan's lit pixels")
    assert share >= 0.98


def test_fan_mask_keeps_98_percent_of_the_phantom_fan(screens):
    from embedstore.video.prepare import sector_mask

    for layout in ("sonosite", "wide"):
        row = next(f for f in screens["files"] if f["layout"] == layout)
        fan = screen_fan(layout)
        mask = sector_mask(read_video(row["avi"]).frames)
        assert (mask & fan).sum() / fan.sum() >= 0.98
        spill = (mask & ~ndimage.binary_dilation(fan, iterations=8)).sum() / fan.sum()
        print(f"{layout}: keeps {(mask & fan).sum() / fan.sum():.2%} of the fan, spills {spill:.2%} beyond 8 pixels")
        assert spill < 0.01, "the mask spills well beyond the fan"  # JPEG ringing along the edges: 0.56% seen


def test_fan_mask_finds_the_sector_of_dark_studies_beside_a_doppler_strip(tmp_path):
    """Each study's own acquisition: narrow sectors and dark studies whose sector shows little but its
    walls, beside a bright spectral Doppler strip that moves as much. The mask must take the sector
    (apex at the top), keep what is lit in it, and leave the strip, text and ECG out."""
    from embedstore.video.prepare import sector_mask

    info = make_dicom_phantom(tmp_path, patients=2, videos_per_patient=1, studies_per_patient=1, frames=24,
                              layouts=("sonosite", "wide"), doppler=True, avi=True)
    for row in info["files"]:
        frames = read_video(row["avi"]).frames
        fan = screen_fan(row["layout"], row["sector"])
        brightness = frames[:, fan].mean()
        mask = sector_mask(frames)
        lit = (frames.max(axis=(0, 3)) > 24) & fan  # the sector's pixels that show something
        doppler = np.zeros_like(fan)
        x0, y0, x1, y1 = LAYOUTS[row["layout"]].doppler
        doppler[y0:y1 + 1, x0:x1 + 1] = True
        spill = (mask & ~ndimage.binary_dilation(fan, iterations=8)).sum() / fan.sum()
        print(f"{row['name']}: mean grey {brightness:.1f} in the sector, keeps {mask[lit].mean():.2%} of its lit "
              f"pixels and {(mask & fan).sum() / fan.sum():.2%} of its area, spills {spill:.2%}")
        assert brightness < 16, "the phantom's first studies are dark"
        assert not (mask & doppler).any(), "the Doppler strip was taken for the fan"
        assert mask[lit].mean() >= 0.98 and spill < 0.01


@pytest.mark.parametrize("regions,message", [
    ([((0, 0, 64, 47), 1, 1)], "lies outside the 64x48 image"),
    ([((0, 0, 63, 48), 1, 1)], "lies outside"),
    ([((10, 10, 10, 30), 1, 1)], "has zero size"),
    ([((0, 0, 30, 47), 1, 1), ((32, 0, 63, 47), 1, 1)], "2 separate 2D regions"),
    ([((0, 30, 63, 47), 3, 3)], "hold no 2D image"),
])
def test_bad_region_headers_are_refused_with_one_line(tmp_path, regions, message):
    header = {"SequenceOfUltrasoundRegions": [region_item(*r) for r in regions]}
    path = write_dicom(tmp_path / "bad.dcm", moving_cine(), header=header)
    read_video(path, mask="off")  # the file itself is fine
    with pytest.raises(VideoError, match=message) as err:
        read_video(path, mask="on")
    assert "\n" not in err.value.message and str(path) in err.value.message


def test_nested_colour_region_counts_once():
    raw = [{"RegionLocationMinX0": 0, "RegionLocationMinY0": 0, "RegionLocationMaxX1": 60, "RegionLocationMaxY1": 40,
            "RegionSpatialFormat": 1, "RegionDataType": 1},
           {"RegionLocationMinX0": 10, "RegionLocationMinY0": 10, "RegionLocationMaxX1": 30, "RegionLocationMaxY1": 30,
            "RegionSpatialFormat": 1, "RegionDataType": 2}]
    assert choose_region(raw, 48, 64, "x").index == 0
    assert choose_region([], 48, 64, "x") is None


def test_burned_in_yes_without_regions_warns_and_falls_back_to_the_fan(tmp_path):
    path = write_dicom(tmp_path / "noregion.dcm", moving_cine(), header={"BurnedInAnnotation": "YES"})
    video = read_video(path, mask="on")
    assert video.meta["mask"]["source"] == "fan"
    assert len(video.meta["warnings"]) == 1 and "Burned In Annotation is YES" in video.meta["warnings"][0]
    assert video.frames[:, 2:6].max() == 0, "the static bar (burned-in text) is blanked"
    assert video.frames[:, 12:40, 16:48].any()


def test_a_video_where_nothing_moves_is_refused(tmp_path):
    still = np.repeat(moving_cine()[:1], 6, axis=0)
    path = write_dicom(tmp_path / "still.dcm", still)
    with pytest.raises(VideoError, match="nothing moves"):
        read_video(path, mask="on")


def test_mask_setting_is_checked_and_masking_is_done_once(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", moving_cine())
    video = read_video(path, mask="on")
    assert mask_video(video, "on") is video
    with pytest.raises(BadInput, match="already prepared with mask on"):
        mask_video(video, "off")
    with pytest.raises(BadInput, match="'on' or 'off'"):
        read_video(Path(path), mask="yes")
