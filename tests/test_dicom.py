"""DICOM reading: every transfer syntax x photometric interpretation read back with known colours,
frame timing, refusals of bad files, and the de-identification of what reaches Video.meta."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from embedstore.errors import BadInput, VideoError
from embedstore.video import dicom as dicom_module
from embedstore.video.deid import PHI_KEYWORDS, deidentify, phi_values, salted_hash
from embedstore.video.dicom import read_dicom
from embedstore.video.read import read_video
from tests.dicom_files import DEFAULT_PHI, write_dicom

T, H, W = 4, 32, 64  # JPEG 2000 (openjpeg's default 6 resolutions) needs both sides >= 32
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "grey": (128, 128, 128)}
SQUARE = 8  # the moving white square in the lower half: 8x8, 8 columns further each frame


def cine(t: int = T) -> np.ndarray:
    """Four flat colour blocks (upper half) over a white square moving right (lower half)."""
    frames = np.zeros((t, H, W, 3), dtype=np.uint8)
    for i, rgb in enumerate(COLOURS.values()):
        frames[:, : H // 2, i * 16 : (i + 1) * 16] = rgb
    for k in range(t):
        x = 4 + k * SQUARE
        frames[k, 20 : 20 + SQUARE, x : x + SQUARE] = 255
    return frames


def expected(frames: np.ndarray, photometric: str) -> np.ndarray:
    """What a correct reader shows: monochrome files carry the grey of the colours."""
    if photometric.startswith("MONOCHROME"):
        grey = frames.mean(axis=-1).round().astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return frames


def patch(frames: np.ndarray, i: int) -> np.ndarray:
    """Interior of colour block i (2-pixel margin keeps codec ringing at the edges out)."""
    return frames[:, 2 : H // 2 - 2, i * 16 + 2 : (i + 1) * 16 - 2].astype(np.int16)


LOSSLESS = [
    ("explicit", "RGB"), ("explicit", "YBR_FULL"), ("explicit", "YBR_FULL_422"), ("explicit", "PALETTE COLOR"),
    ("explicit", "MONOCHROME1"), ("explicit", "MONOCHROME2"),
    ("implicit", "RGB"), ("implicit", "YBR_FULL"), ("implicit", "YBR_FULL_422"), ("implicit", "PALETTE COLOR"),
    ("implicit", "MONOCHROME1"), ("implicit", "MONOCHROME2"),
    ("rle", "RGB"), ("rle", "YBR_FULL"), ("rle", "PALETTE COLOR"), ("rle", "MONOCHROME1"), ("rle", "MONOCHROME2"),
    ("jpeg2000lossless", "RGB"), ("jpeg2000lossless", "YBR_RCT"), ("jpeg2000lossless", "YBR_FULL"),
    ("jpeg2000lossless", "PALETTE COLOR"), ("jpeg2000lossless", "MONOCHROME1"), ("jpeg2000lossless", "MONOCHROME2"),
]
LOSSY = [
    ("jpeg", "RGB"), ("jpeg", "YBR_FULL"), ("jpeg", "YBR_FULL_422"), ("jpeg", "MONOCHROME1"), ("jpeg", "MONOCHROME2"),
    ("jpeg2000", "RGB"), ("jpeg2000", "YBR_ICT"), ("jpeg2000", "YBR_FULL"), ("jpeg2000", "MONOCHROME1"),
    ("jpeg2000", "MONOCHROME2"),
]


def check_square_moves(frames: np.ndarray) -> None:
    """The white square is found where it was drawn in every frame (frames in order, none repeated)."""
    lower = frames[:, 16:, :, :].astype(np.int32).sum(axis=-1)
    for k in range(len(frames)):
        col_profile = lower[k].sum(axis=0)
        start = int(np.argmax(np.convolve(col_profile, np.ones(SQUARE), mode="valid")))
        assert abs(start - (4 + k * SQUARE)) <= 1, f"frame {k}: square at column {start}"


@pytest.mark.parametrize("syntax,photometric", LOSSLESS)
def test_lossless_round_trip(tmp_path: Path, syntax: str, photometric: str) -> None:
    frames = cine()
    path = write_dicom(tmp_path / "a.dcm", frames, fps=50.0, syntax=syntax, photometric=photometric)
    video = read_dicom(path)
    assert video.format == "dicom" and video.path == path
    assert video.frames.dtype == np.uint8 and video.frames.shape == (T, H, W, 3)
    assert video.fps == pytest.approx(50.0)
    diff = np.abs(video.frames.astype(np.int16) - expected(frames, photometric))
    # YBR_* stores integer YCbCr: the colour-space round trip is off by at most a couple of levels
    assert diff.max() <= (0 if "YBR" not in photometric or photometric == "YBR_RCT" else 2)
    assert video.meta["photometric"] == photometric
    assert video.meta["n_frames"] == T and (video.meta["rows"], video.meta["columns"]) == (H, W)
    check_square_moves(video.frames)


@pytest.mark.parametrize("syntax,photometric", LOSSY)
def test_lossy_round_trip_keeps_colours(tmp_path: Path, syntax: str, photometric: str) -> None:
    frames = cine()
    path = write_dicom(tmp_path / "a.dcm", frames, fps=50.0, syntax=syntax, photometric=photometric)
    video = read_dicom(path)
    assert video.frames.shape == (T, H, W, 3) and video.fps == pytest.approx(50.0)
    want = expected(frames, photometric)
    for i, name in enumerate(COLOURS):
        got = patch(video.frames, i)
        assert np.abs(got - patch(want, i)).mean() < 10, f"{name} patch off"
        if not photometric.startswith("MONOCHROME") and name != "grey":
            mean = got.reshape(-1, 3).mean(axis=0)
            assert mean[i] > 200 and np.delete(mean, i).max() < 40, f"{name} read back as {mean.round()}"
    check_square_moves(video.frames)


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL_422"])
def test_pixel_data_over_the_deferral_size(tmp_path: Path, photometric: str) -> None:
    """Pixel data over 1 MB is read lazily from the file, after the header checks."""
    frames = np.random.default_rng(0).integers(0, 256, (30, 128, 128, 3), dtype=np.uint8)
    path = write_dicom(tmp_path / "big.dcm", frames, photometric=photometric)
    video = read_dicom(path)
    assert video.frames.shape == frames.shape
    if photometric == "RGB":
        assert np.array_equal(video.frames, frames)


@pytest.mark.parametrize(
    "encoded,labelled", [("YBR_FULL_422", "RGB"), ("YBR_FULL", "RGB"), ("RGB", "YBR_FULL_422")]
)
def test_jpeg_mislabelled_colour_space_still_reads_red(tmp_path: Path, encoded: str, labelled: str) -> None:
    """pydicom follows the JPEG codestream (JFIF vs Adobe RGB markers), not a wrong header."""
    path = write_dicom(tmp_path / "a.dcm", cine(), syntax="jpeg", photometric=encoded)
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = labelled
    ds.save_as(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the contradiction
        video = read_dicom(path)
    red = patch(video.frames, 0).reshape(-1, 3).mean(axis=0)
    assert red[0] > 200 and red[1] < 40 and red[2] < 40


@pytest.mark.parametrize("syntax", ["explicit", "rle", "jpeg2000lossless"])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_12_bit_monochrome_scaled_to_8_bits(tmp_path: Path, syntax: str, photometric: str) -> None:
    frames = cine()
    path = write_dicom(tmp_path / "a.dcm", frames, syntax=syntax, photometric=photometric, bits=12)
    video = read_dicom(path)
    assert video.meta["bits_stored"] == 12
    assert np.abs(video.frames.astype(np.int16) - expected(frames, photometric)).max() <= 1


@pytest.mark.parametrize(
    "timing,fps,want,source",
    [
        ("frame_time", 50.0, 50.0, "FrameTime"),
        ("cine_rate", 25.0, 25.0, "CineRate"),
        ("display_rate", 24.0, 24.0, "RecommendedDisplayFrameRate"),
        ("frame_time_vector", 40.0, 40.0, "FrameTimeVector"),
        ("none", 50.0, 30.0, "default"),
    ],
)
def test_frame_rate_sources(tmp_path: Path, timing: str, fps: float, want: float, source: str) -> None:
    video = read_dicom(write_dicom(tmp_path / "a.dcm", cine(), fps=fps, timing=timing))
    assert video.fps == pytest.approx(want)
    assert video.meta["fps_source"] == source


def test_single_frame_still(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "still.dcm", cine(1), syntax="jpeg", photometric="YBR_FULL_422", timing="none")
    video = read_dicom(path)
    assert video.frames.shape == (1, H, W, 3)
    assert video.meta["sop_class"] == "Ultrasound Image Storage"
    with pytest.raises(VideoError) as err:
        read_video(path, min_frames=2)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "1 frame(s)" in message and "at least 2" in message


def test_read_video_dispatches_dicom_with_and_without_suffix(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", cine(), syntax="rle")
    bare = path.rename(tmp_path / "IM0001")
    video = read_video(bare)
    assert video.format == "dicom" and video.n_frames == T


def test_no_pixel_data(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "sr.dcm", cine())
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(VideoError, match="pixel data") as err:
        read_dicom(path)
    assert str(path) in str(err.value) and "not an image" in str(err.value)


def test_not_a_dicom_file(tmp_path: Path) -> None:
    path = tmp_path / "fake.dcm"
    path.write_bytes(b"this is a text file, not a DICOM file\n" * 10)
    with pytest.raises(VideoError, match="not a DICOM file") as err:
        read_dicom(path)
    assert str(path) in str(err.value)
    with pytest.raises(VideoError, match="not a DICOM file"):
        read_video(path)


def test_truncated_pixel_data(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "cut.dcm", cine(), syntax="explicit")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - H * W * 3 * 2])
    with pytest.raises(VideoError) as err:
        read_dicom(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_absurd_dimensions_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_dicom(tmp_path / "huge.dcm", cine(2))
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 10000
    ds.save_as(path)

    def no_decoding(*_args: object) -> None:
        raise AssertionError("a decoder was requested for an absurd header")

    monkeypatch.setattr(dicom_module, "get_decoder", no_decoding)
    with pytest.raises(VideoError, match="10000x10000 pixels exceed the 4096-pixel limit"):
        read_dicom(path)


def test_more_than_max_frames(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "long.dcm", cine(5))
    with pytest.raises(VideoError, match="5 frames, more than max_frames=3"):
        read_dicom(path, max_frames=3)


def test_missing_decoder_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_dicom(tmp_path / "j2k.dcm", cine(), syntax="jpeg2000lossless")

    class Unavailable:
        is_available = False

    monkeypatch.setattr(dicom_module, "get_decoder", lambda _uid: Unavailable())
    with pytest.raises(VideoError, match="pip install pylibjpeg pylibjpeg-openjpeg"):
        read_dicom(path)


def test_video_transfer_syntax_refused(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "mpeg.dcm", cine(), syntax="jpeg")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG4HP41
    ds.save_as(path)
    with pytest.raises(VideoError, match="MPEG-4 AVC/H.264.*no DICOM image decoder"):
        read_dicom(path)


# -- de-identification ------------------------------------------------------------------------


def test_meta_holds_no_phi(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", cine(), syntax="jpeg", photometric="YBR_FULL_422")
    video = read_dicom(path, salt="store-salt")
    text = repr(video.meta)
    ds = pydicom.dcmread(path)
    leaks = {v for v in phi_values(ds) | set(DEFAULT_PHI.values()) if len(v) >= 3 and v in text}
    assert not leaks
    for fragment in ("1970", "1234567", "DOE", "EchoModel", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
        assert fragment not in text
    assert set(video.meta) == {
        "transfer_syntax", "photometric", "sop_class", "modality", "n_frames", "rows", "columns",
        "bits_stored", "fps_source", "deid", "us_regions", "burned_in_annotation",
    }
    assert set(video.meta["deid"]) == {"patient_id", "study_id", "series_id", "acquired_at", "view"}
    shifted = video.meta["deid"]["acquired_at"]  # PS3.15 modified dates: moved back 1-10 years, never the real one
    assert shifted and not shifted.startswith("2024-01-02") and "2014-01-03" <= shifted[:10] <= "2023-01-02"
    assert shifted.endswith("T09:30:16")


def test_phi_policy_covers_the_written_header(tmp_path: Path) -> None:
    assert set(DEFAULT_PHI) <= PHI_KEYWORDS
    ds = pydicom.dcmread(write_dicom(tmp_path / "a.dcm", cine()))
    assert {"DOE^JANE", "19700101", "MRN-1234567", "SN-42", ds.StudyInstanceUID} <= phi_values(ds)


def test_patient_id_is_a_stable_salted_hash(tmp_path: Path) -> None:
    a = write_dicom(tmp_path / "a.dcm", cine())
    b = write_dicom(tmp_path / "b.dcm", cine(), syntax="rle")  # same patient, another study
    c = write_dicom(tmp_path / "c.dcm", cine(), phi={"PatientID": "MRN-7654321"})
    pa, pb, pc = (read_dicom(p, salt="s1").meta["deid"] for p in (a, b, c))
    assert pa["patient_id"] == pb["patient_id"] == "p_" + salted_hash("MRN-1234567", "s1")
    assert len(pa["patient_id"]) == 18 and pa["patient_id"] != pc["patient_id"]
    assert pa["study_id"].startswith("s_") and pa["study_id"] != pb["study_id"]
    assert read_dicom(a, salt="s2").meta["deid"]["patient_id"] != pa["patient_id"]


def test_salt_from_environment_and_none_without_salt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_dicom(tmp_path / "a.dcm", cine())
    monkeypatch.delenv("EMBEDSTORE_SALT", raising=False)
    deid = read_dicom(path).meta["deid"]
    assert deid["patient_id"] is None and deid["study_id"] is None  # never an unsalted hash
    monkeypatch.setenv("EMBEDSTORE_SALT", "env-salt")
    assert read_dicom(path).meta["deid"]["patient_id"] == read_dicom(path, salt="env-salt").meta["deid"]["patient_id"]
    with pytest.raises(ValueError):
        salted_hash("MRN-1234567", "")


def test_id_map_replaces_the_hash(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", cine())
    assert read_dicom(path, salt="s", id_map={"MRN-1234567": "patient-007"}).meta["deid"]["patient_id"] == "patient-007"
    other = read_dicom(path, salt="s", id_map={"someone-else": "x"}).meta["deid"]["patient_id"]
    assert other == "p_" + salted_hash("MRN-1234567", "s")


def test_allowed_fields_pass_only_when_allowed(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", cine())
    deid = read_dicom(path, salt="s", allow={"acquired_at"}).meta["deid"]
    assert deid["acquired_at"] == "2024-01-02T09:30:16" and "StudyDate" not in deid
    deid = read_dicom(path, salt="s", allow={"StudyDate"}).meta["deid"]
    assert deid["acquired_at"] == "2024-01-02" and deid["StudyDate"] == "20240102"
    deid = read_dicom(path, salt="s", allow={"PatientSex", "InstitutionName"}).meta["deid"]
    assert deid["PatientSex"] == "F" and deid["InstitutionName"] == "St Example Hospital"
    assert "DOE^JANE" not in repr(deid)
    with pytest.raises(BadInput, match="unknown DICOM keyword"):
        read_dicom(path, salt="s", allow={"StudyDat"})
    with pytest.raises(BadInput, match="SQ element"):
        read_dicom(path, salt="s", allow={"ViewCodeSequence"})


def test_acquired_at_falls_back_to_study_date_and_time(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", cine(), phi={"AcquisitionDateTime": None, "ContentDate": None})
    assert read_dicom(path, salt="s", allow={"acquired_at"}).meta["deid"]["acquired_at"] == "2024-01-02T09:30:15"


def test_view_from_view_name_or_code_sequence(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", cine(), header={"ViewName": "A4C"})
    assert read_dicom(path).meta["deid"]["view"] == "A4C"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "399214001", "SCT", "Apical four chamber"
    ds = Dataset()
    ds.ViewCodeSequence = Sequence([code])
    assert deidentify(ds, salt="s")["view"] == "Apical four chamber"
